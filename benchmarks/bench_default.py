"""The embedded default: the default recipe end to end, and the transformers backend alone (old path vs new path).

* ``recipe``: ``evolkit run evolkit/recipes/default.yaml`` into a temporary folder (a subprocess, as a user runs it).
  Prints the wall time of each stage (from the run manifest), the tokens generated and tokens/s (from the run's
  request cache), the run's CPU seconds, and the machine load: the 1-minute load average before and after, and the
  cores that *other* processes kept busy during the run (machine busy time from /proc/stat minus the run's own CPU
  time). ``--set KEY=VALUE`` is passed on (e.g. ``--set backend.options.engine=generate`` for the old path).
* ``backend``: the same requests - the default recipe's sft requests (its seeds, its few-shot prompt, k samples of
  max_tokens each) - through ``TransformersBackend`` twice, each in a fresh subprocess, back to back:
  ``old``: ``model.generate`` (each prompt copied k times, left-padded into one batch), float32, threads fixed at half
  the cores - what the backend did before; ``new``: the backend's defaults (own decoding loop, shared prefixes
  prefilled once, bfloat16 where the CPU has it, threads from the measured load). Prints wall, CPU seconds, tokens/s,
  prompt tokens vs tokens actually prefilled, and the load. On a shared machine compare CPU seconds as well as wall.

Usage::

    .venv/bin/python benchmarks/bench_default.py recipe [--recipe PATH] [--set KEY=VALUE ...]
    .venv/bin/python benchmarks/bench_default.py backend [--max-tokens 128] [--k 2] [--only old|new] [--batch-size N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _busy_seconds() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class Load:
    """Machine load around a measured piece of work: load average before/after, cores busy with other work."""

    def __enter__(self) -> Load:
        self.load_before = os.getloadavg()[0]
        self.busy0, self.t0 = _busy_seconds(), time.monotonic()
        self.own0 = self._own()
        return self

    @staticmethod
    def _own() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t0
        self.cpu = self._own() - self.own0
        self.others = max(0.0, (_busy_seconds() - self.busy0 - self.cpu) / max(self.wall, 1e-6))
        self.load_after = os.getloadavg()[0]

    def line(self) -> str:
        return (f"load average {self.load_before:.2f} -> {self.load_after:.2f}; other processes kept "
                f"{self.others:.2f} of {os.cpu_count()} cores busy")


# -------------------------------------------------------------------------------------------------------------- recipe
def _ts(s: str) -> float:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def _generated_tokens(cache: Path) -> tuple[int, int]:
    """(requests, completion tokens) in a run's request cache."""
    if not cache.exists():
        return 0, 0
    db = sqlite3.connect(cache)
    n = toks = 0
    for (value,) in db.execute("SELECT value FROM results"):
        d = json.loads(value)
        n += 1
        toks += sum(c.get("completion_tokens") or 0 for c in d.get("completions") or [])
    db.close()
    return n, toks


def bench_recipe(args: argparse.Namespace) -> None:
    out = Path(tempfile.mkdtemp(prefix="bench-default-")) / "run"
    cmd = [sys.executable, "-m", "evolkit.cli", "run", str(args.recipe), "-o", str(out), "--no-progress"]
    for s in args.set:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    print("$", " ".join(cmd[1:]), flush=True)
    started = time.time()
    with Load() as load:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        print(res.stdout[-3000:], res.stderr[-3000:])
        raise SystemExit(f"evolkit run failed ({res.returncode})")
    manifest = json.loads((out / "manifest.json").read_text())
    print("\nstage        seconds   (wall, from the run manifest)")
    prev = started
    for name, info in manifest["stages"].items():
        end = _ts(info["finished_at"]) if "finished_at" in info else prev
        secs = info.get("seconds", end - prev)
        print(f"  {name:<10} {secs:8.1f}")
        prev = end
    from evolkit.store import RunStore

    requests, tokens = _generated_tokens(RunStore(out).cache_path)
    print(f"\ntotal wall {load.wall:.1f} s, CPU {load.cpu:.1f} s (the run and its workers)")
    print(f"generated {tokens} tokens in {requests} requests: {tokens / load.wall:.1f} tokens/s over the whole run")
    print(load.line())
    print(f"run folder: {out}")


