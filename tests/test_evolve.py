"""The evolve stage: growth schedule, elimination, lineage, resume after SIGKILL, the embedded model end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.doubles import fake_backend
from tests.doubles.deterministic import DeterministicBackend, question_of
from evolkit.config import RunConfig
from evolkit.pipeline import Context, run_all, run_stage
from evolkit.records import EvolExample, Problem, SFTExample, Solution
from evolkit.stages import evolve
from evolkit.store import RunStore

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def need_data() -> None:
    if not DATA.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{DATA} is missing (required in CI)")
        pytest.skip(f"{DATA} is missing")


def head_lines(src: Path, dst: Path, n: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, encoding="utf-8") as f:
        dst.write_text("".join(line for _, line in zip(range(n), f)), encoding="utf-8")


def lineage_ok(seeds: list[dict], problems: list[dict]) -> None:
    """Every evolved problem reaches a seed through parent ids; root ids agree; rounds increase along the chain."""
    seed_ids = {s["id"] for s in seeds}
    by_id = {p["id"]: p for p in problems}
    assert len(by_id) == len(problems), "duplicate ids"
    assert not seed_ids & set(by_id)
    for p in problems:
        assert p["source"] == "evol" and p["operation"] in evolve.BUILTIN_OPERATIONS and p["round"] >= 1
        cur, hops = p, 0
        while cur["id"] not in seed_ids:
            parent = cur["parent_id"]
            assert parent in seed_ids or parent in by_id, f"orphan: {cur['id']} has unknown parent {parent}"
            if parent in by_id:
                assert by_id[parent]["round"] < cur["round"]
                cur = by_id[parent]
            else:
                cur = {"id": parent}
            hops += 1
            assert hops <= len(problems) + 1
        assert cur["id"] == p["root_id"], (p["id"], cur["id"], p["root_id"])


# ------------------------------------------------------------------------------------------------------ config / plan
def test_default_schedule_reaches_6_4x():
    rounds = evolve.default_schedule()
    assert len(rounds) == 8
    plan = evolve.planned_sizes(rounds, 15_000)
    assert round(15_000 + sum(plan)) == 96_000
    cfg = evolve.Config()
    assert set(cfg.operations) == set(evolve.BUILTIN_OPERATIONS)
    ups = sum(w for op, w in cfg.rounds[0].operations.items() if cfg.operations[op].direction == "upward")
    assert ups / sum(cfg.rounds[0].operations.values()) == pytest.approx(0.75)


def test_planned_sizes_pools():
    rounds = [evolve.RoundConfig(pool="seeds", children_per_parent=0.5),
              evolve.RoundConfig(pool="previous", children_per_parent=2.0),
              evolve.RoundConfig(pool="all", children_per_parent=0.25)]
    assert evolve.planned_sizes(rounds, 100) == [50.0, 100.0, 62.5]


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="unknown operation"):
        evolve.Config(rounds=[{"operations": {"frobnicate": 1}}])
    with pytest.raises(ValueError, match="needs both prompt and direction"):
        evolve.Config(operations={"mine": {"prompt": "x.jinja"}})
    with pytest.raises(ValueError, match="positive weight"):
        evolve.Config(rounds=[{"operations": {"simplify": 0}}])
    mine = tmp_path / "mine.jinja"
    mine.write_text("Rewrite with a twist: {{ question }}")
    cfg = evolve.Config(operations={"twist": {"prompt": str(mine), "direction": "upward"},
                                    "simplify": {"prompt": str(mine)}},
                        rounds=[{"pool": "seeds", "operations": {"twist": 2, "simplify": 1}}])
    assert cfg.operations["simplify"].direction == "downward" and cfg.operations["simplify"].prompt == str(mine)
    assert cfg.operations["add_constraints"].prompt == "evolve_add_constraints"
    # The run config knows the stage; a typo in a key is reported with its path.
    with pytest.raises(Exception, match="children_per_parnt"):
        RunConfig.model_validate({"stages": {"evolve": {"rounds": [{"children_per_parnt": 1}]}}})


def test_plan_children_is_seeded_and_exact():
    import random

    parents = [Problem(id=f"s{i}", source="gsm8k", question=f"q{i}", root_id=f"s{i}") for i in range(10)]
    w = {"add_constraints": 1.0, "simplify": 1.0}
    a = evolve.plan_children(parents, 23, w, random.Random("x"), {}, 1, 0, 0.0)
    b = evolve.plan_children(parents, 23, w, random.Random("x"), {}, 1, 0, 0.0)
    assert [c.id for c in a] == [c.id for c in b] and len(a) == 23
    per = {}
    for c in a:
        per[c.parent.id] = per.get(c.parent.id, 0) + 1
    assert sorted(per.values()) == [2] * 7 + [3] * 3  # 2.3 children per parent: the fraction drawn by the RNG
    counters = {}
    first = evolve.plan_children(parents, 10, w, random.Random("y"), counters, 2, 0, 0.5)
    more = evolve.plan_children(parents, 10, w, random.Random("z"), counters, 2, 1, 0.5)
    assert len({c.id for c in first + more}) == 20  # indices continue per parent: no id is reused
    assert {c.role for c in first + more} == {"main", "evolver2"}


# ------------------------------------------------------------------------------------------------------ 8 rounds
@pytest.fixture(scope="module")
def eight_rounds(tmp_path_factory):
    """The default 8-round schedule from 1000 seeds (500 GSM8k + 500 MATH train problems) on the deterministic
    backend, decontaminated against the shared GSM8k/MATH test files."""
    need_data()
    tmp = tmp_path_factory.mktemp("evolve8")
    head_lines(DATA / "gsm8k" / "train.jsonl", tmp / "seeds" / "gsm8k" / "train.jsonl", 500)
    head_lines(DATA / "math" / "train.jsonl", tmp / "seeds" / "math" / "train.jsonl", 500)
    cfg = RunConfig.model_validate({
        "name": "evolve8", "seed": 0, "backend": fake_backend(),
        "seeds": [{"source": "gsm8k", "path": str(tmp / "seeds" / "gsm8k")},
                  {"source": "math", "path": str(tmp / "seeds" / "math")}],
        "stages": {"sft": {"k": 2}, "evolve": {}},
    })
    run_dir = tmp / "run"
    results = run_all(cfg, run_dir, show_progress=False)
    return run_dir, RunStore(run_dir), results["evolve"]


def test_eight_rounds_reach_planned_growth(eight_rounds):
    run_dir, store, _ = eight_rounds
    summary = json.loads((run_dir / "evolve" / "summary.json").read_text())
    assert summary["seeds"] == 1000
    assert summary["growth"]["planned"] == pytest.approx(6.4)
    achieved = summary["growth"]["achieved"]
    assert abs(achieved / summary["growth"]["planned"] - 1) <= 0.05, achieved
    assert summary["pool"] == 1000 + summary["evolved"] == 1000 + len(store.load("evolve", "problems"))
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, 9))
    for r in rounds:
        assert r["planned"] == pytest.approx(675)
        assert r["kept"] > 0 and r["requested"] >= r["kept"]
        eliminated = sum(r["eliminated"].values())
        assert r["requested"] == r["kept"] + eliminated  # every child is kept or eliminated with a reason
        assert r["by_direction"]["upward"]["n"] > r["by_direction"]["downward"]["n"] > 0
    assert rounds[-1]["planned_growth"] == pytest.approx(6.4)
    assert rounds[-1]["achieved_growth"] == pytest.approx(achieved)
    for png in ("growth.png", "difficulty.png"):
        p = run_dir / "evolve" / png
        assert p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_eight_rounds_lineage_and_outputs(eight_rounds):
    run_dir, store, _ = eight_rounds
    seeds = store.load("seeds", "problems")
    problems = store.load("evolve", "problems")
    lineage_ok(seeds, problems)
    evol = store.load("evolve", "evol")
    assert [e["id"] for e in evol] == [p["id"] for p in problems]
    for e, p in zip(evol, problems):
        EvolExample.model_validate(e)
        Problem.model_validate(p)
        assert e["pseudo_gold"] == p["gold_answer"] and e["agreement"] >= 0.5 and not e["flagged"]
        assert e["model"] == "deterministic" and e["sampling"]["temperature"] == 0.7
        assert len(e["solutions"]) == len(e["answers"]) == e["n_samples"] == 4
        assert e["direction"] == evolve.BUILTIN_OPERATIONS[e["operation"]].direction
    ids = {p["id"] for p in problems}
    eliminated = store.load("evolve", "eliminated")
    assert not ids & {e["id"] for e in eliminated}
    assert {e["reason"] for e in eliminated} <= {"contaminated", "low_agreement", "no_answer", "duplicate_exact",
                                                  "duplicate_near", "no_information_gain", "solution_not_problem"}
    assert any(e["reason"] == "contaminated" and e["match"]["test_file"] in ("test.jsonl", "math500_test.jsonl")
               for e in eliminated)
    solutions = store.load("evolve", "solutions")
    assert {s["problem_id"] for s in solutions} == ids
    for s in solutions[:200]:
        Solution.model_validate(s)
    evolved_sft = store.load("evolve", "sft_evolved")  # only the evolved problems' rows: publishing decides the mix
    assert evolved_sft and {r["problem_id"] for r in evolved_sft} <= ids
    good = {(s["problem_id"], s["sample_index"]) for s in solutions if s["verdict"] == "correct"}
    for r in evolved_sft:
        SFTExample.model_validate(r)
        assert r["source"] == "evol" and r["round"] >= 1 and (r["problem_id"], int(r["id"].rsplit(":", 1)[1])) in good


# ------------------------------------------------------------------------------------------------------ elimination
PLANTS = {
    "ART": "#Rewritten Prompt#: A box holds 12 pens and 30 pencils. How many writing tools are in 4 boxes?",
    "REF": "I'm sorry, but I cannot rewrite this problem into a harder one.",
    "EMPTY": "   ",
    "LONG": "A very long problem. " * 300,
    "NOANS": "A farmer plants 14 rows of 25 trees and loses 37 of them to frost. How many trees are left? NOANSWER",
    "LOW": "A baker bakes 48 rolls in the morning and 36 in the afternoon and sells 70. How many are left? SPLIT",
}
TEST_PROBLEM = ("Marta buys 3 crates of oranges with 24 oranges in each crate. She gives 17 oranges to her neighbours "
                "and uses 9 oranges to make juice. How many oranges does Marta have left?")


def _planted_seeds(path: Path) -> list[dict]:
    rows = []
    for i, key in enumerate(["ART", "REF", "EMPTY", "LONG", "NOANS", "LOW", "COPY", "DUPSEED", "NEAR", "TEST"]):
        rows.append({"id": f"plant-{key}", "question": f"PLANT {key}: Sam has {10 + i} marbles and buys {3 + i} more "
                     f"at the fair on a sunny day. How many marbles does Sam have now?", "answer": f"#### {13 + 2 * i}"})
    rows.append({"id": "other-long", "question": (
        "A school orders 18 boxes of markers for its 6 art classes. Every box holds 24 markers, and each class keeps "
        "the same number of markers in a shared cupboard. During the first month, each class uses a quarter of its "
        "markers on a mural project. How many markers are left in each class cupboard after the first month?"),
        "answer": "#### 54"})
    for i in range(9):
        rows.append({"id": f"clean-{i}", "question": f"Lena reads {12 + i} pages on Monday and {20 + 3 * i} pages on "
                     f"Tuesday. How many pages does she read in total on the two days?", "answer": f"#### {32 + 4 * i}"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _evolve_responder(seeds: dict[str, str], base: DeterministicBackend):
    def fn(req, k):
        q = question_of(req)
        for key, text in PLANTS.items():
            if q.startswith(f"PLANT {key}:"):
                return text
        if q.startswith("PLANT COPY:"):
            return "  " + q.replace(",", " ,") + " "
        if q.startswith("PLANT DUPSEED:"):
            return seeds["clean-3"].upper()
        if q.startswith("PLANT NEAR:"):
            return seeds["other-long"].replace("shared cupboard", "shared closet")
        if q.startswith("PLANT TEST:"):
            return "Question: " + TEST_PROBLEM.replace("Marta", "Martha")
        return base._evolve(req, k, req.task.split(":", 1)[1])
    return fn


def _solve_responder(base: DeterministicBackend):
    def fn(req, k):
        q = question_of(req)
        if "NOANSWER" in q:
            return "Step 1: I am not sure.\n\nStep 2: It depends."
        if "SPLIT" in q:
            return f"Step 1: Guess.\n\nThe answer is: {100 + k}"
        return f"Step 1: Count.\n\nStep 2: Add.\n\nThe answer is: {len(q) % 97}"  # unanimous
    return fn


def _context_with(cfg: RunConfig, run_dir: Path, backend: DeterministicBackend) -> Context:
    ctx = Context.open(cfg, run_dir, show_progress=False)
    key = f"{cfg.backend.kind}:{cfg.backend.model}"
    ctx._backends[key] = backend
    ctx._backend_cfgs[key] = cfg.backend
    return ctx


def test_planted_failures_are_eliminated_with_their_reason(tmp_path):
    rows = _planted_seeds(tmp_path / "seeds" / "train.jsonl")
    seeds = {r["id"]: r["question"] for r in rows}
    testfile = tmp_path / "bench" / "test.jsonl"
    testfile.parent.mkdir()
    testfile.write_text(json.dumps({"question": TEST_PROBLEM}) + "\n")
    cfg = RunConfig.model_validate({
        "backend": fake_backend(),
        "seeds": [{"source": "gsm8k", "path": str(tmp_path / "seeds")}],
        "stages": {"evolve": {
            "rounds": [{"pool": "seeds", "children_per_parent": 1.0, "operations": {"add_constraints": 1}}],
            "expected_survival": 1.0, "max_topups": 0, "k": 4, "plots": False,
            "decontamination": {"test_files": [str(testfile)]},
        }},
    })
    base = DeterministicBackend()
    be = DeterministicBackend(responders={"evolve:": _evolve_responder(seeds, base), "solve": _solve_responder(base)})
    with _context_with(cfg, tmp_path / "run", be) as ctx:
        run_stage(ctx, "seeds")
        summary = run_stage(ctx, "evolve")
    store = RunStore(tmp_path / "run")
    elim = {e["parent_id"]: e for e in store.load("evolve", "eliminated")}
    expected = {
        "plant-ART": "prompt_artifact", "plant-REF": "refusal", "plant-EMPTY": "empty", "plant-LONG": "length",
        "plant-NOANS": "no_answer", "plant-LOW": "low_agreement", "plant-COPY": "no_information_gain",
        "plant-DUPSEED": "duplicate_exact", "plant-NEAR": "duplicate_near", "plant-TEST": "contaminated",
    }
    for parent, reason in expected.items():
        assert parent in elim, f"{parent} was not eliminated"
        assert elim[parent]["reason"] == reason, (parent, elim[parent])
    assert elim["plant-DUPSEED"]["match"]["id"] == "clean-3"
    assert elim["plant-NEAR"]["match"]["id"] == "other-long" and elim["plant-NEAR"]["match"]["similarity"] >= 0.85
    assert elim["plant-TEST"]["match"]["kind"] in ("ngram", "near")
    assert elim["plant-TEST"]["match"]["test_file"] == "test.jsonl"
    assert elim["plant-LOW"]["match"]["agreement"] == 0.25
    kept = store.load("evolve", "problems")
    assert {p["parent_id"] for p in kept} == {r["id"] for r in rows} - set(expected)  # clean ones all kept
    assert summary["evolved"] == len(kept) == 10
    assert summary["eliminated"] == {r: 1 for r in expected.values()}
    rd = json.loads((tmp_path / "run" / "evolve" / "summary.json").read_text())["rounds"][0]
    assert rd["duplicates"] == {"exact": 1, "near": 1} and sum(rd["contaminated"].values()) == 1


def test_flag_mode_llm_check_and_second_evolver(tmp_path):
    rows = _planted_seeds(tmp_path / "seeds" / "train.jsonl")
    seeds = {r["id"]: r["question"] for r in rows}
    cfg = RunConfig.model_validate({
        "backend": fake_backend(),
        "evolver_backend": fake_backend("det-evolver-2"),
        "seeds": [{"source": "gsm8k", "path": str(tmp_path / "seeds")}],
        "stages": {"sft": {"k": 1}, "evolve": {
            "rounds": [{"pool": "seeds", "children_per_parent": 2.0}],
            "expected_survival": 1.0, "max_topups": 0, "k": 4, "min_agreeing": 1, "low_agreement": "flag", "evolver2_share": 0.5,
            "elimination": {"llm_check": True}, "plots": False, "decontamination": {"enabled": False},
        }},
    })
    base = DeterministicBackend()
    def parent_of(req) -> str:  # the check prompt's "Original problem:" part (evolkit/prompts/check_info_gain.jinja)
        return req.messages[-1]["content"].split("Original problem:")[1].split("Rewritten problem:")[0]

    checks = {"check:": lambda req, k: "No" if "Lena reads 14" in parent_of(req) else "Yes, it is."}
    be = DeterministicBackend(responders={"evolve:": _evolve_responder(seeds, base), "solve": _solve_responder(base),
                                          **checks})
    with _context_with(cfg, tmp_path / "run", be) as ctx:
        run_stage(ctx, "seeds")
        run_stage(ctx, "sft")
        run_stage(ctx, "evolve")
    store = RunStore(tmp_path / "run")
    evol = {e["parent_id"]: e for e in store.load("evolve", "evol")}
    elim = store.load("evolve", "eliminated")
    assert evol["plant-LOW"]["flagged"] and evol["plant-LOW"]["agreement"] == 0.25
    llm = [e for e in elim if e["reason"] == "no_information_gain_llm"]
    assert llm and {e["parent_id"] for e in llm} == {"clean-2"}
    models = {e["model"] for e in evol.values()} | {e["model"] for e in elim if e["model"]}
    assert models == {"deterministic", "det-evolver-2"}
    sft = store.load("evolve", "sft_evolved")
    flagged = {e["id"] for e in store.load("evolve", "evol") if e["flagged"]}
    assert flagged and not flagged & {r["problem_id"] for r in sft}


def test_topup_passes_fill_the_plan(tmp_path):
    """Half of the evolutions are refusals: extra passes make up the difference."""
    _planted_seeds(tmp_path / "seeds" / "train.jsonl")
    cfg = RunConfig.model_validate({
        "backend": fake_backend(),
        "seeds": [{"source": "gsm8k", "path": str(tmp_path / "seeds")}],
        "stages": {"evolve": {
            "rounds": [{"pool": "seeds", "children_per_parent": 1.5, "operations": {"concretize": 1}}],
            "expected_survival": 1.0, "max_topups": 3, "topup_tolerance": 0.0, "k": 1, "min_agreeing": 1, "plots": False,
            "decontamination": {"enabled": False},
        }},
    })
    base = DeterministicBackend()

    def half(req, k):
        return "I'm sorry, I cannot do that." if k % 2 == 0 else base._evolve(req, k, "concretize")

    be = DeterministicBackend(responders={"evolve:": half})
    with _context_with(cfg, tmp_path / "run", be) as ctx:
        run_stage(ctx, "seeds")
        summary = run_stage(ctx, "evolve")
    r = json.loads((tmp_path / "run" / "evolve" / "summary.json").read_text())["rounds"][0]
    assert r["planned"] == 30 and r["passes"] >= 2
    assert r["kept"] >= 30 and summary["evolved"] == r["kept"]
    assert r["eliminated"]["refusal"] >= 20


# ------------------------------------------------------------------------------------------------------ resume
RESUME_CFG = {
    "name": "resume", "seed": 3,
    "backend": fake_backend(delay=0.01),
    "seeds": [{"source": "gsm8k", "n": 50}, {"source": "math", "n": 30}],
    "stages": {"sft": {"k": 2}, "evolve": {
        "rounds": [{"pool": "seeds", "children_per_parent": 0.7}, {"pool": "previous", "children_per_parent": 1.0},
                   {"pool": "all", "children_per_parent": 0.3}],
        "k": 2, "plots": False,
    }},
}


def _parquet_rows(run_dir: Path, name: str) -> list[dict]:
    return RunStore(run_dir).load("evolve", name)


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(RESUME_CFG))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "evolkit.cli", "evolve", str(cfg_path), "-o", str(killed), "--no-progress"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    shard = killed / "evolve" / "round02_evolutions.shard-00000.jsonl"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if shard.exists() and shard.read_text().count("\n") >= 5:
                break
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.02)
        else:
            pytest.fail("round 2 did not start in time")
        os.killpg(proc.pid, signal.SIGKILL)  # the run and the answer checker's workers it started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not RunStore(killed).is_done("evolve")
    done_before = shard.read_text().count("\n")
    # Resume from the run folder's own config.
    res = subprocess.run(
        [sys.executable, "-m", "evolkit.cli", "evolve", "-o", str(killed), "--resume", "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert RunStore(killed).is_done("evolve")
    rows2 = [json.loads(x) for p in sorted(shard.parent.glob("round02_evolutions.shard-*.jsonl"))
             for x in p.read_text().splitlines()]
    assert len(rows2) > done_before  # the resumed session added only what was missing
    assert len(rows2) == len({r["key"] for r in rows2})  # nothing was evolved twice (one record per child)
    # The uninterrupted reference run.
    ref_cfg = json.loads(json.dumps(RESUME_CFG))
    ref_cfg["backend"]["options"]["delay"] = 0
    ref = tmp_path / "ref"
    run_all(RunConfig.model_validate(ref_cfg), ref, stages=["evolve"], show_progress=False)
    for name in ("problems", "evol", "solutions", "eliminated", "sft_evolved"):
        assert _parquet_rows(killed, name) == _parquet_rows(ref, name), name
    assert len(_parquet_rows(ref, "problems")) > 50
    s1 = json.loads((killed / "evolve" / "summary.json").read_text())
    s2 = json.loads((ref / "evolve" / "summary.json").read_text())
    assert s1["rounds"] == s2["rounds"] and s1["growth"] == s2["growth"]


# ------------------------------------------------------------------------------------------------------ report helpers
def test_report_helpers(tmp_path):
    import io

    from evolkit import report

    p = report.line_plot(tmp_path / "a.png", [0, 1, 2], {"plan": [1, 2, 3], "got": [1, None, 3.5]},
                         title="t", bars={"kept": [0, 1, 1]})
    q = report.panel_plot(tmp_path / "b.png", [0, 1], {"x": {"up": [1, 2], "down": [None, 1]}, "y": {"up": [3, 4]}})
    r = report.bar_plot(tmp_path / "c.png", ["a", "b"], {"n": [1, 2], "m": [2, 1]}, horizontal=True)
    for f in (p, q, r):
        assert f.read_bytes()[:4] == b"\x89PNG"
    buf = io.StringIO()
    report.print_table("T", ["a", "b"], [[1, 2.5], ["x", None]], file=buf)
    out = buf.getvalue()
    assert "2.50" in out and "-" in out and "T" in out
    assert report.format_counts({"a": 1, "b": 3, "c": 0}) == "b 3, a 1"


# ------------------------------------------------------------------------------------------------------ real model
@pytest.mark.slow
def test_embedded_model_one_round_end_to_end(tmp_path):
    pytest.importorskip("transformers")
    cfg = RunConfig.model_validate({
        "name": "smol-evolve", "seed": 0,
        "backend": {"kind": "transformers", "model": "smollm2-135m-instruct", "batch_size": 10},
        "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 64},
        "seeds": [{"source": "gsm8k", "n": 10}, {"source": "math", "n": 10}],
        "stages": {"evolve": {
            "rounds": [{"pool": "seeds", "children_per_parent": 1.0}],
            "k": 1, "min_agreeing": 1, "answer_fewshot": 0, "max_topups": 0, "expected_survival": 1.0,
        }},
    })
    run_dir = tmp_path / "run"
    results = run_all(cfg, run_dir, stages=["evolve"], show_progress=False)
    store = RunStore(run_dir)
    assert store.is_done("evolve")
    summary = json.loads((run_dir / "evolve" / "summary.json").read_text())
    assert results["evolve"]["requested"] == summary["requested"] == 20
    kept = store.load("evolve", "problems")
    eliminated = store.load("evolve", "eliminated")
    assert len(kept) + len(eliminated) == 20
    assert summary["rounds"][0]["kept"] == len(kept)
    seeds = store.load("seeds", "problems")
    lineage_ok(seeds, kept)
    for e in eliminated:
        assert e["reason"] and e["parent_id"] in {s["id"] for s in seeds}
    raw = [row for x in (run_dir / "evolve" / "round01_evolutions.shard-00000.jsonl").read_text().splitlines()
           for row in json.loads(x)["rows"]]  # one group record per child
    assert len(raw) == 20 and all(r["model"] == "smollm2-135m-instruct" and r["sampling"]["max_tokens"] == 64
                                  for r in raw)
    for e in store.load("evolve", "evol"):
        EvolExample.model_validate(e)
    assert (run_dir / "evolve" / "growth.png").exists() and (run_dir / "evolve" / "difficulty.png").exists()


def test_truncated_evolutions_and_single_agreeing_answers_are_eliminated(tmp_path):
    """Evolution gates: an evolution cut off by the token limit is eliminated (``truncated``), and a pseudo-gold needs
    ``min_agreeing`` (2) agreeing answers among all k samples, failed and answerless ones included."""
    from evolkit.backends.base import Completion, Result

    rows = _planted_seeds(tmp_path / "seeds" / "train.jsonl")
    seeds = {r["id"]: r["question"] for r in rows}
    cut = {rows[0]["question"]}  # the evolution of this seed stops at the token limit

    class Truncating(DeterministicBackend):
        async def stream(self, requests):
            async for i, res in super().stream(requests):
                r = requests[i]
                if r.task.startswith("evolve:") and any(q in r.messages[-1]["content"] for q in cut):
                    res = Result([Completion(c.text[: len(c.text) // 2], "length", c.prompt_tokens,
                                             c.completion_tokens) for c in res.completions])
                yield i, res

    base = DeterministicBackend()
    be = Truncating(responders={"evolve:": _evolve_responder(seeds, base), "solve": _solve_responder(base)})
    cfg = RunConfig.model_validate({
        "backend": fake_backend(), "seeds": [{"source": "gsm8k", "path": str(tmp_path / "seeds")}],
        "stages": {"sft": {"k": 1}, "evolve": {
            "rounds": [{"pool": "seeds", "children_per_parent": 1.0}], "expected_survival": 1.0, "max_topups": 0,
            "k": 4, "plots": False, "decontamination": {"enabled": False}}},
    })
    with _context_with(cfg, tmp_path / "run", be) as ctx:
        run_stage(ctx, "seeds")
        run_stage(ctx, "evolve")
    store = RunStore(tmp_path / "run")
    elim = {e["parent_id"]: e for e in store.load("evolve", "eliminated")}
    assert elim[rows[0]["id"]]["reason"] == "truncated"
    low = elim["plant-LOW"]  # one of its four answers agrees with itself: no pseudo-gold
    assert low["reason"] == "low_agreement" and "1 of 4 answers agree" in low["detail"]
    kept = store.load("evolve", "evol")
    assert kept and all(round(e["agreement"] * e["n_samples"]) >= 2 for e in kept)
    summary = json.loads((tmp_path / "run" / "evolve" / "summary.json").read_text())
    assert summary["eliminated"]["truncated"] == 1
    with pytest.raises(ValueError, match="min_agreeing"):  # k = 1 could never give two agreeing answers
        RunConfig.model_validate({"stages": {"evolve": {"k": 1}}})
