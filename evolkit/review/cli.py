"""``evolkit review push|pull|serve`` and ``evolkit prm calibrate``.

    evolkit review serve                                   # a local Argilla (redis + osmem + SQLite); prints logins
    export ARGILLA_API_URL=... ARGILLA_API_KEY=...         # or any Argilla 2.x deployment
    evolkit review push runs/my-run --dataset irm          # create/update the review dataset (idempotent)
    evolkit review push runs/my-run --dataset prm
    ... reviewers answer in the web UI ...
    evolkit review pull runs/my-run --dataset all          # resolve answers -> runs/my-run/review/*, agreement
    evolkit prm calibrate my.yaml                          # judge vs PRM800K human step labels

Pull writes the reviewed datasets into the run store as stage ``review`` (outputs ``irm_rankings``, ``irm_pairs``,
``prm``, plus the logs ``irm_review`` / ``prm_steps``); the publisher prefers them to the model-labelled ones.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import EvolkitError
from . import adapter


# ---------------------------------------------------------------------------------------------------------- helpers
def open_store(run_dir: str) -> Any:
    from ..store import RunStore

    p = Path(run_dir)
    if not (p / "manifest.json").exists():
        raise EvolkitError(f"{p}: not a run folder (no manifest.json); give the folder of a run (-o of `evolkit run`)")
    store = RunStore(p)
    store.manifest()  # a damaged manifest fails here, before any server is contacted
    return store


def _load_output(store: Any, stage: str, name: str) -> list[dict[str, Any]]:
    if not store.is_done(stage) or not store.has_output(stage, name):
        raise EvolkitError(f"{store.root}: stage {stage!r} has no output {name!r}: run `evolkit {stage} ... -o "
                           f"{store.root} --resume` first")
    return store.load(stage, name)


def stage_config(store: Any, stage: str) -> Any:
    """The run's config of ``stage`` (its defaults when the run did not configure it)."""
    import importlib

    mod = importlib.import_module(f"evolkit.stages.{stage}")
    data = (store.load_config().get("stages") or {}).get(stage) or {}
    return mod.Config.model_validate(data)


def problem_index(store: Any) -> dict[str, dict[str, Any]]:
    idx: dict[str, dict[str, Any]] = {}
    for stage, name in (("evolve", "problems"), ("seeds", "problems")):
        if store.has_output(stage, name):
            idx.update({r["id"]: r for r in store.load(stage, name)})
    return idx


def default_dataset_name(store: Any, kind: str) -> str:
    name = store.load_config().get("name") or store.root.name
    return re.sub(r"[^A-Za-z0-9_-]+", "-", f"{name}-{kind}").strip("-")


def build_items(store: Any, kind: str, labeller: str = "judge") -> list[adapter.ReviewItem]:
    if kind == "irm":
        return adapter.irm_items(_load_output(store, "irm", "irm_rankings"), problem_index(store))
    examples = _load_output(store, "prm", "prm")
    judgements = store.load("prm", "judgements") if store.has_output("prm", "judgements") else []
    if not any(e["labeller"] == labeller for e in examples):
        raise EvolkitError(f"{store.root}: prm has no rows labelled by {labeller!r} (labellers: "
                           f"{sorted({e['labeller'] for e in examples})})")
    return adapter.prm_items(examples, judgements, problem_index(store), labeller=labeller)


def _state_path(store: Any, kind: str) -> Path:
    return store.stage_dir("review") / f"push_{kind}.json"


def _backend(args: argparse.Namespace) -> Any:
    from .argilla_backend import ArgillaReview, connection

    conn = connection(args.api_url, workspace=args.workspace, api_key_env=args.api_key_env)
    try:
        return ArgillaReview(conn)
    except ImportError:
        raise EvolkitError("the Argilla SDK is not installed: pip install 'evolkit[review]'") from None


def _kinds(value: str) -> list[str]:
    return list(adapter.KINDS) if value == "all" else [value]