# ------------------------------------------------------------------------------------------------------------- backend
CHILD = r"""
import json, os, sys, time, resource
sys.path.insert(0, {repo!r})
from evolkit.config import load_config
from evolkit import seeds
from evolkit.stages import sft
from evolkit.backends.base import Request, Sampling
from evolkit.backends.transformers import TransformersBackend

cfg = load_config({recipe!r})
sft_cfg = sft.Config.model_validate(cfg.stages.get("sft") or {{}})
if hasattr(sft_cfg, "model_dump"):
    sft_cfg = sft.Config.model_validate(sft_cfg.model_dump())
problems = seeds.load_seeds(cfg.seeds, seed=cfg.seed)
k = {k} or sft_cfg.k
s = Sampling(temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p, max_tokens={max_tokens} or
             cfg.sampling.max_tokens, n=k, seed=cfg.sampling.seed)
reqs = [Request(sft.build_messages(p, sft_cfg), s, task="solve") for p in problems]
kw = dict(engine="generate", dtype="float32", threads=max(1, (os.cpu_count() or 2) // 2)) if {old!r} else {{}}
be = TransformersBackend(cfg.backend.model, batch_size={batch_size} or cfg.backend.batch_size, **kw)
t = time.time(); be._load(); load_s = time.time() - t
r0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.time()
res = be.run(reqs)
wall = time.time() - t
r1 = resource.getrusage(resource.RUSAGE_SELF)
print("RESULT " + json.dumps({{
    "load_s": load_s, "wall": wall, "cpu": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime,
    "requests": len(reqs), "samples": sum(len(r.completions) for r in res), "errors": sum(not r.ok for r in res),
    "tokens": sum(c.completion_tokens for r in res for c in r.completions),
    "finish": {{f: sum(c.finish_reason == f for r in res for c in r.completions) for f in ("stop", "length")}},
    "batches": be.batch_log, "engine": be.engine, "dtype": str(be._loaded[0].dtype),
}}))
"""


def bench_backend(args: argparse.Namespace) -> None:
    which = [args.only] if args.only else ["old", "new"]
    rows = {}
    for name in which:
        code = CHILD.format(repo=str(REPO), recipe=str(args.recipe), k=args.k, max_tokens=args.max_tokens,
                            old=name == "old", batch_size=args.batch_size)
        with Load() as load:
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
        if res.returncode != 0 or not line:
            print(res.stdout[-2000:], res.stderr[-3000:])
            raise SystemExit(f"{name}: failed")
        r = json.loads(line[0][7:])
        rows[name] = r
        prompt = sum(b["prompt_tokens"] * (b["rows"] // b["prompts"] if name == "old" else 1) for b in r["batches"])
        prefill = sum(b["prefill_tokens"] for b in r["batches"])
        threads = sorted({b["threads"] for b in r["batches"]})
        print(f"{name:>4}: {r['engine']}, {r['dtype']}, threads {threads}: {r['requests']} requests x "
              f"{r['samples'] // max(1, r['requests'])} samples, {r['tokens']} tokens ({r['finish']}) in "
              f"{r['wall']:.1f} s wall / {r['cpu']:.1f} s CPU -> {r['tokens'] / r['wall']:.1f} tokens/s; "
              f"prefilled {prefill} tokens of {prompt}; model load {r['load_s']:.1f} s; errors {r['errors']}")
        print(f"      {load.line()}", flush=True)
    if len(rows) == 2:
        o, n = rows["old"], rows["new"]
        print(f"new vs old: {o['wall'] / n['wall']:.1f}x less wall time, {o['cpu'] / n['cpu']:.1f}x less CPU time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    rp = sub.add_parser("recipe")
    rp.add_argument("--recipe", type=Path, default=REPO / "evolkit" / "recipes" / "default.yaml")
    rp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    bp = sub.add_parser("backend")
    bp.add_argument("--recipe", type=Path, default=REPO / "evolkit" / "recipes" / "default.yaml")
    bp.add_argument("--k", type=int, default=0, help="samples per prompt (default: the recipe's sft k)")
    bp.add_argument("--max-tokens", type=int, default=0, help="default: the recipe's sampling.max_tokens")
    bp.add_argument("--only", choices=["old", "new"])
    bp.add_argument("--batch-size", type=int, default=0, help="prompts per batch (default: the recipe's)")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; {Load.__doc__}")
    (bench_recipe if args.cmd == "recipe" else bench_backend)(args)


if __name__ == "__main__":
    main()
