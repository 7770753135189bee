"""``evolkit eval`` / ``evolkit contamination`` and the WizardMath scoring protocol.

* The gold solutions score 100% on all 1319 GSM8k and 5000 MATH test problems with evolkit's checker; under the
  WizardMath protocol exactly two cannot, for reasons the protocol has (listed in ``KNOWN_WM_FAILURES``); a
  gold-shuffled set scores near 0 under both.
* The two checkers differ exactly where expected (thousands commas, rounding of decimals and fractions, fractions vs
  decimals, markers).
* The embedded SmolLM2 model answers 20 GSM8k problems end to end through the transformers backend and through a real
  OpenAI-compatible server (llama.cpp, the session fixture ``llama_server``).
* Resume after SIGKILL redoes no finished sample; a resumed run equals an uninterrupted one.
* ``--checker wizardmath`` runs the paper's protocol exactly (prompt, stop strings, greedy, max tokens) and the report
  names the protocol that ran.

The benchmarks are read from the shared data folder (``EVOLKIT_DATA``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from evolkit import wizardmath_checker as wm
from evolkit.answers import AnswerChecker
from evolkit.contamination import contamination_report
from evolkit.errors import EvolkitError
from tests.doubles.deterministic import DeterministicBackend
from evolkit.eval import (
    EvalSettings,
    load_benchmark,
    pass_at_k,
    prompt_style,
    run_eval,
    score_completions,
)
from tests.eval_reference import ReferenceBackend, reference_completion

REPO = Path(__file__).resolve().parents[1]

#: Gold solutions that the WizardMath protocol cannot score as correct, and why (all others score 100%).
KNOWN_WM_FAILURES = {
    # "#### 1,450,000": the protocol's number pattern allows one separator, so it reads "1,450" -> 1450.
    "gsm8k": {"gsm8k-test-00611": "two thousands commas: read as 1,450"},
    # The gold box is "\frac{7}{5} + \frac{1}{5} i." (a period inside the box); the protocol drops the answer's final
    # period before comparing strings, so the answer can never equal the gold.
    "math": {"math-test/intermediate_algebra/1289": "the gold answer ends with a period"},
}


@pytest.fixture(scope="module")
def checker():
    with AnswerChecker() as ch:
        yield ch


# ----------------------------------------------------------------------------------------------------------------
# Gold self-scoring
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bench,kind,count", [("gsm8k", "gsm8k", 1319), ("math", "math", 5000)])
def test_gold_solutions_score_100(bench, kind, count, checker):
    items = load_benchmark(bench)
    assert len(items) == count
    # 1. The reference solutions as written (#### N / \boxed{X}): evolkit's checker.
    raw = score_completions(items, [[it.reference] for it in items], kind, checker)
    bad = [(it.id, s[0]["extracted"], it.gold, s[0]["reason"]) for it, s in zip(items, raw) if not s[0]["correct"]]
    assert bad == []
    # 2. The same in WizardMath's answer format ("... The answer is: X"): both checkers.
    wmf = score_completions(items, [[reference_completion(it, kind)] for it in items], kind, checker)
    assert [it.id for it, s in zip(items, wmf) if not s[0]["correct"]] == []
    wm_bad = {it.id: (s[0]["wm_extracted"], it.gold_wm) for it, s in zip(items, wmf) if not s[0]["wm_correct"]}
    assert set(wm_bad) == set(KNOWN_WM_FAILURES[bench]), wm_bad


def test_known_protocol_failures_are_what_we_say():
    g = {it.id: it for it in load_benchmark("gsm8k")}["gsm8k-test-00611"]
    assert g.reference.rstrip().endswith("#### 1,450,000") and g.gold == "1450000"
    assert wm.gsm8k_extract(reference_completion(g, "gsm8k")) == 1450
    m = {it.id: it for it in load_benchmark("math")}["math-test/intermediate_algebra/1289"]
    assert m.gold_wm.endswith("i.") and wm.math_extract(reference_completion(m, "math")) == m.gold_wm[:-1]


@pytest.mark.parametrize("bench,kind", [("gsm8k", "gsm8k"), ("math", "math")])
def test_shuffled_gold_scores_near_zero(bench, kind, checker):
    items = load_benchmark(bench)
    order = list(range(len(items)))
    random.Random(0).shuffle(order)
    other = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}  # a derangement
    golds = [items[other[i]].gold for i in range(len(items))]
    golds_wm = [items[other[i]].gold_wm for i in range(len(items))]
    sc = score_completions(items, [[reference_completion(it, kind)] for it in items], kind, checker, golds, golds_wm)
    ev = sum(s[0]["correct"] for s in sc) / len(items)
    wmr = sum(s[0]["wm_correct"] for s in sc) / len(items)
    # Only coincidences remain (two problems with the same answer): measured 0.8% (GSM8k) and 0.7% (MATH).
    assert ev < 0.02 and wmr < 0.02, (ev, wmr)


def test_reference_solutions_end_to_end_math500(tmp_path, checker):
    be = ReferenceBackend(load_benchmark("math500"), "math")
    summary = run_eval(EvalSettings(model="reference", bench="math500", backend="openai"), tmp_path / "ref",
                       checker="both", show_progress=False, answer_checker=checker, backend=be)
    assert summary["problems"] == 500
    for name in ("evolkit", "wizardmath"):
        assert summary["scores"][name]["pass@1"] == 1.0
    assert set(summary["by_level"]) == {"1", "2", "3", "4", "5"}
    assert sum(d["problems"] for d in summary["by_subject"].values()) == 500
    assert (tmp_path / "ref" / "results.png").stat().st_size > 1000


# ----------------------------------------------------------------------------------------------------------------
# The two checkers on crafted cases
# ----------------------------------------------------------------------------------------------------------------

# (bench kind, completion, gold, evolkit says correct, WizardMath protocol says correct)
CRAFTED = [
    ("gsm8k", "The answer is: 1,000", "1000", True, True),
    ("gsm8k", "The answer is: 1,234,567", "1234567", True, False),  # one separator only: reads 1,234
    ("gsm8k", "The answer is: $1,234,567.", "1234567", True, False),
    ("gsm8k", "The answer is: 2.5", "2", False, True),  # rounded (half to even) to an integer
    ("gsm8k", "The answer is: 3.5", "4", False, True),
    ("gsm8k", "The answer is: 7/2", "4", False, True),  # a fraction is divided out, then rounded
    ("gsm8k", "The answer is: 7.0", "7", True, True),
    ("gsm8k", "The answer is: -3", "-3", True, True),
    ("gsm8k", "So she makes $18.\n#### 18", "18", True, False),  # no "The answer is: " marker
    ("gsm8k", "The answer is 18.", "18", True, False),  # marker without the colon
    ("math", "The answer is: 0.5", "\\frac{1}{2}", True, True),  # exactly "0.5" is special-cased
    ("math", "The answer is: 0.25", "\\frac{1}{4}", True, False),  # other decimals vs fractions: string mismatch
    ("math", "The answer is: 1/4", "\\frac{1}{4}", True, True),
    ("math", "The answer is: \\dfrac14", "\\frac{1}{4}", True, True),
    ("math", "The answer is: 1,000", "1000", True, False),  # commas are not removed for MATH
    ("math", "The answer is: x = 3", "3", True, True),
    ("math", "The answer is: 5\\text{ cm}", "5", True, True),  # unit after "\text{ " (with the space) dropped
    ("math", "The answer is: 90^\\circ", "90", True, True),
    ("math", "Thus the answer is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}", True, False),  # a box alone is not read
    ("math", "The answer is: 2, 3", "3, 2", True, False),  # order matters to a string comparison
]


def test_checkers_differ_exactly_where_expected(checker):
    from evolkit.eval import EvalItem

    items, comps = [], []
    for i, (kind, text, gold, _, _) in enumerate(CRAFTED):
        gold_wm = str(wm.gsm8k_gold("#### " + gold)) if kind == "gsm8k" else gold
        items.append((kind, EvalItem(f"c{i}", "q", gold, gold_wm, "")))
        comps.append(text)
    for i, (kind, item) in enumerate(items):
        s = score_completions([item], [[comps[i]]], kind, checker)[0][0]
        _, text, gold, want_ev, want_wm = CRAFTED[i]
        assert (s["correct"], s["wm_correct"]) == (want_ev, want_wm), (text, gold, s)


def test_wizardmath_protocol_units():
    assert wm.gsm8k_extract("x. The answer is: 5. The answer is: 12 apples") == 12  # the last marker
    assert wm.gsm8k_extract("The answer is: 1.5e3") == 2  # "1.5" then rounded
    assert wm.gsm8k_extract("The answer is: none") is None
    assert wm.gsm8k_extract("The answer is: 5/0") == 5  # zero denominator: the numerator
    assert wm.math_extract("The answer is: \\frac{1}{2}.\nMore text") == "\\frac{1}{2}"
    assert wm.math_extract("no marker \\boxed{3}") is None
    assert wm.strip_string("\\left( 1, \\dfrac{1}{2} \\right)") == "(1,\\frac{1}{2})"
    assert wm.strip_string("\\sqrt3") == "\\sqrt{3}"
    assert wm.strip_string(".5") == "\\frac{1}{2}"
    assert wm.strip_string("k = 7") == "7" and wm.strip_string("abc = 7") == "abc=7"
    assert wm.strip_string("10\\%") == "10"  # util.py drops "\\%"
    assert wm.math_gold("so $\\boxed{\\frac{a}{b}}$ and \\fbox{2}") == "\\frac{a}{b}"
    assert wm.math_gold("only \\fbox{2}") is None  # remove_boxed only unboxes "\\boxed{...}"
    # Where util.py's normalisation raises, the protocol compares the raw strings.
    assert wm.is_equiv("x/2", "x/2") and not wm.is_equiv("x/2", "x / 2")
    assert not wm.is_equiv("3\\sqrt", "3 \\sqrt") and not wm.is_equiv("5\\text{ m}\\text{ s}", "5")
    assert wm.is_equiv("5\\text{ m}", "5") and wm.is_equiv("\\frac12", "1/2")
    assert wm.score_gsm8k("The answer is: 18", "Janet ... #### 18").correct


def test_pass_at_k():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------------------------
# Prompt styles
# ----------------------------------------------------------------------------------------------------------------


def test_prompt_styles():
    from evolkit import prompts

    st = prompt_style("wizardmath")
    p = st.render("What is {x} + 1?")  # braces survive (no str.format)
    assert st.raw and p.endswith("### Instruction:\nWhat is {x} + 1?\n\n### Response: Let's think step by step.")
    assert p.startswith("Below is an instruction that describes a task.")
    spec = prompts.load_json("eval_gsm8k_cot_8shot")
    st = prompt_style("gsm8k-8shot")
    assert st.render("Q?") == spec["rendered_prefix"] + "\n\nQ: Q?\nA:" and st.stop == ("Q:", "</s>", "<|im_end|>")
    st = prompt_style("minerva")
    p = st.render("Find $x$.")
    assert p.startswith("Problem:\nFind the domain of the expression")
    assert p.endswith("\n\nProblem:\nFind $x$.\n\nSolution:")
    assert p.count("Final Answer: The final answer is") == 4 and st.stop == ("Problem:",)
    st = prompt_style("chat")
    assert not st.raw and "\\boxed{}" in st.render("Q")
    assert prompt_style("wizardmath-default").render("Q").endswith("### Response:")


def test_prompt_file_and_errors(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("Solve: {question}\nAnswer:")
    st = prompt_style(str(f))
    assert st.raw and st.render("1+1") == "Solve: 1+1\nAnswer:"
    assert not prompt_style(str(f), chat=True).raw
    (tmp_path / "bad.txt").write_text("no slot")
    with pytest.raises(EvolkitError):
        prompt_style(str(tmp_path / "bad.txt"))
    with pytest.raises(EvolkitError):
        prompt_style("no-such-style")


# The WizardMath repo's inference scripts (WizardMath/inference/gsm8k_inference.py and MATH_inference.py).
PAPER_PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                "request.\n\n### Instruction:\n{instruction}\n\n### Response: Let's think step by step.")
PAPER_STOP = ["Instruction:", "Instruction", "Response:", "Response"]


@pytest.mark.parametrize("bench,kind,max_tokens", [("gsm8k", "gsm8k", 1024), ("math500", "math", 2048)])
def test_checker_wizardmath_runs_the_papers_protocol_exactly(tmp_path, checker, bench, kind, max_tokens):
    items = load_benchmark(bench)[:6]
    be = ReferenceBackend(items, kind)
    s = EvalSettings(model="m", bench=bench, backend="openai", limit=6)
    summary = run_eval(s, tmp_path / "wm", checker="wizardmath", backend=be, show_progress=False,
                       answer_checker=checker, plot=False)
    assert len(be.requests) == 6
    for r, it in zip(be.requests, items):
        assert r.raw and r.messages[0]["content"] == PAPER_PROMPT.format(instruction=it.question)
        assert list(r.sampling.stop) == PAPER_STOP
        assert r.sampling.temperature == 0 and r.sampling.top_p == 1 and r.sampling.n == 1
        assert r.sampling.max_tokens == max_tokens
    p = summary["protocol"]
    assert p["name"] == "wizardmath" and p["matches_paper"] and p["departures"] == []
    assert p["stop"] == PAPER_STOP and p["checker"] == "wizardmath" and p["greedy"] and p["max_tokens"] == max_tokens
    assert p["prompt_template"] == "wizardmath" and p["paper_source"]["repo"] == "nlpxucan/WizardLM"
    assert json.loads((tmp_path / "wm" / "summary.json").read_text())["protocol"] == p
    md = (tmp_path / "wm" / "results.md").read_text()
    assert ("Protocol: **wizardmath** (the WizardMath paper's protocol): prompt template `wizardmath` (raw text), "
            f"stop strings `Instruction:`, `Instruction`, `Response:`, `Response`, checker `wizardmath`, max "
            f"{max_tokens} new tokens, greedy.") in md
    assert "departs" not in md
    assert summary["scores"]["wizardmath"]["pass@1"] == 1.0


def test_default_protocol_names_where_it_departs_from_the_paper(tmp_path, checker):
    items = load_benchmark("gsm8k")[:3]
    be = ReferenceBackend(items, "gsm8k")
    summary = run_eval(EvalSettings(model="m", bench="gsm8k", backend="openai", limit=3, max_tokens=64),
                       tmp_path / "ev", backend=be, show_progress=False, answer_checker=checker, plot=False)
    assert list(be.requests[0].sampling.stop) == ["### Instruction", "### Response",
                                                   "\n\nBelow is an instruction that describes a task"]
    p = summary["protocol"]
    assert p["name"] == "custom" and not p["matches_paper"]
    assert len(p["departures"]) == 3
    assert p["departures"][0].startswith("stop strings ['### Instruction'") and "at most 64" in p["departures"][1]
    md = (tmp_path / "ev" / "results.md").read_text()
    assert "Where this departs from the paper's protocol:" in md and "- scored by evolkit's checker" in md
    both = run_eval(EvalSettings(model="m", bench="gsm8k", backend="openai", limit=3), tmp_path / "both",
                    checker="both", backend=ReferenceBackend(items, "gsm8k"), show_progress=False,
                    answer_checker=checker, plot=False)
    assert both["protocol"]["name"] == "wizardmath" and both["settings"]["stop"] == PAPER_STOP
    default = EvalSettings(model="m", bench="gsm8k").resolved()
    assert default.stop == ["### Instruction", "### Response", "\n\nBelow is an instruction that describes a task"]
    from evolkit.eval import protocol_info

    assert protocol_info(default, "evolkit")["name"] == "evolkit"
    # Changing the checker of a finished run changes the stop strings: resuming it refuses, naming them.
    with pytest.raises(EvolkitError, match="stop"):
        run_eval(EvalSettings(model="m", bench="gsm8k", backend="openai", limit=3, max_tokens=64), tmp_path / "ev",
                 resume=True, checker="wizardmath", backend=be, show_progress=False, answer_checker=checker)


# ----------------------------------------------------------------------------------------------------------------
# Runs with the deterministic fake backend (tests/doubles): files, n > 1, resume rules
# ----------------------------------------------------------------------------------------------------------------


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_deterministic_run_with_samples(tmp_path, checker):
    s = EvalSettings(model="det", bench="math", backend="custom", sample=40, n=4)
    summary = run_eval(s, tmp_path / "e", checker="both", show_progress=False, answer_checker=checker,
                       backend=DeterministicBackend("det", accuracy=0.5))
    out = tmp_path / "e"
    assert summary["settings"]["temperature"] == 0.7 and summary["settings"]["max_tokens"] == 2048
    assert summary["problems"] == 40 and summary["samples"] == 160
    for name in ("evolkit", "wizardmath"):
        sc = summary["scores"][name]
        assert set(sc["pass@k"]) == {"1", "2", "4"} and set(sc["maj@k"]) == {"1", "2", "4"}
        assert sc["pass@k"]["1"] == pytest.approx(sc["pass@1"])
        assert sc["pass@k"]["1"] <= sc["pass@k"]["2"] <= sc["pass@k"]["4"]
    assert sum(d["problems"] for d in summary["by_level"].values()) == 40
    rows = _rows(out)
    assert len(rows) == 160 and {r["sample"] for r in rows} == {0, 1, 2, 3}
    for key in ("prompt", "completion", "extracted", "gold", "verdict", "wm_extracted", "wm_gold", "wm_correct"):
        assert key in rows[0]
    assert all(r["prompt"].endswith("Let's think step by step.") for r in rows if r["sample"] == 0)
    assert all(r["prompt"] is None for r in rows if r["sample"] > 0)  # the same prompt is stored once per problem
    md = (out / "results.md").read_text()
    assert "By level" in md and "By subject" in md and "maj@4" in md and "WizardMath-70B-V1.0 | 22.7" in md
    assert json.loads((out / "summary.json").read_text())["files"]["plot"] == "results.png"
    assert (out / "eval" / "samples.parquet").exists()


def test_resume_rules(tmp_path, checker):
    s = EvalSettings(model="det", bench="gsm8k", backend="custom", limit=5)
    run_eval(s, tmp_path / "e", show_progress=False, answer_checker=checker, plot=False,
             backend=DeterministicBackend("det"))
    with pytest.raises(EvolkitError, match="--resume"):
        run_eval(s, tmp_path / "e", show_progress=False, answer_checker=checker, plot=False,
                 backend=DeterministicBackend("det"))
    s2 = EvalSettings(model="det", bench="gsm8k", backend="custom", limit=5, max_tokens=100)
    with pytest.raises(EvolkitError, match="max_tokens"):
        run_eval(s2, tmp_path / "e", resume=True, show_progress=False, answer_checker=checker, plot=False,
                 backend=DeterministicBackend("det"))
    # A finished run resumes without a backend at all (re-scores only).
    class NoBackend(DeterministicBackend):
        async def stream(self, requests):
            raise AssertionError("nothing should be generated")
            yield  # pragma: no cover

    summary = run_eval(s, tmp_path / "e", resume=True, backend=NoBackend("det"), show_progress=False,
                       answer_checker=checker, plot=False)
    assert summary["samples"] == 5
    run_eval(s2, tmp_path / "e", force=True, show_progress=False, answer_checker=checker, plot=False,
             backend=DeterministicBackend("det"))
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["settings"]["max_tokens"] == 100


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from evolkit.eval import EvalSettings, run_eval
    from tests.doubles.deterministic import DeterministicBackend

    if __name__ == "__main__":
        s = EvalSettings(model="det", bench="gsm8k", backend="custom", limit=int(sys.argv[2]))
        run_eval(s, sys.argv[1], resume=True, show_progress=False, plot=False,
                 backend=DeterministicBackend("det", delay=0.15))
    """
)