# ---------------------------------------------------------------------------------------------------------- push
def cmd_push(args: argparse.Namespace) -> int:
    store = open_store(args.run_dir)
    be = _backend(args)
    for kind in _kinds(args.dataset):
        labeller = args.labeller
        items = build_items(store, kind, labeller)
        if args.limit is not None:
            items = _limit(items, kind, args.limit)
        name = args.name if args.name and args.dataset != "all" else (
            f"{args.name}-{kind}" if args.name else default_dataset_name(store, kind))
        allow_neutral = stage_config(store, "prm").allow_neutral if kind == "prm" else True
        res = be.push(kind, items, dataset=name, workspace=args.workspace, min_submitted=args.min_submitted,
                      allow_neutral=allow_neutral)
        state = {"dataset": res.dataset, "workspace": res.workspace, "url": res.url, "labeller": labeller,
                 "items": len(items), "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _state_path(store, kind).write_text(json.dumps(state, indent=2))
        what = "created" if res.dataset_created else "updated"
        print(f"{kind}: dataset {res.dataset!r} ({what}) in workspace {res.workspace!r}: {res.created} new records, "
              f"{res.updated} updated, {res.total} in total")
        print(f"  {res.url}")
    return 0


def _limit(items: list[adapter.ReviewItem], kind: str, n: int) -> list[adapter.ReviewItem]:
    """The first ``n`` records (IRM) or all steps of the first ``n`` solutions (PRM)."""
    if kind == "irm":
        return items[:n]
    keep: list[str] = []
    for it in items:
        sid = it.metadata["solution"]
        if sid not in keep:
            keep.append(sid)
    chosen = set(keep[:n])
    return [it for it in items if it.metadata["solution"] in chosen]


# ---------------------------------------------------------------------------------------------------------- pull
def pull(store: Any, be: Any, kinds: list[str], name: str | None = None, workspace: str | None = None,
         plot: bool = True) -> dict[str, Any]:
    """Pull, resolve and write the reviewed datasets of ``kinds`` into ``store`` (stage ``review``); returns the
    agreement reports by kind. Outputs of a kind not pulled now are kept from an earlier pull."""
    from . import resolve

    outputs: dict[str, list[dict[str, Any]]] = {}
    reports: dict[str, Any] = {}
    prev = store.stage_info("review").get("summary", {}) if store.is_done("review") else {}
    names = {"irm": ("irm_rankings", "irm_pairs", "irm_review"), "prm": ("prm", "prm_steps")}
    for kind in adapter.KINDS:
        if kind in kinds:
            continue
        if all(store.has_output("review", n) for n in names[kind]) and kind in prev:
            outputs.update({n: store.load("review", n) for n in names[kind]})
            reports[kind] = prev[kind]
    for kind in kinds:
        state_file = _state_path(store, kind)
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        dataset = name or state.get("dataset") or default_dataset_name(store, kind)
        ws = workspace or state.get("workspace")
        labeller = state.get("labeller", "judge")
        items = build_items(store, kind, labeller)
        pulled = be.pull(kind, dataset=dataset, workspace=ws)
        if kind == "irm":
            cfg = stage_config(store, "irm")
            res = resolve.resolve_irm(store.load("irm", "irm_rankings"), items, pulled, cfg.pair_margin)
        else:
            cfg = stage_config(store, "prm")
            res = resolve.resolve_prm(store.load("prm", "prm"), items, pulled, labeller, cfg.neutral_as)
        report = res.pop("report")
        report.update(dataset=dataset, workspace=ws, pulled_records=len(pulled),
                      pulled_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if plot:
            report["plot"] = resolve.plot_agreement(report, kind, store.stage_dir("review") / f"agreement_{kind}.png")
        outputs.update(res)
        reports[kind] = report
    store.finish("review", outputs, reports)
    return reports


def cmd_pull(args: argparse.Namespace) -> int:
    store = open_store(args.run_dir)
    be = _backend(args)
    kinds = _kinds(args.dataset)
    if args.dataset == "all":
        kinds = [k for k in kinds if _state_path(store, k).exists()] or kinds
    reports = pull(store, be, kinds, args.name if args.dataset != "all" else None, args.workspace, not args.no_plot)
    for kind in kinds:
        print_report(kind, reports[kind])
    print(f"reviewed datasets written to {store.root / 'review'}")
    return 0


def print_report(kind: str, rep: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..metrics import fmt

    con = Console()
    if kind == "irm":
        con.print(f"[bold]IRM[/bold] {rep['dataset']}: {rep['records']} rankings: {rep['human']} reviewed, "
                  f"{rep['model']} model only, {rep['excluded']} discarded, {rep['flagged']} flagged (tied); "
                  f"{rep['stale_responses']} stale and {rep['draft_responses']} draft answers ignored")
        jh = rep["judge_vs_human"]
        t = Table(title="IRM agreement (unit: a pair of versions; first better / second better / tie)")
        for c in ("who", "records", "units", "agreement", "kappa"):
            t.add_column(c)
        for p in rep["annotators"]:
            t.add_row(f"{p['a']} vs {p['b']}", str(p["records"]), str(p["units"]), fmt(p["agreement"]), fmt(p["kappa"]))
        t.add_row("judge vs resolved humans", str(jh["records"]), str(jh["pair_units"]), fmt(jh["pair_accuracy"]),
                  fmt(jh["kappa"]))
        for u, d in rep["judge_vs_annotator"].items():
            t.add_row(f"judge vs {u}", str(d["records"]), str(d["units"]), fmt(d["agreement"]), fmt(d["kappa"]))
        con.print(t)
        con.print(f"judge vs resolved humans: exact ranking {fmt(jh['exact_ranking'])}, top-1 {fmt(jh['top1'])}")
    else:
        con.print(f"[bold]PRM[/bold] {rep['dataset']}: {rep['solutions']} solutions: {rep['human_solutions']} fully "
                  f"reviewed, {rep['partial_solutions']} partly, {rep['model_solutions']} model only, "
                  f"{rep['excluded_solutions']} discarded; steps {rep['steps']}, {rep['flagged_steps']} flagged (tied)")
        t = Table(title="PRM agreement (unit: a step)")
        for c in ("who", "steps", "agreement", "kappa (binary)", "kappa (3-way)"):
            t.add_column(c)
        for p in rep["annotators"]:
            t.add_row(f"{p['a']} vs {p['b']}", str(p["steps"]), fmt(p["agreement"]), fmt(p["kappa"]), fmt(p["kappa3"]))
        jh = rep["judge_vs_human"]
        t.add_row("judge vs resolved humans", str(jh["steps"]), fmt(jh["accuracy"]), fmt(jh["kappa"]), fmt(jh["kappa3"]))
        for u, d in rep["judge_vs_annotator"].items():
            t.add_row(f"judge vs {u}", str(d["steps"]), fmt(d["agreement"]), fmt(d["kappa"]), fmt(d["kappa3"]))
        con.print(t)
        pc = jh["per_class"]
        fe = jh["first_error"]
        con.print("judge vs humans: " + ", ".join(
            f"{lab} precision {fmt(pc[lab]['precision'])} recall {fmt(pc[lab]['recall'])}" for lab in pc)
            + f"; first-error F1 {fmt(fe['f1'])} on {fe['n_error'] + fe['n_correct']} fully reviewed solutions")
    if rep.get("plot"):
        con.print(f"plot: {rep['plot']}")


# ---------------------------------------------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    from .server import DEFAULT_REVIEWERS, DEFAULT_WORKSPACE, REPO_DIR, ArgillaServerError, LocalArgilla

    workdir = args.workdir or str(REPO_DIR / ".cache" / "argilla-data")
    srv = LocalArgilla(workdir, args.port, reviewers=args.reviewer or DEFAULT_REVIEWERS,
                       workspace=args.workspace or DEFAULT_WORKSPACE, startup_timeout=args.timeout)
    stop = {"now": False}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["now"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    print(f"starting the local Argilla stack in {srv.workdir} (first start: a minute or two) ...", flush=True)
    try:
        try:
            srv.start()
        except ArgillaServerError as e:
            raise EvolkitError(str(e)) from None
        print(f"Argilla is up: {srv.url}", flush=True)
        print(f"  owner login:  {srv.owner[0]} / {srv.owner[1]}")
        for u, p in srv.reviewers:
            print(f"  reviewer:     {u} / {p}   (workspace {srv.workspace})")
        print("  for evolkit review push/pull, in another terminal:")
        print(f"    export ARGILLA_API_URL={srv.url}")
        print(f"    export ARGILLA_API_KEY={srv.api_key}")
        print(f"  data and logs: {srv.workdir} (kept for the next start); Ctrl-C stops the server", flush=True)
        while not stop["now"]:
            if not srv.running:
                print("error: a server process exited; see the logs in the workdir", file=sys.stderr)
                return 1
            time.sleep(0.5)
        print("stopping ...", flush=True)
        return 0
    finally:
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        srv.stop()
        for s, h in old.items():
            signal.signal(s, h)
        if srv.port is not None:
            print("stopped", flush=True)


# ---------------------------------------------------------------------------------------------------------- calibrate
def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..cli import load_run_config
    from ..pipeline import Context
    from ..settings import data_dir
    from ..stages import prm
    from ..store import check_output_folder

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

    from ..metrics import fmt

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


# ---------------------------------------------------------------------------------------------------------- parsers
def _conn_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api-url", help="Argilla URL (default: $ARGILLA_API_URL)")
    p.add_argument("--api-key-env", default="ARGILLA_API_KEY", help="environment variable holding the API key")
    p.add_argument("--workspace", help="Argilla workspace (default: $ARGILLA_WORKSPACE, else 'evolkit' or the first)")


def add_commands(sub: Any) -> None:
    p = sub.add_parser("review", help="human review in Argilla: push model labels, pull reviewed datasets, serve")
    rs = p.add_subparsers(dest="review_command", metavar="ACTION")
    rs.required = True

    pp = rs.add_parser("push", help="create or update the review dataset (idempotent: records are keyed by id)")
    pp.add_argument("run_dir", help="run folder")
    pp.add_argument("--dataset", choices=["irm", "prm", "all"], required=True)
    pp.add_argument("--name", help="dataset name (default: <run name>-<irm|prm>)")
    pp.add_argument("--min-submitted", type=int, default=1,
                    help="answers needed before Argilla marks a record completed (2+ for double annotation)")
    pp.add_argument("--limit", type=int, help="push only the first N rankings (irm) or solutions (prm)")
    pp.add_argument("--labeller", default="judge", choices=["judge", "montecarlo"], help="which PRM labels to review")
    _conn_args(pp)
    pp.set_defaults(func=cmd_push)

    pl = rs.add_parser("pull", help="read answers, resolve them, write reviewed datasets and agreement")
    pl.add_argument("run_dir", help="run folder")
    pl.add_argument("--dataset", choices=["irm", "prm", "all"], default="all")
    pl.add_argument("--name", help="dataset name (default: the one pushed)")
    pl.add_argument("--no-plot", action="store_true", help="skip the agreement plot")
    _conn_args(pl)
    pl.set_defaults(func=cmd_pull)

    ps = rs.add_parser("serve", help="run a local Argilla server (the one the tests use) until Ctrl-C")
    ps.add_argument("--workdir", help="database, credentials and logs (default: <repo>/.cache/argilla-data)")
    ps.add_argument("--port", type=int, help="HTTP port (default: a free one)")
    ps.add_argument("--reviewer", action="append", help="reviewer username (repeatable; default reviewer1, reviewer2)")
    ps.add_argument("--workspace", help="workspace the reviewers join (default: evolkit)")
    ps.add_argument("--timeout", type=float, default=300.0, help="startup timeout in seconds")
    ps.set_defaults(func=cmd_serve)

    # `evolkit prm calibrate [CONFIG]` shares the `prm` command with the stage (`evolkit prm [CONFIG]`).
    prm_p = sub.choices.get("prm")
    if prm_p is None:
        return
    prm_p.usage = "evolkit prm [CONFIG] [options]  |  evolkit prm calibrate [CONFIG] [--data FILE] [options]"
    prm_p.add_argument("calibrate_config", nargs="?", help=argparse.SUPPRESS)
    g = prm_p.add_argument_group("calibrate (evolkit prm calibrate [CONFIG]): the step judge vs human step labels")
    g.add_argument("--data", help="labelled steps in PRM800K stepwise-critique format (.jsonl/.parquet; default: "
                                  "the shared PRM800K phase-1 test file)")
    g.add_argument("--limit", type=int, help="only the first N labelled steps")
    g.add_argument("--problems", type=int, help="only the steps of the first N problems")
    g.add_argument("--neutral-as", choices=["correct", "incorrect"], help="binarise neutral (0) ratings and labels")
    run_stage = prm_p.get_default("func")

    def dispatch(args: argparse.Namespace) -> int:
        if args.config == "calibrate":
            args.config = args.calibrate_config
            return cmd_calibrate(args)
        if args.calibrate_config is not None or any(
                getattr(args, k) is not None for k in ("data", "limit", "problems", "neutral_as")):
            raise EvolkitError("evolkit prm: --data/--limit/--problems/--neutral-as and a second argument belong to "
                               "`evolkit prm calibrate`")
        return run_stage(args)

    prm_p.set_defaults(func=dispatch)
