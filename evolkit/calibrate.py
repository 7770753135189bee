"""``evolkit calibrate prm [CONFIG]``: a judge against human labels.

The PRM step judge of a config (``judge_backend``, else ``backend``; the ``prm`` stage's judge settings) labels the steps
of a human-labelled set in PRM800K's stepwise-critique format (default: the shared PRM800K phase-1 test file), and the
labels are compared: accuracy, per-class precision/recall, Cohen's kappa, first-error-step F1 and a confusion table.
Results go to ``<run folder>/calibration/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .cli import load_run_config
    from .pipeline import Context
    from .settings import data_dir
    from .stages import prm
    from .store import check_output_folder

    cfg = load_run_config(args)
    prm_cfg = cfg.stages.get("prm") or prm.Config()
    path = Path(args.data) if args.data else data_dir() / "prm800k" / "phase1_test.stepwise-critic.jsonl"
    rows = prm.load_labelled_steps(path)
    check_output_folder(Path(args.output_dir) if args.output_dir else cfg.run_dir, "calibration folder")
    if args.problems is not None:
        order: list[str] = []
        for r in rows:
            if r["instruction"] not in order:
                order.append(r["instruction"])
        keep = set(order[: args.problems])
        rows = [r for r in rows if r["instruction"] in keep]
    if args.limit is not None:
        rows = rows[: args.limit]
    run_dir = Path(args.output_dir) if args.output_dir else cfg.run_dir
    with Context.open(cfg, run_dir, show_progress=not args.no_progress) as ctx:

        report = prm.calibrate(ctx.backend("judge"), rows, prm_cfg, ctx.sampling(prm_cfg.judge_sampling),
                               neutral_as=args.neutral_as, show_progress=not args.no_progress)
        report["data"] = str(path)
        report["judge"] = ctx.backend("judge").model
        preds = report.pop("predictions")
        ctx.store.finish("calibration", {"predictions": preds}, report)
    print_calibration(report)
    print(f"details: {run_dir / 'calibration'}")
    return 0


def print_calibration(rep: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from .metrics import fmt

    con = Console()
    con.print(f"step judge [bold]{rep.get('judge')}[/bold] on {rep.get('data')}: {rep['judged']} of {rep['rows']} "
              f"labelled steps judged ({sum(rep['parse_failures'].values())} unparseable answers: "
              f"{rep['parse_failures'] or 'none'}); neutral counts as {rep['neutral_as']}")
    t = Table(title="judge vs human step labels")
    for c in ("label", "precision", "recall", "F1", "human count", "judge count"):
        t.add_column(c)
    for lab, d in rep["per_class"].items():
        t.add_row(lab, fmt(d["precision"]), fmt(d["recall"]), fmt(d["f1"]), str(d["support"]), str(d["predicted"]))
    con.print(t)
    fe = rep["first_error"]
    con.print(f"accuracy {fmt(rep['accuracy'])}  kappa {fmt(rep['kappa'])}  first-error-step F1 {fmt(fe['f1'])} "
              f"(exact on erroneous {fmt(fe['acc_error'])} of {fe['n_error']}, on error-free {fmt(fe['acc_correct'])} "
              f"of {fe['n_correct']})")
    cm = rep["confusion"]
    con.print("confusion (rows human, columns judge): " + "; ".join(
        f"{t_}: " + ", ".join(f"{p}={n}" for p, n in row.items()) for t_, row in cm.items()))
    if "confusion3" in rep:
        con.print(f"3-way accuracy {fmt(rep['accuracy3'])}; confusion3 {rep['confusion3']}")


def add_commands(sub: Any) -> None:
    from .cli import _add_run_args

    p = sub.add_parser("calibrate", help="score a judge against human labels (the PRM step judge vs PRM800K)")
    cs = p.add_subparsers(dest="calibrate_command", metavar="JUDGE")
    cs.required = True
    pp = cs.add_parser("prm", help="the PRM step judge vs human step labels (PRM800K stepwise-critique format)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_args(pp)
    pp.add_argument("--data", help="labelled steps in PRM800K stepwise-critique format (.jsonl/.parquet; default: "
                                   "the shared PRM800K phase-1 test file)")
    pp.add_argument("--limit", type=int, help="only the first N labelled steps")
    pp.add_argument("--problems", type=int, help="only the steps of the first N problems")
    pp.add_argument("--neutral-as", choices=["correct", "incorrect"], help="binarise neutral (0) ratings and labels")
    pp.set_defaults(func=cmd_calibrate)
