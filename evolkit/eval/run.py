"""One evaluation run (``run_eval``): settings, resumable generation, scoring and the files it writes.

```
OUT/
  eval.json                 the generation settings (a resumed run must match them)
  cache.sqlite              the request cache: a finished request is never sent twice
  eval/generations.shard-*.jsonl   completions, appended as they arrive (the resume state)
  eval/samples.parquet      one row per sample: prompt, completion, extracted answers, gold, verdicts of both checkers
  samples.jsonl             the same rows, for eyes and diffs
  summary.json              the protocol that ran; pass@1 overall / by MATH level / by subject with counts; pass@k and
                            maj@k when n > 1
  results.md                the same as markdown tables, with the paper's reference figures
  results.png               a bar plot of pass@1 (overall, by level, by subject) for both checkers
```
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, EvolkitError
from .bench import BENCHMARKS, EvalItem, PromptStyle, benchmark, load_benchmark, prompt_style, protocol
from .report import markdown_report, paper_rows, plot_report
from .score import CHECKERS, score_completions, summarize

log = logging.getLogger("evolkit.eval")

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

    def resolved(self, checker: str = "evolkit") -> EvalSettings:
        """Defaults filled in. The stop strings follow the checker: the WizardMath prompt styles stop at the paper's
        strings when the paper's extraction scores (``wizardmath`` or ``both``), at evolkit's otherwise."""
        s = EvalSettings(**asdict(self))
        benchmark(s.bench)
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
            paper = checker in ("wizardmath", "both") and s.prompt in ("wizardmath", "wizardmath-default")
            s.stop = list(protocol().stop if paper else prompt_style(s.prompt, s.chat).stop)
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
        from ..records import Problem
        from ..seeds import sample

        probs = [Problem(id=i.id, source="x", question=i.question, level=i.level, type=i.subject, root_id=i.id)
                 for i in items]
        keep = {p.id for p in sample(probs, s.sample, seed=s.seed, stratify=True)}
        items = [i for i in items if i.id in keep]
    if s.limit:
        items = items[: s.limit]
    return items


# --------------------------------------------------------------------------------------------------------------------
# The protocol that runs
# --------------------------------------------------------------------------------------------------------------------


def protocol_info(s: EvalSettings, checker: str) -> dict[str, Any]:
    """What ran, named, and where it departs from the WizardMath paper's protocol (its inference scripts): the prompt
    template, stop strings, checker, max new tokens and greedy decoding. ``s`` is resolved."""
    paper = protocol()
    kind = BENCHMARKS[s.bench].kind
    style = prompt_style(s.prompt, s.chat)
    stop = list(s.stop or ())
    greedy = not s.temperature
    departures = []
    if s.prompt != paper.prompt or s.chat:
        departures.append(f"prompt `{s.prompt}`{' (chat template)' if s.chat else ''} instead of the paper's Alpaca "
                          f"CoT prompt (`{paper.prompt}`)")
    if stop != list(paper.stop):
        departures.append(f"stop strings {stop} instead of the paper's {list(paper.stop)}")
    if not greedy or s.n != 1:
        departures.append(f"sampling (temperature {s.temperature}, n {s.n}) instead of one greedy completion")
    if s.top_p != paper.top_p:
        departures.append(f"top_p {s.top_p} instead of {paper.top_p:g}")
    if s.max_tokens != paper.max_tokens[kind]:
        departures.append(f"at most {s.max_tokens} new tokens instead of {paper.max_tokens[kind]}")
    if checker == "evolkit":
        departures.append("scored by evolkit's checker (math-verify) instead of the paper's extraction "
                          "(`--checker wizardmath` or `both`)")
    if not departures:
        name = "wizardmath"
    elif s.prompt == paper.prompt and not s.chat and stop == list(paper.evolkit_stop) and greedy and s.n == 1 \
            and s.top_p == paper.top_p and s.max_tokens == paper.max_tokens[kind]:
        name = "evolkit"
    else:
        name = "custom"
    return {
        "name": name, "matches_paper": not departures, "prompt_template": s.prompt, "prompt_sha": style.sha,
        "raw_prompt": style.raw, "stop": stop, "checker": checker, "max_tokens": s.max_tokens, "greedy": greedy,
        "temperature": s.temperature, "top_p": s.top_p, "n": s.n, "departures": departures,
        "paper_source": {k: paper.source[k] for k in ("repo", "commit", "paths") if k in paper.source},
    }


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
    from ..backends import Request, Sampling

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
# The run
# --------------------------------------------------------------------------------------------------------------------


def _backend_config(s: EvalSettings, opts: dict[str, Any]) -> Any:
    from ..config import BackendConfig

    kw: dict[str, Any] = {"kind": s.backend, "model": s.model}
    keys = ("base_url", "api_key_env", "max_concurrency", "batch_size", "dtype", "engine_kwargs")
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
    from ..backends import CachedBackend, RequestCache, make_backend
    from ..progress import Progress
    from ..errors import DataError
    from ..store import RunStore, _atomic_write, check_output_folder, write_parquet

    if checker not in (*CHECKERS, "both"):
        raise ConfigError(f"--checker {checker!r}: one of evolkit, wizardmath, both")
    s = settings.resolved(checker)
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
        from ..answers import AnswerChecker

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
        "protocol": protocol_info(s, checker),
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

