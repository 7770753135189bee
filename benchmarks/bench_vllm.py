"""evolkit's vLLM backend vs raw vLLM offline generation on the same engine (needs a GPU and the ``vllm`` extra).

Both paths run the same chat requests (the SFT stage's solve prompts for GSM8k test questions, ``--k`` samples each)
through one ``vllm.LLM`` engine loaded once:

* ``raw``: one ``LLM.chat(all_messages, SamplingParams(n=k, ...))`` call, the fastest way vLLM offers;
* ``evolkit``: ``VLLMBackend.stream(requests)`` (grouping by sampling parameters, chunks of ``--chunk-size`` handed to
  the engine from a helper thread, results turned into ``Result`` objects and streamed back), consumed by an
  ``async for`` loop like a stage's.

After a warm-up, each path runs ``--repeat`` times, alternating; the median wall time, requests/s and generated
tokens/s are printed with evolkit's ratio to raw (target: within 1.1x: the engine, not evolkit, is the bottleneck).
Smaller ``--chunk-size`` values show the cost of handing the engine chunks instead of the whole list.

Usage (on a machine with a GPU; the model must be on local disk or in the Hugging Face cache)::

    .venv/bin/pip install 'evolkit[vllm]'
    .venv/bin/python benchmarks/bench_vllm.py --model Qwen/Qwen2.5-0.5B-Instruct --n 2000 --k 4 --repeat 3
    .venv/bin/python benchmarks/bench_vllm.py --model ~/.cache/evolkit/models/<smollm2 copy> --n 500

Not run in this repository's CI (no GPU); it prints an explanation and exits 0 when vllm or a GPU is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _questions(n: int) -> list[str]:
    from evolkit.settings import data_dir

    path = data_dir() / "gsm8k" / "test.jsonl"
    qs: list[str] = []
    if path.exists():
        with open(path, encoding="utf-8") as f:
            qs = [json.loads(line)["question"] for line in f if line.strip()]
    if not qs:  # no shared data: small synthetic word problems
        qs = [f"Ann has {i + 3} apples and buys {2 * i + 1} more, then gives away {i % 5}. How many are left?"
              for i in range(n)]
    return [qs[i % len(qs)] + ("" if i < len(qs) else f" (variant {i // len(qs)})") for i in range(n)]


def _requests(n: int, k: int, max_tokens: int, fewshot: int) -> list:
    from evolkit.backends import Request, Sampling
    from evolkit.records import Problem
    from evolkit.stages.sft import Config, build_messages

    cfg = Config(fewshot=fewshot)
    sampling = Sampling(temperature=0.7, top_p=1.0, max_tokens=max_tokens, n=k, seed=0)
    prefixes: dict = {}
    out = []
    for i, q in enumerate(_questions(n)):
        p = Problem(id=f"q{i}", root_id=f"q{i}", source="gsm8k", question=q, gold_answer="0")
        out.append(Request(build_messages(p, cfg, prefixes), sampling, task="solve"))
    return out


def run_raw(llm, reqs) -> tuple[float, int]:
    from vllm import SamplingParams

    s = reqs[0].sampling
    params = SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed)
    t0 = time.perf_counter()
    outs = llm.chat([r.messages for r in reqs], sampling_params=params, use_tqdm=False)
    wall = time.perf_counter() - t0
    return wall, sum(len(c.token_ids) for o in outs for c in o.outputs)


def run_evolkit(backend, reqs) -> tuple[float, int]:
    async def go() -> int:
        toks = 0
        async for _i, res in backend.stream(reqs):
            toks += sum(c.completion_tokens for c in res.completions)
        return toks

    t0 = time.perf_counter()
    toks = asyncio.run(go())
    return time.perf_counter() - t0, toks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.environ.get("BENCH_VLLM_MODEL", "Qwen/Qwen2.5-0.5B-Instruct"))
    ap.add_argument("--n", type=int, default=2000, help="problems (requests)")
    ap.add_argument("--k", type=int, default=4, help="samples per problem (SamplingParams.n)")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--fewshot", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=4096, help="VLLMBackend chunk size")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = ap.parse_args()

    try:
        import torch
        import vllm  # noqa: F401
    except ImportError as e:
        print(f"bench_vllm: needs the vllm extra and a GPU ({e}); nothing to measure here.")
        return 0
    if not torch.cuda.is_available():
        print("bench_vllm: no CUDA GPU visible; nothing to measure here.")
        return 0

    from evolkit.backends.vllm import VLLMBackend

    engine_kwargs = {"gpu_memory_utilization": args.gpu_memory_utilization, "max_model_len": args.max_model_len,
                     "seed": 0}
    backend = VLLMBackend(args.model, chunk_size=args.chunk_size, **engine_kwargs)
    t0 = time.perf_counter()
    llm = backend._engine()  # one engine for both paths
    load_s = time.perf_counter() - t0
    reqs = _requests(args.n, args.k, args.max_tokens, args.fewshot)
    warm = reqs[: min(64, len(reqs))]
    run_raw(llm, warm)
    run_evolkit(backend, warm)

    runs: dict[str, list[tuple[float, int]]] = {"raw": [], "evolkit": []}
    for r in range(args.repeat):
        order = ("raw", "evolkit") if r % 2 == 0 else ("evolkit", "raw")
        for impl in order:
            runs[impl].append(run_raw(llm, reqs) if impl == "raw" else run_evolkit(backend, reqs))

    gpu = torch.cuda.get_device_name(0)
    print(f"\nvLLM offline: {args.model} on {gpu}; engine load {load_s:.1f} s; {args.n} requests x n={args.k}, "
          f"max_tokens {args.max_tokens}, {args.fewshot}-shot prompts; median of {args.repeat} (alternating)")
    print(f"{'path':>8} {'wall s':>8} {'min':>7} {'max':>7} {'req/s':>8} {'gen tok/s':>10} {'x raw':>6}")
    med = {impl: statistics.median(w for w, _ in runs[impl]) for impl in runs}
    figures = {}
    for impl in ("raw", "evolkit"):
        walls = [w for w, _ in runs[impl]]
        toks = statistics.median(t for _, t in runs[impl])
        figures[impl] = {"wall_s": med[impl], "req_per_s": args.n / med[impl], "tok_per_s": toks / med[impl]}
        print(f"{impl:>8} {med[impl]:>8.2f} {min(walls):>7.2f} {max(walls):>7.2f} {args.n / med[impl]:>8.1f} "
              f"{toks / med[impl]:>10.0f} {med[impl] / med['raw']:>6.2f}")
    if args.json:
        print(json.dumps({"model": args.model, "gpu": gpu, "n": args.n, "k": args.k, **figures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
