"""Benchmark evaluation (``evolkit eval``) and test-set contamination checks (``evolkit contamination``).

``evolkit eval --model M --bench gsm8k|math|math500 --backend vllm|openai|transformers`` generates one completion per
test problem (or ``--n`` samples), scores it with evolkit's answer checker *and* with the WizardMath paper's own
extraction (:mod:`evolkit.wizardmath_checker`), and writes into its output folder:

```
OUT/
  eval.json                 the generation settings (a resumed run must match them)
  cache.sqlite              the request cache: a finished request is never sent twice
  eval/generations.shard-*.jsonl   completions, appended as they arrive (the resume state)
  eval/samples.parquet      one row per sample: prompt, completion, extracted answers, gold, verdicts of both checkers
  samples.jsonl             the same rows, for eyes and diffs
  summary.json              pass@1 overall / by MATH level / by subject with counts; pass@k and maj@k when n > 1
  results.md                the same as markdown tables, with the paper's reference figures
  results.png               a bar plot of pass@1 (overall, by level, by subject) for both checkers
```

Prompt styles (``--prompt``): ``wizardmath`` (default; the WizardMath evaluation prompt, the Alpaca template ending
``### Response: Let's think step by step.``, sent as raw text), ``wizardmath-default`` (the same without the CoT
phrase), ``gsm8k-8shot`` (lm-eval-harness ``gsm8k_cot``: 8 exemplars as ``Q: ...\\nA: ...``), ``minerva``
(lm-eval-harness ``minerva_math``: 4 exemplars as ``Problem:\\n...\\n\\nSolution: ...``), ``chat`` (zero-shot
through the model's chat template, asking for a ``\\boxed{}`` answer) or a path to a text file with ``{question}``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import re
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError, EvolkitError

log = logging.getLogger("evolkit.eval")

# --------------------------------------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str  # gsm8k | math: how gold answers are read and how the WizardMath protocol scores
    path: str  # local default (``{data}`` = the shared data folder)
    max_tokens: int  # default max new tokens
    hub_id: str | None = None  # used when the local file is absent and no --data is given
    hub_config: str | None = None


BENCHMARKS: dict[str, Benchmark] = {
    "gsm8k": Benchmark("gsm8k", "gsm8k", "{data}/gsm8k/test.jsonl", 1024, "openai/gsm8k", "main"),
    "math": Benchmark("math", "math", "{data}/math/test.jsonl", 2048),
    "math500": Benchmark("math500", "math", "{data}/math/math500_test.jsonl", 2048, "HuggingFaceH4/MATH-500"),
}

#: The WizardMath paper's greedy pass@1 (%), CoT prompt (Luo et al. 2023, WizardMath V1.0, Table 1).
PAPER_REFERENCE: dict[str, dict[str, float]] = {
    "WizardMath-7B-V1.0": {"gsm8k": 54.9, "math": 10.7},
    "WizardMath-13B-V1.0": {"gsm8k": 63.9, "math": 14.0},
    "WizardMath-70B-V1.0": {"gsm8k": 81.6, "math": 22.7},
}


@dataclass
class EvalItem:
    id: str
    question: str
    gold: str | None  # evolkit's gold (evolkit.answers.gsm8k_gold / math_gold)
    gold_wm: str | None  # the WizardMath protocol's gold (integer text for GSM8k, boxed content for MATH)
    reference: str  # the reference solution as given
    level: int | None = None
    subject: str | None = None


def _looks_local(data: str) -> bool:
    return "{data}" in data or data.startswith((".", "/", "~")) or Path(data).expanduser().exists() or bool(
        re.search(r"\.(jsonl|json|parquet)$", data)
    )


def load_benchmark(
    bench: str, data: str | None = None, split: str = "test", hub_config: str | None = None
) -> list[EvalItem]:
    """The test problems of a benchmark from its local default file, a given file/folder, or a Hub dataset id."""
    from . import wizardmath_checker as wm
    from .seeds import _local_file, expand_path, problem_from_row, read_rows

    spec = BENCHMARKS.get(bench)
    if spec is None:
        raise ConfigError(f"unknown benchmark {bench!r} (known: {', '.join(BENCHMARKS)})")
    rows: list[tuple[str, dict[str, Any]]] = []
    if data is None and not expand_path(spec.path).exists():
        if spec.hub_id is None:
            raise DataError(
                f"{expand_path(spec.path)}: no such file; give the {bench} test set with --data FILE or a Hub id"
            )
        log.info("%s not found; loading %s from the Hub", expand_path(spec.path), spec.hub_id)
        data, hub_config = spec.hub_id, hub_config or spec.hub_config
    if data is None or _looks_local(data):
        path = expand_path(data or spec.path)
        file = _local_file(spec.kind, path, split) if path.is_dir() else path
        rows = [(f"{file}:{i}", r) for i, r in read_rows(file)]
    else:
        try:
            import datasets

            ds = datasets.load_dataset(data, hub_config, split=split)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{data}: could not load split {split!r}: {e}") from None
        rows = [(f"{data}[{split}] row {i}", dict(r)) for i, r in enumerate(ds)]
    items: list[EvalItem] = []
    seen: set[str] = set()
    for idx, (where, row) in enumerate(rows):
        p = problem_from_row(spec.kind, row, idx, split, where)
        if p.id in seen:
            raise DataError(f"{where}: duplicate id {p.id!r}")
        seen.add(p.id)
        ref = p.reference_solution or ""
        gold_wm = (
            (None if (g := wm.gsm8k_gold(ref)) is None else str(g)) if spec.kind == "gsm8k" else wm.math_gold(ref)
        )
        subject = p.type or row.get("subject")
        items.append(EvalItem(p.id, p.question, p.gold_answer, gold_wm, ref, p.level, subject))
    if not items:
        raise DataError(f"{data or spec.path}: no problems")
    return items


# --------------------------------------------------------------------------------------------------------------------
# Prompt styles
# --------------------------------------------------------------------------------------------------------------------

#: Stop strings for the Alpaca-style WizardMath prompt: the model must not start a new turn of the template.
WIZARDMATH_STOP = ("### Instruction", "### Response", "\n\nBelow is an instruction that describes a task")


@dataclass(frozen=True)
class PromptStyle:
    name: str
    template: str  # the full prompt text with a ``{question}`` slot
    raw: bool  # True: plain-text completion; False: one user message through the chat template
    stop: tuple[str, ...] = ()

    def render(self, question: str) -> str:
        # str.replace, never str.format: MATH problems are full of braces.
        return self.template.replace("{question}", question)

    @property
    def sha(self) -> str:
        return hashlib.sha256(json.dumps([self.template, self.raw, list(self.stop)]).encode()).hexdigest()[:16]


def _fewshot(spec: dict[str, Any], q_key: str, t_key: str) -> str:
    """The lm-eval-harness few-shot prompt: ``query(ex) + target(ex)`` joined by the delimiter, then the query."""
    query = spec["query_template"]
    delim = spec.get("fewshot_delimiter", "\n\n")
    if "target_template" in spec:
        target_tpl = spec["target_template"]
    else:
        target_tpl = spec.get("target_delimiter", " ") + "{" + t_key + "}"
    shots = []
    for ex in spec["exemplars"]:
        q = query.replace("{" + q_key + "}", ex[q_key])
        shots.append(q + target_tpl.replace("{" + t_key + "}", ex[t_key]))
    return delim.join(shots) + delim + query.replace("{" + q_key + "}", "{question}")


PROMPT_STYLES = ("wizardmath", "wizardmath-default", "gsm8k-8shot", "minerva", "chat")


def prompt_style(name: str, chat: bool = False) -> PromptStyle:
    """A named style (see :data:`PROMPT_STYLES`) or a text file with ``{question}`` (raw unless ``chat``)."""
    from . import prompts

    if name == "wizardmath":
        tpl = prompts.wizardmath_template("cot").replace("{instruction}", "{question}")
        return PromptStyle(name, tpl, True, WIZARDMATH_STOP)
    if name == "wizardmath-default":
        tpl = prompts.wizardmath_template("default").replace("{instruction}", "{question}")
        return PromptStyle(name, tpl, True, WIZARDMATH_STOP)
    if name == "gsm8k-8shot":
        spec = prompts.load_json("eval_gsm8k_cot_8shot")
        return PromptStyle(name, _fewshot(spec, "question", "target"), True, tuple(spec["stop_sequences"]))
    if name == "minerva":
        spec = prompts.load_json("eval_minerva_math_4shot")
        return PromptStyle(name, _fewshot(spec, "problem", "solution"), True, tuple(spec["stop_sequences"]))
    if name == "chat":
        return PromptStyle(name, prompts.load_text("eval_chat_user"), False, ())
    p = Path(name).expanduser()
    if not p.is_file():
        raise ConfigError(f"--prompt {name!r}: neither a style ({', '.join(PROMPT_STYLES)}) nor a file")
    text = p.read_text(encoding="utf-8").strip("\n")
    if "{question}" not in text:
        raise ConfigError(f"{p}: a prompt file needs a {{question}} slot")
    return PromptStyle(str(p), text, not chat, ())


# --------------------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class EvalSettings:
    """What determines the generations (saved in ``eval.json``; a resumed run must match)."""

    model: str
    bench: str = "gsm8k"
    backend: str = "transformers"
    prompt: str = "wizardmath"
    chat: bool = False  # a prompt file goes through the chat template
    data: str | None = None
    split: str = "test"
    hub_config: str | None = None
    limit: int | None = None  # the first N problems
    sample: int | None = None  # a seeded random (MATH: level x subject stratified) subset of N problems
    n: int = 1
    temperature: float | None = None  # None: 0 (greedy) for n == 1, else 0.7
    top_p: float = 1.0
    max_tokens: int | None = None  # None: the benchmark's default (GSM8k 1024, MATH 2048)
    seed: int = 0
    stop: list[str] | None = None  # None: the prompt style's stop strings

    def resolved(self) -> EvalSettings:
        s = EvalSettings(**asdict(self))
        if s.bench not in BENCHMARKS:
            raise ConfigError(f"unknown benchmark {s.bench!r} (known: {', '.join(BENCHMARKS)})")
        if s.n < 1:
            raise ConfigError("--n must be at least 1")
        for flag, v in (("--limit", s.limit), ("--sample", s.sample), ("--max-tokens", s.max_tokens)):
            if v is not None and v < 1:
                raise ConfigError(f"{flag} must be at least 1, got {v}")
        if s.temperature is not None and s.temperature < 0:
            raise ConfigError(f"--temperature must be at least 0, got {s.temperature}")
        if not 0 < s.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {s.top_p}")
        if s.temperature is None:
            s.temperature = 0.0 if s.n == 1 else 0.7
        if s.max_tokens is None:
            s.max_tokens = BENCHMARKS[s.bench].max_tokens
        if s.stop is None:
            s.stop = list(prompt_style(s.prompt, s.chat).stop)
        return s

    def key(self) -> dict[str, Any]:
        """The fields that make generations differ (plus the prompt text's hash)."""
        d = asdict(self)
        d["prompt_sha"] = prompt_style(self.prompt, self.chat).sha
        return d


def default_output_dir(s: EvalSettings) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", s.model.rstrip("/").split("/")[-1] if "/" in s.model else s.model)
    name = f"{slug}-{s.bench}-{Path(s.prompt).stem if '/' in s.prompt else s.prompt}"
    if s.n > 1:
        name += f"-n{s.n}"
    if s.limit:
        name += f"-first{s.limit}"
    if s.sample:
        name += f"-sample{s.sample}"
    return Path("runs") / "eval" / name


def select_items(items: list[EvalItem], s: EvalSettings) -> list[EvalItem]:
    if s.sample:
        from .records import Problem
        from .seeds import sample

        probs = [Problem(id=i.id, source="x", question=i.question, level=i.level, type=i.subject, root_id=i.id)
                 for i in items]
        keep = {p.id for p in sample(probs, s.sample, seed=s.seed, stratify=True)}
        items = [i for i in items if i.id in keep]
    if s.limit:
        items = items[: s.limit]
    return items


# --------------------------------------------------------------------------------------------------------------------
# The reference "model": the gold solutions in WizardMath's output format (a check of the scorers and the pipeline)
# --------------------------------------------------------------------------------------------------------------------

_CALC = re.compile(r"<<[^<>\n]*>>")


def reference_completion(item: EvalItem, kind: str) -> str:
    """The reference solution written the way WizardMath answers: the worked steps, then ``The answer is: X``."""
    ref = item.reference
    if kind == "gsm8k":
        body, _, final = ref.rpartition("####")
        return _CALC.sub("", body).rstrip() + "\nThe answer is: " + final.strip()
    return ref.rstrip() + "\nThe answer is: " + " ".join((item.gold or "").split())  # the answer on one line


def _reference_backend(items_by_question: dict[str, EvalItem], kind: str) -> Any:
    from .backends.base import Backend, Completion, Result

    class ReferenceBackend(Backend):
        model = "reference"

        async def stream(self, requests):  # type: ignore[override]
            for i, r in enumerate(requests):
                item = items_by_question.get(r.meta.get("id", ""))
                if item is None:
                    res = Result(error="unknown problem")
                else:
                    text = reference_completion(item, kind)
                    res = Result([Completion(text, "stop", 0, len(text) // 4) for _ in range(r.sampling.n)])
                self.stats.add(res)
                yield i, res

    return ReferenceBackend()


# --------------------------------------------------------------------------------------------------------------------
# Generation (resumable)
# --------------------------------------------------------------------------------------------------------------------

STAGE = "eval"
GEN = "generations"


@dataclass
class _Unit:
    key: str
    item: EvalItem
    offset: int
    n: int


def _units(items: list[EvalItem], n: int, split_samples: bool) -> list[_Unit]:
    if split_samples and n > 1:
        return [_Unit(f"{it.id}#{j}", it, j, 1) for it in items for j in range(n)]
    return [_Unit(f"{it.id}#0", it, 0, n) for it in items]


def _request(unit: _Unit, style: PromptStyle, s: EvalSettings) -> Any:
    from .backends import Request, Sampling

    sampling = Sampling(
        temperature=float(s.temperature or 0.0),
        top_p=s.top_p,
        max_tokens=int(s.max_tokens or 1024),
        n=unit.n,
        stop=tuple(s.stop or ()),
        seed=s.seed if (s.temperature or 0) > 0 else None,
    )
    return Request(
        messages=[{"role": "user", "content": style.render(unit.item.question)}],
        sampling=sampling,
        sample_offset=unit.offset,
        task="solve",
        meta={"id": unit.item.id, "question": unit.item.question, "gold": unit.item.gold},
        raw=style.raw,
    )


async def _generate(backend: Any, units: list[_Unit], requests: list[Any], writer: Any, progress: Any) -> int:
    failed = 0
    async for i, res in backend.stream(requests):
        u = units[i]
        writer.write(
            {
                "key": u.key,
                "id": u.item.id,
                "offset": u.offset,
                "completions": [
                    {"text": c.text, "finish_reason": c.finish_reason, "completion_tokens": c.completion_tokens}
                    for c in res.completions
                ],
                "error": res.error,
            }
        )
        failed += 0 if res.ok else 1
        if progress is not None:
            progress.update(1, failed=0 if res.ok else 1)
    return failed


def _collect(store: Any) -> dict[str, dict[str, Any]]:
    """The latest good row per unit key (else the latest failed one)."""
    out: dict[str, dict[str, Any]] = {}
    for row in store.iter_partial(STAGE, GEN):
        prev = out.get(row["key"])
        if row.get("error") is None or prev is None or prev.get("error") is not None:
            out[row["key"]] = row
    return out


# --------------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------------


def score_completions(
    items: Sequence[EvalItem],
    completions: Sequence[Sequence[str | None]],
    kind: str,
    checker: Any,
    golds: Sequence[str | None] | None = None,
    golds_wm: Sequence[str | None] | None = None,
) -> list[list[dict[str, Any]]]:
    """Score ``completions[i][k]`` (sample k of item i; None = generation failed) with both checkers.

    ``golds`` / ``golds_wm`` override the items' gold answers (for shuffled-gold checks). Returns per item, per sample:
    ``extracted``, ``correct``, ``reason`` (evolkit) and ``wm_extracted``, ``wm_correct`` (WizardMath protocol)."""
    from . import wizardmath_checker as wm
    from .answers import extract_answer

    golds = [it.gold for it in items] if golds is None else golds
    golds_wm = [it.gold_wm for it in items] if golds_wm is None else golds_wm
    flat: list[tuple[int, int, str | None]] = []
    for i, comps in enumerate(completions):
        for k, text in enumerate(comps):
            flat.append((i, k, text))
    extracted = [extract_answer(t) if t is not None else None for _, _, t in flat]
    verdicts = checker.check_many([(e, golds[i]) for (i, _, _), e in zip(flat, extracted)])
    out: list[list[dict[str, Any]]] = [[{} for _ in comps] for comps in completions]
    for (i, k, text), e, v in zip(flat, extracted, verdicts):
        w = wm.score(kind, text, golds_wm[i])
        reason = "failed" if text is None else v.reason
        out[i][k] = {
            "extracted": e,
            "correct": bool(v.equal) and text is not None,
            "reason": reason,
            "wm_extracted": w.extracted,
            "wm_correct": bool(w.correct) and text is not None,
        }
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate from n samples of which c are correct (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def _ks(n: int) -> list[int]:
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= n]
    if n not in ks:
        ks.append(n)
    return ks


def _majority_correct(scored: list[dict[str, Any]], k: int, kind: str, which: str, checker: Any) -> bool:
    from . import wizardmath_checker as wm
    from .answers import majority_answer

    first = scored[:k]
    if which == "evolkit":
        rep, _ = majority_answer([s["extracted"] for s in first], checker)
        if rep is None:
            return False
        return next(s["correct"] for s in first if s["extracted"] == rep)
    keys = [wm.vote_key(kind, s["wm_extracted"]) for s in first]
    counts = Counter(x for x in keys if x is not None)
    if not counts:
        return False
    best = max(counts.values())
    winner = next(x for x in keys if x is not None and counts[x] == best)
    return next(s["wm_correct"] for s, x in zip(first, keys) if x == winner)


CHECKERS = ("evolkit", "wizardmath")


def _group_stats(idx: list[int], scored: list[list[dict[str, Any]]]) -> dict[str, Any]:
    d: dict[str, Any] = {"problems": len(idx), "samples": sum(len(scored[i]) for i in idx)}
    for name, field_ in (("evolkit", "correct"), ("wizardmath", "wm_correct")):
        correct = sum(s[field_] for i in idx for s in scored[i])
        per_problem = [sum(s[field_] for s in scored[i]) / max(1, len(scored[i])) for i in idx]
        d[name] = {"pass@1": (sum(per_problem) / len(idx)) if idx else 0.0, "correct": int(correct)}
    return d


def summarize(
    items: list[EvalItem], scored: list[list[dict[str, Any]]], kind: str, checker: Any, n: int
) -> dict[str, Any]:
    all_idx = list(range(len(items)))
    overall = _group_stats(all_idx, scored)
    scores: dict[str, Any] = {}
    for name, field_, ext in (("evolkit", "correct", "extracted"), ("wizardmath", "wm_correct", "wm_extracted")):
        sc = dict(overall[name])
        sc["total"] = overall["samples"]
        sc["no_answer"] = sum(s[ext] is None for ss in scored for s in ss)
        if n > 1:
            sc["pass@k"] = {
                str(k): sum(pass_at_k(len(ss), sum(s[field_] for s in ss), k) for ss in scored) / max(1, len(scored))
                for k in _ks(n)
            }
            sc["maj@k"] = {
                str(k): sum(_majority_correct(ss, k, kind, name, checker) for ss in scored) / max(1, len(scored))
                for k in _ks(n)
            }
        scores[name] = sc
    by_level: dict[str, list[int]] = defaultdict(list)
    by_subject: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        if it.level is not None:
            by_level[str(it.level)].append(i)
        if it.subject:
            by_subject[it.subject].append(i)
    diff = Counter()
    for ss in scored:
        for s in ss:
            if s["correct"] != s["wm_correct"]:
                diff["evolkit_only" if s["correct"] else "wizardmath_only"] += 1
    return {
        "problems": len(items),
        "samples": overall["samples"],
        "scores": scores,
        "by_level": {k: _group_stats(v, scored) for k, v in sorted(by_level.items())},
        "by_subject": {k: _group_stats(v, scored) for k, v in sorted(by_subject.items())},
        "checker_disagreements": {"evolkit_only": diff["evolkit_only"], "wizardmath_only": diff["wizardmath_only"]},
    }


# --------------------------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def paper_rows(bench: str) -> list[tuple[str, float]]:
    key = "gsm8k" if bench == "gsm8k" else ("math" if bench == "math" else None)
    if key is None:
        return []
    return [(m, v[key]) for m, v in PAPER_REFERENCE.items()]


def markdown_report(summary: dict[str, Any], checker: str) -> str:
    st = summary["settings"]
    names = list(CHECKERS) if checker == "both" else [checker]
    label = {"evolkit": "evolkit checker", "wizardmath": "WizardMath protocol"}
    mode = "greedy" if not st["temperature"] else f"T={st['temperature']}, top_p={st['top_p']}, n={st['n']}"
    lines = [
        f"# {st['model']} on {st['bench']}",
        "",
        f"prompt `{st['prompt']}`, {mode}, max {st['max_tokens']} new tokens, backend {st['backend']}; "
        f"{summary['problems']} problems, {summary['samples']} samples"
        + (f", {summary['failed_generations']} failed generations" if summary.get("failed_generations") else ""),
        "",
        "| checker | pass@1 (%) | correct / samples | no answer |",
        "|---|---:|---:|---:|",
    ]
    for nm in names:
        sc = summary["scores"][nm]
        lines.append(f"| {label[nm]} | {_pct(sc['pass@1'])} | {sc['correct']} / {sc['total']} | {sc['no_answer']} |")
    if st["n"] > 1:
        lines += ["", "| checker | " + " | ".join(f"pass@{k}" for k in summary["scores"][names[0]]["pass@k"])
                  + " | " + " | ".join(f"maj@{k}" for k in summary["scores"][names[0]]["maj@k"]) + " |"]
        lines.append("|---|" + "---:|" * (2 * len(summary["scores"][names[0]]["pass@k"])))
        for nm in names:
            sc = summary["scores"][nm]
            lines.append(
                f"| {label[nm]} | " + " | ".join(_pct(v) for v in sc["pass@k"].values()) + " | "
                + " | ".join(_pct(v) for v in sc["maj@k"].values()) + " |"
            )
    for title, key, head in (("By level", "by_level", "level"), ("By subject", "by_subject", "subject")):
        groups = summary.get(key) or {}
        if not groups:
            continue
        heads = " | ".join(f"{label[n]} (%)" for n in names)
        lines += ["", f"## {title}", "", f"| {head} | problems | {heads} |", "|---|---:|" + "---:|" * len(names)]
        for g, d in groups.items():
            cells = " | ".join(f"{_pct(d[n]['pass@1'])} ({d[n]['correct']})" for n in names)
            lines.append(f"| {g} | {d['problems']} | {cells} |")
    dis = summary.get("checker_disagreements") or {}
    if checker == "both" and (dis.get("evolkit_only") or dis.get("wizardmath_only")):
        lines += ["", f"Checkers disagree on {dis['evolkit_only'] + dis['wizardmath_only']} samples: "
                  f"{dis['evolkit_only']} correct only for evolkit, "
                  f"{dis['wizardmath_only']} only for the WizardMath protocol."]
    ref = paper_rows(st["bench"])
    if ref:
        lines += ["", "## WizardMath paper (greedy, CoT prompt, pass@1 %)", "",
                  f"| model | {st['bench']} |", "|---|---:|"]
        lines += [f"| {m} | {v} |" for m, v in ref]
    return "\n".join(lines) + "\n"


def plot_report(summary: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars of pass@1 (%) for both checkers: overall, then by MATH level and by subject when present."""
    from .report import bar_plot

    cats = ["overall"]
    groups = [{n: summary["scores"][n] for n in CHECKERS}]
    for lv, d in (summary.get("by_level") or {}).items():
        cats.append(f"Level {lv}")
        groups.append(d)
    for sub, d in (summary.get("by_subject") or {}).items():
        cats.append(sub)
        groups.append(d)
    series = {
        "evolkit checker": [100 * g["evolkit"]["pass@1"] for g in groups],
        "WizardMath protocol": [100 * g["wizardmath"]["pass@1"] for g in groups],
    }
    st = summary["settings"]
    ref = ", ".join(f"{m.replace('WizardMath-', '').replace('-V1.0', '')} {v}" for m, v in paper_rows(st["bench"]))
    title = f"{st['model']} on {st['bench']} ({st['prompt']} prompt), pass@1 %" + (f"; paper: {ref}" if ref else "")
    try:
        return bar_plot(path, cats, series, title=title, ylabel="pass@1 (%)")
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        log.warning("matplotlib is not installed: no plot")
        return None


# --------------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------------


def _backend_config(s: EvalSettings, opts: dict[str, Any]) -> Any:
    from .config import BackendConfig

    kw: dict[str, Any] = {"kind": s.backend, "model": s.model}
    keys = ("base_url", "api_key_env", "max_concurrency", "batch_size", "dtype", "engine_kwargs", "accuracy", "delay_s")
    for k in keys:
        if opts.get(k) is not None:
            kw[k] = opts[k]
    try:
        return BackendConfig(**kw)
    except Exception as e:  # pydantic ValidationError
        raise ConfigError(f"backend settings: {e}") from None


def run_eval(
    settings: EvalSettings,
    output_dir: str | Path | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    checker: str = "evolkit",
    backend: Any = None,
    backend_options: dict[str, Any] | None = None,
    show_progress: bool = True,
    plot: bool = True,
    answer_checker: Any = None,
) -> dict[str, Any]:
    """Generate (what is missing), score, and write the reports. Returns the summary.

    ``backend``: an already built :class:`~evolkit.backends.Backend` (tests); otherwise one is built from the settings
    (``backend_options``: base_url, api_key_env, max_concurrency, batch_size, dtype, engine_kwargs) only when something
    is left to generate. Every backend is wrapped in the output folder's request cache."""
    from .backends import CachedBackend, RequestCache, make_backend
    from .progress import Progress
    from .store import RunStore, _atomic_write, check_output_folder, write_parquet

    if checker not in (*CHECKERS, "both"):
        raise ConfigError(f"--checker {checker!r}: one of evolkit, wizardmath, both")
    s = settings.resolved()
    if resume and force:
        raise EvolkitError("--resume and --force: choose one (continue the evaluation, or redo it)")
    out = check_output_folder(Path(output_dir) if output_dir else default_output_dir(s), "evaluation folder")
    # The inputs are read and checked before anything in the folder is written or removed.
    spec = BENCHMARKS[s.bench]
    items = select_items(load_benchmark(s.bench, s.data, s.split, s.hub_config), s)
    style = prompt_style(s.prompt, s.chat)
    meta_path = out / "eval.json"
    if meta_path.exists():
        try:
            saved = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(saved, dict) or not isinstance(saved.get("settings"), dict):
                raise ValueError("no 'settings' mapping")
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{meta_path}: not a valid evaluation record ({e}); use --force to redo the evaluation "
                            f"or -o for another folder") from None
        if force:
            shutil.rmtree(out / STAGE, ignore_errors=True)
            for f in ("cache.sqlite", "cache.sqlite-wal", "cache.sqlite-shm", "manifest.json"):
                (out / f).unlink(missing_ok=True)
        elif not resume:
            raise EvolkitError(f"{out} already holds an evaluation. Use --resume to continue it, --force to redo it, "
                               f"or -o to choose another folder.")
        else:
            now = s.key()
            diff = sorted(k for k in set(saved["settings"]) | set(now) if saved["settings"].get(k) != now.get(k))
            if diff:
                changes = ", ".join(f"{k}: {saved['settings'].get(k)!r} -> {now.get(k)!r}" for k in diff)
                raise EvolkitError(
                    f"{out}: --resume with different settings ({changes}); use --force to start over or -o for another "
                    f"folder"
                )
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(meta_path, json.dumps({"settings": s.key()}, indent=2, ensure_ascii=False))

    store = RunStore(out)
    units = _units(items, s.n, split_samples=s.backend == "openai")
    done = _collect(store)
    todo = [u for u in units if done.get(u.key, {}).get("error", "missing") is not None]
    t0 = time.time()
    usage: dict[str, Any] = {}
    if todo:
        be = backend
        own_backend = be is None
        if be is None and s.backend == "reference":
            be = _reference_backend({it.id: it for it in items}, spec.kind)
        if be is None:
            be = make_backend(_backend_config(s, backend_options or {}), store.cache_path)
        elif not isinstance(be, CachedBackend):
            be = CachedBackend(be, RequestCache(store.cache_path))
        log.info("%s: %d of %d requests to generate (%d done)", out, len(todo), len(units), len(units) - len(todo))
        progress = Progress(len(todo), f"eval {s.bench}", enabled=show_progress)
        writer = store.writer(STAGE, GEN)
        try:
            asyncio.run(_generate(be, todo, [_request(u, style, s) for u in todo], writer, progress))
        finally:
            writer.close()
            progress.close()
            usage = asdict(be.stats)
            try:
                asyncio.run(be.aclose())
            except Exception:  # noqa: BLE001 - best effort
                pass
            if own_backend:
                be.close()
            elif be is not backend:  # our cache wrapper around the caller's backend: close the cache only
                be.cache.close()
        done = _collect(store)

    # Assemble the samples in a deterministic order (a resumed run equals an uninterrupted one).
    by_item: dict[str, list[dict[str, Any] | None]] = {it.id: [None] * s.n for it in items}
    failed_units = 0
    for u in units:
        row = done.get(u.key)
        if row is None or row.get("error") is not None:
            failed_units += 1
            continue
        for j, c in enumerate(row["completions"][: u.n]):
            by_item[u.item.id][u.offset + j] = c
    comps = [[(c or {}).get("text") if c else None for c in by_item[it.id]] for it in items]
    own_checker = answer_checker is None
    if own_checker:
        from .answers import AnswerChecker

        answer_checker = AnswerChecker()
    try:
        scored = score_completions(items, comps, spec.kind, answer_checker)
        summary = summarize(items, scored, spec.kind, answer_checker, s.n)
    finally:
        if own_checker:
            answer_checker.close()
    primary = "evolkit" if checker == "both" else checker
    rows = []
    for i, it in enumerate(items):
        prompt = style.render(it.question)
        for k, sc in enumerate(scored[i]):
            # With n > 1 the (identical) prompt is kept on sample 0 only: few-shot prompts times n samples add up.
            gen = by_item[it.id][k] or {}
            ok = sc["correct"] if primary == "evolkit" else sc["wm_correct"]
            text = gen.get("text")
            got = sc["extracted"] if primary == "evolkit" else sc["wm_extracted"]
            verdict = "failed" if text is None else ("correct" if ok else ("no_answer" if got is None else "incorrect"))
            rows.append({
                "id": it.id, "sample": k, "level": it.level, "subject": it.subject, "question": it.question,
                "prompt": prompt if k == 0 else None, "completion": text, "finish_reason": gen.get("finish_reason"),
                "completion_tokens": gen.get("completion_tokens"),
                "extracted": sc["extracted"], "gold": it.gold, "correct": sc["correct"], "reason": sc["reason"],
                "wm_extracted": sc["wm_extracted"], "wm_gold": it.gold_wm, "wm_correct": sc["wm_correct"],
                "verdict": verdict,
            })
    summary = {
        "settings": asdict(s),
        "checker": checker,
        "pass@1": summary["scores"][primary]["pass@1"],
        **summary,
        "failed_generations": failed_units,
        "paper_reference": dict(paper_rows(s.bench)),
        "backend_usage": usage,
        "generation_seconds": round(time.time() - t0, 2) if todo else 0.0,
    }
    write_parquet(store.stage_dir(STAGE) / "samples.parquet", rows)
    _atomic_write(out / "samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    md = markdown_report(summary, checker)
    _atomic_write(out / "results.md", md)
    png = plot_report(summary, out / "results.png") if plot else None
    summary["files"] = {
        "samples": "samples.jsonl", "samples_parquet": f"{STAGE}/samples.parquet", "markdown": "results.md",
        **({"plot": "results.png"} if png else {}),
    }
    _atomic_write(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    summary["output_dir"] = str(out)
    return summary


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


def _kv(pairs: list[str]) -> dict[str, Any]:
    from .config import parse_yaml

    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"--engine-arg {p!r}: expected KEY=VALUE")
        k, v = p.split("=", 1)
        out[k] = parse_yaml(v, f"--engine-arg {k}")
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    if args.backend in ("transformers", "vllm") and args.model.startswith(("/", "./", "../", "~")) \
            and not Path(args.model).expanduser().exists():
        raise ConfigError(f"--model {args.model}: no such model folder")
    s = EvalSettings(
        model=args.model, bench=args.bench, backend=args.backend, prompt=args.prompt, chat=args.chat, data=args.data,
        split=args.split, hub_config=args.hub_config, limit=args.limit, sample=args.sample, n=args.n,
        temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed,
        stop=args.stop,
    )
    opts = {
        "base_url": args.base_url, "api_key_env": args.api_key_env, "max_concurrency": args.max_concurrency,
        "batch_size": args.batch_size, "dtype": args.dtype, "engine_kwargs": _kv(args.engine_arg) or None,
    }
    summary = run_eval(
        s, args.output_dir, resume=args.resume, force=args.force, checker=args.checker, backend_options=opts,
        show_progress=not args.no_progress, plot=not args.no_plot,
    )
    print((Path(summary["output_dir"]) / "results.md").read_text())
    print(f"outputs in {summary['output_dir']} (summary.json, samples.jsonl, results.md"
          + (", results.png)" if "plot" in summary["files"] else ")"))
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model on GSM8k / MATH / MATH500 (WizardMath protocol and evolkit's checker)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="model name / path / hub id (default: the embedded model)")
    p.add_argument("--bench", default="gsm8k", choices=list(BENCHMARKS))
    p.add_argument("--backend", default="transformers",
                   choices=["transformers", "vllm", "openai", "deterministic", "reference"],
                   help="reference = the gold solutions in WizardMath's answer format (checks the scorers)")
    p.add_argument("--prompt", default="wizardmath",
                   help=f"{', '.join(PROMPT_STYLES)} or a text file with {{question}}")
    p.add_argument("--chat", action="store_true", help="send a --prompt file through the chat template (default: raw)")
    p.add_argument("--checker", default="evolkit", choices=["evolkit", "wizardmath", "both"],
                   help="headline score: evolkit's checker, the paper's extraction (wizardmath), or both side by side")
    p.add_argument("--data", help="benchmark file/folder or Hub dataset id (default: the shared data folder)")
    p.add_argument("--split", default="test")
    p.add_argument("--hub-config", help="Hub dataset config (e.g. main for openai/gsm8k)")
    p.add_argument("--limit", type=int, help="the first N problems only")
    p.add_argument("--sample", type=int, help="a seeded random N problems (MATH: stratified by level and subject)")
    p.add_argument("--n", type=int, default=1, help="samples per problem (n > 1 adds pass@k and maj@k)")
    p.add_argument("--temperature", type=float, help="default 0 (greedy) for n = 1, 0.7 otherwise")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, help="max new tokens (default: GSM8k 1024, MATH 2048)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", help="stop string (repeatable; default: the prompt style's)")
    p.add_argument("--base-url", help="OpenAI-compatible server, e.g. http://localhost:8000/v1")
    p.add_argument("--api-key-env", help="environment variable holding the API key (default OPENAI_API_KEY)")
    p.add_argument("--max-concurrency", type=int)
    p.add_argument("--batch-size", type=int, help="transformers batch size")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="vLLM engine argument, e.g. tensor_parallel_size=2 (YAML values; repeatable)")
    p.add_argument("-o", "--output-dir", help="output folder (default runs/eval/<model>-<bench>-<prompt>)")
    p.add_argument("--resume", action="store_true", help="continue an evaluation in an existing folder")
    p.add_argument("--force", action="store_true", help="discard an existing evaluation in the folder and start over")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plot", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "contamination",
        help="n-gram and near-duplicate overlap between a dataset and the GSM8k / MATH test sets",
        description=CONTAMINATION_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", help="a local file/folder (jsonl / json / parquet) or a Hub dataset id")
    p.add_argument("--split", default="train", help="split of a Hub dataset or a folder (default train)")
    p.add_argument("--hub-config")
    p.add_argument("--field", action="append",
                   help="text field(s) to compare (default: the first of question, problem, instruction, prompt, "
                   "query, input, text)")
    p.add_argument("--bench", action="append", choices=list(BENCHMARKS),
                   help="benchmarks to compare with (repeatable; default gsm8k and math)")
    p.add_argument("--ngram", type=int, default=13, help="word n-gram length for exact overlap (default 13)")
    p.add_argument("--threshold", type=float, default=0.7,
                   help="near duplicates: estimated containment of the test problem in the row (default 0.7; 0 = off)")
    p.add_argument("--examples", type=int, default=5, help="examples per benchmark in the report")
    p.add_argument("--limit", type=int, help="the first N dataset rows only")
    p.add_argument("-o", "--output", help="write the full report (JSON, with every flagged row) here")
    p.set_defaults(func=cmd_contamination)


# --------------------------------------------------------------------------------------------------------------------
# Contamination
# --------------------------------------------------------------------------------------------------------------------

CONTAMINATION_DOC = """\
Compare a dataset (a local jsonl / json / parquet file or folder, or a Hub dataset id) with the benchmark test sets,
with the evolve stage's decontamination (evolkit.filters.Decontaminator). A row is flagged for a test problem when:

* exact: their normalised texts (lower-case words) are equal;
* ngram: they share a word n-gram (default 13, the GPT-3 decontamination test; n-grams found in 3 or more test
  problems are boilerplate and do not count), or the row contains a whole test problem shorter than n words;
* near: MinHash LSH proposes the pair and the test problem is estimated to be at least --threshold (default 0.7)
  contained in the row, with every number of the test problem present in the row.

Prints counts per benchmark with examples (the row, the test problem, the evidence) and writes every flagged row
with -o.
"""

_AUTO_FIELDS = ("question", "problem", "instruction", "prompt", "query", "input", "text")


def load_texts(dataset: str, split: str = "train", hub_config: str | None = None,
               fields: list[str] | None = None, limit: int | None = None) -> tuple[list[str], list[str]]:
    """(row labels, texts) of a dataset's text field(s) from a local file/folder or a Hub dataset id."""
    from .seeds import expand_path, read_rows

    rows: list[dict[str, Any]]
    path = expand_path(dataset)
    if path.exists() or _looks_local(dataset):
        if path.is_dir():
            cands = [path / f"{split}{ext}" for ext in (".jsonl", ".parquet", ".json")]
            cands += sorted(p for ext in ("*.jsonl", "*.parquet", "*.json") for p in path.glob(ext))
            file = next((c for c in cands if c.exists()), None)
            if file is None:
                raise DataError(f"{path}: no jsonl / parquet / json file in this folder")
        else:
            file = path
        rows = [r for _, r in read_rows(file)]
        where = str(file)
    else:
        try:
            import datasets

            ds = datasets.load_dataset(dataset, hub_config, split=split)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{dataset}: could not load split {split!r}: {e}") from None
        rows = [dict(r) for r in ds]
        where = f"{dataset}[{split}]"
    if limit:
        rows = rows[:limit]
    if not rows:
        raise DataError(f"{where}: no rows")
    if not fields:
        found = next((f for f in _AUTO_FIELDS if isinstance(rows[0].get(f), str)), None)
        if found is None:
            raise DataError(f"{where}: none of the fields {', '.join(_AUTO_FIELDS)}; name one with --field "
                            f"(the first row has {', '.join(map(str, rows[0]))})")
        fields = [found]
    missing = [f for f in fields if f not in rows[0]]
    if missing:
        raise DataError(f"{where}: the first row has no field {missing[0]!r} (it has {', '.join(map(str, rows[0]))})")
    labels = [str(r.get("id") or r.get("unique_id") or i) for i, r in enumerate(rows)]
    texts = ["\n".join(str(r.get(f) or "") for f in fields) for r in rows]
    return labels, texts


def _short(text: str, n: int = 240) -> str:
    t = " ".join(text.split())
    return t if len(t) <= n else t[: n - 1] + "…"


def contamination_report(
    labels: list[str], texts: list[str], benches: list[str], ngram: int = 13, threshold: float | None = 0.7,
    examples: int = 5,
) -> dict[str, Any]:
    """Per benchmark: how many dataset rows contain a test problem (by kind), how many test problems are hit, examples.

    The matching is :class:`evolkit.filters.Decontaminator` (the evolve stage's decontamination): ``exact`` (same
    normalised text), ``ngram`` (a shared word ``ngram``-gram, or a whole short test problem inside the row), ``near``
    (MinHash estimate of the test problem's containment in the row >= ``threshold``, with all its numbers present)."""
    from . import filters

    item_cls = getattr(filters, "BenchmarkItem", None) or filters.TestItem  # (id, file, text); renamed over time

    report: dict[str, Any] = {"rows": len(texts), "ngram": ngram, "threshold": threshold, "benchmarks": {}}
    for bench in benches:
        items = load_benchmark(bench)
        deco = filters.Decontaminator([item_cls(it.id, bench, it.question) for it in items], ngram=ngram,
                              near_threshold=threshold)
        flagged = []
        kinds: Counter = Counter()
        for label, text, m in zip(labels, texts, deco.match_many(texts)):
            if m is None:
                continue
            kinds[m.kind] += 1
            flagged.append({"row": label, "text": text, "test_id": m.test_id, "test_problem": m.test_text,
                            "kind": m.kind, "score": m.score, "evidence": m.evidence})
        report["benchmarks"][bench] = {
            "test_problems": len(items),
            "rows_flagged": len(flagged),
            "rows_flagged_share": len(flagged) / max(1, len(texts)),
            "by_kind": {k: kinds[k] for k in ("exact", "ngram", "near")},
            "test_problems_hit": len({f["test_id"] for f in flagged}),
            "flagged": flagged,
            "examples": [
                {**f, "text": _short(f["text"]), "test_problem": _short(f["test_problem"])} for f in flagged[:examples]
            ],
        }
    return report


def cmd_contamination(args: argparse.Namespace) -> int:
    from .store import check_output_folder

    if args.ngram < 3:
        raise ConfigError(f"--ngram must be at least 3, got {args.ngram}")
    if not 0 <= args.threshold <= 1:
        raise ConfigError(f"--threshold must be in [0, 1] (0 = off), got {args.threshold}")
    for flag, v in (("--limit", args.limit), ("--examples", args.examples)):
        if v is not None and v < (1 if flag == "--limit" else 0):
            raise ConfigError(f"{flag} must be at least {1 if flag == '--limit' else 0}, got {v}")
    if args.output:
        if Path(args.output).is_dir():
            raise ConfigError(f"-o {args.output}: is a folder; give the report's file name")
        check_output_folder(Path(args.output).parent, "report's folder")
    labels, texts = load_texts(args.dataset, args.split, args.hub_config, args.field, args.limit)
    benches = args.bench or ["gsm8k", "math"]
    rep = contamination_report(labels, texts, benches, args.ngram, args.threshold or None, args.examples)
    rep["dataset"] = args.dataset
    print(f"{args.dataset}: {len(texts)} rows; exact = same normalised text, ngram = a shared {args.ngram}-word "
          f"sequence (or a whole short test problem), near = the test problem >= {args.threshold} contained (MinHash)")
    for bench, r in rep["benchmarks"].items():
        k = r["by_kind"]
        print(f"\n{bench} test ({r['test_problems']} problems): {r['rows_flagged']} rows flagged "
              f"({100 * r['rows_flagged_share']:.2f}%; exact {k['exact']}, ngram {k['ngram']}, near {k['near']}), "
              f"{r['test_problems_hit']} test problems hit")
        for ex in r["examples"]:
            how = f"shares \"{ex['evidence']}\"" if ex["kind"] == "ngram" else ex["evidence"]
            print(f"  - row {ex['row']} ~ {ex['test_id']} ({ex['kind']}: {how})\n      row:  {ex['text']}\n"
                  f"      test: {ex['test_problem']}")
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        for r in rep["benchmarks"].values():
            r.pop("examples", None)
        out.write_text(json.dumps(rep, indent=2, ensure_ascii=False))
        print(f"\nfull report: {out}")
    return 0
