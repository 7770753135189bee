"""The ``evolkit`` command line: one command per stage plus ``run CONFIG.yaml``. No logic of its own."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from .errors import EvolkitError

RECIPES = Path(__file__).resolve().parent / "recipes"

#: Modules that add their own sub-commands (``add_commands(subparsers)``): publishing, review, evaluation ...
COMMAND_MODULES: list[str] = [
    "evolkit.eval.cli", "evolkit.contamination", "evolkit.publish.cli", "evolkit.review.cli", "evolkit.calibrate",
    "evolkit.rleif",
]

DESCRIPTION = """\
evolkit turns a few thousand math word problems into a large, verified training corpus (the WizardMath RLEIF recipe):

  seeds -> sft (teacher solves, answers verified) -> evolve (upward/downward Evol-Instruct rounds)
        -> irm / prm (judge rankings and step labels) -> review (Argilla) -> publish (Hub) -> trainers/

Every stage reads and writes one run folder (runs/<name>/ by default), so any stage can be resumed, re-run or inspected.
Start with `evolkit run` (the embedded default: a small sample, the SmolLM2-135M model on CPU), then write your own
config (see `evolkit recipes`).
"""


def _add_run_args(p: argparse.ArgumentParser, config_required: bool = False) -> None:
    p.add_argument("config", nargs=None if config_required else "?", help="YAML config (default: the embedded default recipe)")
    p.add_argument("-o", "--output-dir", help="run folder (default: the config's output_dir or runs/<name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in this run folder: what is written stays, nothing is sent twice, and items "
                        "whose requests failed (also in finished stages) are sent again. Without a config, the run's "
                        "own settings are used; a config that changes the data (seeds, sizes, k, sampling, prompts, "
                        "models) is refused")
    p.add_argument("--no-retry-failed", action="store_true",
                   help="with --resume: leave failed items of finished stages as they are")
    p.add_argument("--force", action="store_true",
                   help="redo the stages named (and every stage after them) from nothing, with this config; the request "
                        "cache still answers requests that were already answered")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set seeds.0.n=50 --set backend.kind=openai (YAML values)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.add_argument("--executor", choices=["local", "ray"], default=None,
                   help="where generation runs: this process (local, default) or shards over a Ray cluster (ray)")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="with --executor ray: the cluster to join (ray.init(address=...), e.g. auto or ray://head:10001)")


def load_run_config(args: argparse.Namespace) -> Any:
    from .config import RunConfig, apply_overrides, load_config, parse_override, validate
    from .errors import ConfigError
    from .store import RunStore

    overrides = dict(parse_override(item) for item in getattr(args, "set", []))
    if getattr(args, "executor", None):
        overrides["executor.kind"] = args.executor
    if getattr(args, "ray_address", None):
        overrides["executor.address"] = args.ray_address
    out = getattr(args, "output_dir", None)
    saved = Path(out) / "config.yaml" if out else None
    resuming = not args.config and getattr(args, "resume", False) and saved is not None
    if resuming and (saved.parent / "manifest.json").exists():
        if not saved.exists():
            raise ConfigError(f"{saved}: missing, so the run's settings are unknown; give the config the run was made "
                              f"with (evolkit run CONFIG -o {out} --resume)")
        base = RunStore(out, create=False).load_config()  # resuming: the run's own resolved config
        where = str(saved)
    else:
        path = Path(args.config) if args.config else RECIPES / "default.yaml"
        cfg0 = load_config(path)
        if not overrides:
            return cfg0
        base = cfg0.public_dict()
        where = "--set"
    cfg: RunConfig = validate(apply_overrides(base, overrides), where)
    return cfg


def _check_run_dir(cfg: Any, args: argparse.Namespace) -> Path:
    """The run folder: usable, and either new, or continued (--resume, same data settings) or redone (--force)."""
    from .pipeline import check_resume
    from .store import RunStore, check_output_folder, foreign_entries

    run_dir = Path(args.output_dir) if args.output_dir else cfg.run_dir
    if args.resume and args.force:
        raise EvolkitError("--resume and --force: choose one (continue the run, or redo its stages)")
    check_output_folder(run_dir, "run folder")
    manifest = run_dir / "manifest.json"
    if manifest.exists() and not (args.resume or args.force):
        raise EvolkitError(
            f"{run_dir} already holds a run. Use --resume to continue it, --force to redo its stages, "
            f"or -o to choose another folder."
        )
    if run_dir.is_dir() and not manifest.exists():
        # A folder without a manifest: a run killed before its first stage finished, or somebody's files.
        foreign = foreign_entries(run_dir)
        if foreign:
            raise EvolkitError(f"{run_dir}: not an evolkit run folder (it holds {', '.join(foreign[:5])}"
                               f"{' ...' if len(foreign) > 5 else ''}); choose a new or empty folder with -o")
        given = getattr(args, "config", None)
        if given and Path(given).resolve() == (run_dir / "config.yaml").resolve():
            raise EvolkitError(f"{given}: the run would replace this file with its resolved config; keep your config "
                               f"outside the run folder (or choose another -o)")
    if args.resume and not manifest.exists():
        print(f"evolkit: --resume: {run_dir} holds no run to resume (no manifest.json): starting a new run there",
              file=sys.stderr)
    if args.resume and manifest.exists():
        check_resume(cfg, RunStore(run_dir, create=False))
    return run_dir


def _summary_lines(summary: dict[str, Any], depth: int = 0) -> list[str]:
    """A stage summary as short "key: value" lines: numbers and short texts, nested counts one level down."""
    lines: list[str] = []
    for k, v in (summary or {}).items():
        if k in ("plots",) or isinstance(v, list):
            continue
        if isinstance(v, dict):
            flat = {a: b for a, b in v.items() if isinstance(b, (int, float, str)) and len(str(b)) < 40}
            if flat and depth == 0:
                lines.append(f"{k}: " + ", ".join(f"{a}={b}" for a, b in flat.items()))
            continue
        if isinstance(v, float):
            v = round(v, 3)
        if v is not None and len(str(v)) < 80:
            lines.append(f"{k}: {v}")
    return lines


def print_summary(results: dict[str, Any], seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    table = Table(title="evolkit run summary", show_lines=True)
    table.add_column("stage")
    table.add_column("result")
    for stage, s in results.items():
        if stage.startswith("_"):
            continue
        table.add_row(stage, "\n".join(_summary_lines(s)))
    console.print(table)
    for role, st in results.get("_backend", {}).items():
        console.print(
            f"backend {role}: {st['requests']} requests ({st['cached']} from cache, {st['failed']} failed, "
            f"{st['retries']} retries), tokens {st['prompt_tokens']} prompt / {st['completion_tokens']} completion"
        )
    console.print(f"time: {seconds:.1f} s; outputs in {results.get('_run_dir')}")


def cmd_run(args: argparse.Namespace, stages: list[str] | None = None) -> int:
    from .pipeline import run_all

    cfg = load_run_config(args)
    run_dir = _check_run_dir(cfg, args)
    if stages:
        for s in stages:
            if s not in cfg.stages and s != "seeds":
                from .stages import STAGE_CONFIGS

                cfg.stages[s] = STAGE_CONFIGS[s]()
    t0 = time.time()
    try:
        results = run_all(cfg, run_dir, force=args.force, stages=stages, show_progress=not args.no_progress,
                          retry_failed=not getattr(args, "no_retry_failed", False))
    except OSError as e:
        where = Path(e.filename) if e.filename else run_dir
        if where == run_dir or where in run_dir.parents or run_dir in where.parents:
            raise EvolkitError(f"{run_dir}: cannot make or write the run folder ({where}: {e.strerror or e})") from None
        raise EvolkitError(f"{where}: {e.strerror or e}") from None
    print_summary(results, time.time() - t0)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    for p in sorted(RECIPES.glob("*.yaml")):
        first = p.read_text().splitlines()[0].lstrip("# ").strip()
        print(f"{p}\n    {first}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .stages import STAGE_CONFIGS

    parser = argparse.ArgumentParser(prog="evolkit", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run every stage a config names (default: the embedded default recipe)")
    _add_run_args(p)
    p.set_defaults(func=cmd_run)

    for name, model in STAGE_CONFIGS.items():
        doc = (sys.modules[model.__module__].__doc__ or name).strip().splitlines()[0]
        p = sub.add_parser(name, help=f"run only the {name} stage: {doc}")
        _add_run_args(p)
        p.set_defaults(func=lambda a, _n=name: cmd_run(a, stages=[_n]))

    p = sub.add_parser("recipes", help="list the packaged example configs")
    p.set_defaults(func=cmd_recipes)

    import importlib

    for mod in COMMAND_MODULES:
        importlib.import_module(mod).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .settings import SecretFilter

    for handler in logging.getLogger().handlers:
        handler.addFilter(SecretFilter())
    for noisy in ("httpx", "openai", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except EvolkitError as e:
        from .pipeline import StageFailed
        from .store import scrub

        print(f"evolkit: error: {scrub(str(e))}", file=sys.stderr)
        return 1 if isinstance(e, StageFailed) else 2
    except KeyboardInterrupt:
        print("evolkit: interrupted; run again with --resume to continue", file=sys.stderr)
        return 130
    except BrokenPipeError:  # pragma: no cover
        os._exit(1)
    except OSError as e:
        if e.filename is None:
            raise
        # A file or folder that cannot be read or written (a path given, a full disk): the path, not a traceback.
        from .store import scrub

        print(f"evolkit: error: {scrub(str(e.filename))}: {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