def test_resume_after_sigkill_redoes_nothing(tmp_path, checker):
    n = 40
    out = tmp_path / "killed"
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(n)], env=env, start_new_session=True)
    shard = out / "eval" / "generations.shard-00000.jsonl"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if shard.exists() and shard.read_text().count("\n") >= 8:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = {json.loads(line)["id"] for line in shard.read_text().splitlines() if line.endswith("}")}
    assert 8 <= len(done) < n

    questions = {it.question: it.id for it in load_benchmark("gsm8k")[:n]}

    class Counting(DeterministicBackend):
        seen: list[str] = []

        async def stream(self, requests):
            for r in requests:
                prompt = r.messages[-1]["content"]
                self.seen.append(next(i for q, i in questions.items() if q in prompt))
            async for x in super().stream(requests):
                yield x

    be = Counting("det")
    s = EvalSettings(model="det", bench="gsm8k", backend="custom", limit=n)
    resumed = run_eval(s, out, resume=True, backend=be, show_progress=False, answer_checker=checker, plot=False)
    assert not set(be.seen) & done  # nothing finished was generated again
    assert len(be.seen) <= n - len(done)
    straight = run_eval(s, tmp_path / "straight", show_progress=False, answer_checker=checker, plot=False,
                        backend=DeterministicBackend("det"))
    key = lambda r: (r["id"], r["sample"], r["completion"], r["correct"], r["wm_correct"])  # noqa: E731
    assert [key(r) for r in _rows(out)] == [key(r) for r in _rows(tmp_path / "straight")]
    assert resumed["scores"] == straight["scores"]


