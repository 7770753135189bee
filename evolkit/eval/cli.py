"""``evolkit eval``: evaluate a model on GSM8k / MATH / MATH500 with the WizardMath protocol and evolkit's checker.

``evolkit eval --model M --bench gsm8k|math|math500 --backend vllm|openai|transformers`` generates one completion per
test problem (or ``--n`` samples), scores it with evolkit's answer checker *and* with the WizardMath paper's own
extraction (:mod:`evolkit.wizardmath_checker`), and writes summary.json, results.md, results.png and every sample
into its output folder (see :mod:`evolkit.eval.run`).

Protocol: ``--checker wizardmath`` (or ``both``) runs the paper's protocol exactly: its Alpaca CoT prompt (ending
``### Response: Let's think step by step.``, sent as raw text), its stop strings (``Instruction:``, ``Instruction``,
``Response:``, ``Response``), greedy decoding, 1024 (GSM8k) / 2048 (MATH) new tokens and its answer extraction. The
default checker (``evolkit``) keeps the same prompt but stops at evolkit's own strings (``### Instruction``,
``### Response``, a new template) and scores with math-verify. The report names the protocol that ran and every
setting where it departs from the paper's.

Prompt styles (``--prompt``): ``wizardmath`` (default; the WizardMath evaluation prompt), ``wizardmath-default`` (the
same without the CoT phrase), ``gsm8k-8shot`` (lm-eval-harness ``gsm8k_cot``: 8 exemplars as ``Q: ...\\nA: ...``),
``minerva`` (lm-eval-harness ``minerva_math``: 4 exemplars as ``Problem:\\n...\\n\\nSolution: ...``), ``chat``
(zero-shot through the model's chat template, asking for a ``\\boxed{}`` answer) or a path to a text file with
``{question}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .bench import BENCHMARKS, PROMPT_STYLES
from .run import EvalSettings, run_eval


def _kv(pairs: list[str]) -> dict[str, Any]:
    from ..config import parse_yaml

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
    p.add_argument("--backend", default="transformers", choices=["transformers", "vllm", "openai"])
    p.add_argument("--prompt", default="wizardmath",
                   help=f"{', '.join(PROMPT_STYLES)} or a text file with {{question}}")
    p.add_argument("--chat", action="store_true", help="send a --prompt file through the chat template (default: raw)")
    p.add_argument("--checker", default="evolkit", choices=["evolkit", "wizardmath", "both"],
                   help="headline score: evolkit's checker, the paper's extraction (wizardmath), or both side by side; "
                   "wizardmath and both also generate with the paper's stop strings (its protocol exactly)")
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
    p.add_argument("--stop", action="append",
                   help="stop string (repeatable; default: the paper's with --checker wizardmath/both, else the prompt "
                   "style's)")
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