# ----------------------------------------------------------------------------------------------------------------
# Raw (plain-text) requests in the backends
# ----------------------------------------------------------------------------------------------------------------


def test_raw_request_cache_key_is_backward_compatible():
    import hashlib

    from evolkit.backends import Request, Sampling

    msgs = [{"role": "user", "content": "hi"}]
    r = Request(msgs, Sampling(max_tokens=5))
    old = hashlib.sha256(json.dumps(["m", msgs, r.sampling.as_dict(), 0], sort_keys=True, ensure_ascii=False).encode())
    assert r.cache_key("m") == old.hexdigest()
    assert Request(msgs, Sampling(max_tokens=5), raw=True).cache_key("m") != r.cache_key("m")
    assert Request(msgs, raw=True).prompt_text() == "hi"


class _FakeOpenAI(BaseHTTPRequestHandler):
    calls: list[tuple[str, dict]] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append((self.path, body))
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        if self.path.endswith("/chat/completions"):
            out = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "usage": usage,
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "chat reply"}}]}
        else:
            out = {"id": "x", "object": "text_completion", "created": 0, "model": body["model"], "usage": usage,
                   "choices": [{"index": 0, "finish_reason": "stop", "text": " The answer is: 7", "logprobs": None}]}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


def test_openai_backend_raw_uses_completions_endpoint():
    from evolkit.backends import Request, Sampling
    from evolkit.backends.openai import OpenAIBackend

    srv = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        be = OpenAIBackend("m", base_url=f"http://127.0.0.1:{srv.server_port}/v1", max_retries=0)
        res = be.run([
            Request([{"role": "user", "content": "### Instruction:\nQ\n\n### Response:"}], Sampling(max_tokens=8),
                    raw=True),
            Request([{"role": "user", "content": "Q"}], Sampling(max_tokens=8)),
        ])
    finally:
        srv.shutdown()
    assert [r.error for r in res] == [None, None]
    assert res[0].completions[0].text == " The answer is: 7" and res[1].completions[0].text == "chat reply"
    paths = {p: b for p, b in _FakeOpenAI.calls}
    assert paths["/v1/completions"]["prompt"] == "### Instruction:\nQ\n\n### Response:"
    assert "messages" not in paths["/v1/completions"]
    assert paths["/v1/chat/completions"]["messages"] == [{"role": "user", "content": "Q"}]


# ----------------------------------------------------------------------------------------------------------------
# Contamination
# ----------------------------------------------------------------------------------------------------------------


def test_contamination_command(tmp_path, capsys):
    from evolkit.cli import main

    gsm = load_benchmark("gsm8k")
    rows = [
        {"question": gsm[0].question},  # exact copy
        {"question": "Warm-up first. " + gsm[1].question + " Explain each step."},  # copied inside a longer text
        {"question": "A farmer has 3 cows and buys 4 more. How many cows does the farmer have?"},  # clean
        {"question": "Tom reads 12 pages a day for a week. How many pages does he read?"},  # clean
    ]
    f = tmp_path / "data.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = contamination_report(["0", "1", "2", "3"], [r["question"] for r in rows], ["gsm8k"])
    g = rep["benchmarks"]["gsm8k"]
    assert g["rows_flagged"] == 2 and g["test_problems_hit"] == 2
    assert {f["row"]: f["test_id"] for f in g["flagged"]} == {"0": gsm[0].id, "1": gsm[1].id}
    assert g["by_kind"]["exact"] == 1
    assert main(["contamination", str(f), "--bench", "gsm8k", "--bench", "math", "-o", str(tmp_path / "rep.json")]) == 0
    out = capsys.readouterr().out
    assert "gsm8k test (1319 problems): 2 rows flagged" in out and "math test (5000 problems): 0 rows flagged" in out
    saved = json.loads((tmp_path / "rep.json").read_text())
    assert len(saved["benchmarks"]["gsm8k"]["flagged"]) == 2


# ----------------------------------------------------------------------------------------------------------------
# The real embedded model
# ----------------------------------------------------------------------------------------------------------------


def _check_real_run(out: Path, n: int = 20) -> None:
    rows = _rows(out)
    assert len(rows) == n and [r["id"] for r in rows] == [f"gsm8k-test-{i:05d}" for i in range(n)]
    assert all(isinstance(r["completion"], str) for r in rows)
    assert any(r["completion"].strip() for r in rows)
    assert all(r["verdict"] in ("correct", "incorrect", "no_answer") for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed_generations"] == 0 and summary["samples"] == n
    assert (out / "results.md").exists() and (out / "results.png").exists()


@pytest.mark.slow
def test_real_model_transformers_20_gsm8k(tmp_path):
    from evolkit.cli import main

    out = tmp_path / "smol"
    argv = ["eval", "--model", "smollm2-135m-instruct", "--backend", "transformers", "--bench", "gsm8k",
            "--limit", "20", "--max-tokens", "32", "--batch-size", "20", "--checker", "both", "-o", str(out),
            "--no-progress"]
    assert main(argv) == 0
    _check_real_run(out)
    rows = _rows(out)
    assert rows[0]["prompt"].startswith("Below is an instruction") and "<|im_start|>" not in rows[0]["prompt"]
    assert all(r["completion_tokens"] <= 32 for r in rows)


@pytest.mark.slow
def test_real_model_openai_server_20_gsm8k(tmp_path, request):
    server = request.getfixturevalue("llama_server")
    from evolkit.cli import main

    out = tmp_path / "srv"
    argv = ["eval", "--model", server.model, "--backend", "openai", "--base-url", server.base_url, "--bench", "gsm8k",
            "--limit", "20", "--max-tokens", "32", "--checker", "both", "-o", str(out), "--no-progress"]
    assert main(argv) == 0
    _check_real_run(out)
