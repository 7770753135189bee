"""``evolkit review push|pull|serve``.

    evolkit review serve                                   # a local Argilla (redis + osmem + SQLite); prints logins
    export ARGILLA_API_URL=... ARGILLA_API_KEY=...         # or any Argilla 2.x deployment
    evolkit review push runs/my-run --dataset irm          # create/update the review dataset (idempotent)
    evolkit review push runs/my-run --dataset prm --budget 200   # only the 200 least certain solutions
    ... reviewers answer in the web UI ...
    evolkit review pull runs/my-run --dataset all          # resolve answers -> runs/my-run/review/*, agreement

Pull writes the reviewed datasets into the run store as stage ``review`` (outputs ``irm_rankings``, ``irm_pairs``,
``prm``, plus the logs ``irm_review`` / ``prm_review`` / ``prm_steps`` and every answer pulled so far in
``irm_answers`` / ``prm_answers``); the publisher prefers them to the model-labelled ones.
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


def build_items(store: Any, kind: str, labeller: str = "judge", layout: str = "solution") -> list[adapter.ReviewItem]:
    """Every review item of ``kind`` in the run, least certain first (``review_order`` 1, 2, ...)."""
    if kind == "irm":
        return adapter.irm_items(_load_output(store, "irm", "irm_rankings"), problem_index(store))
    examples = _load_output(store, "prm", "prm")
    judgements = store.load("prm", "judgements") if store.has_output("prm", "judgements") else []
    if not any(e["labeller"] == labeller for e in examples):
        raise EvolkitError(f"{store.root}: prm has no rows labelled by {labeller!r} (labellers: "
                           f"{sorted({e['labeller'] for e in examples})})")
    make = adapter.prm_solution_items if layout == "solution" else adapter.prm_items
    return make(examples, judgements, problem_index(store), labeller=labeller)


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
    from . import priority

    store = open_store(args.run_dir)
    be = _backend(args)
    budget = args.budget if args.budget is not None else args.limit
    if budget is not None and budget < 1:
        raise EvolkitError(f"--budget must be at least 1, got {budget}")
    for kind in _kinds(args.dataset):
        labeller = args.labeller
        name = args.name if args.name and args.dataset != "all" else (
            f"{args.name}-{kind}" if args.name else default_dataset_name(store, kind))
        state_file = _state_path(store, kind)
        old = json.loads(state_file.read_text()) if state_file.exists() else {}
        layout = None
        if kind == "prm":  # pushing again to a dataset keeps its layout unless one is asked for
            layout = args.prm_layout or (old.get("layout", "step") if old.get("dataset") == name else "solution")
        items = build_items(store, kind, labeller, layout or "solution")
        chosen = priority.select(items, budget)
        sent = priority.summary(items, chosen, budget)
        allow_neutral = stage_config(store, "prm").allow_neutral if kind == "prm" else True
        res = be.push(kind, chosen, dataset=name, workspace=args.workspace, min_submitted=args.min_submitted,
                      allow_neutral=allow_neutral, layout=layout or "solution")
        same = old.get("dataset") == res.dataset and old.get("layout") == layout
        state = {"dataset": res.dataset, "workspace": res.workspace, "url": res.url, "labeller": labeller,
                 "layout": layout, "items": len(chosen), "records_on_server": res.total,
                 # the records ever sent to this dataset: a smaller budget later does not unsend earlier ones
                 "sent": max(sent["pushed"], old.get("sent", 0) if same else 0), "available": sent["available"],
                 "budget": budget, "selection": sent["selection"], "reasons": sent["reasons"],
                 "min_submitted": args.min_submitted,
                 "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        state_file.write_text(json.dumps(state, indent=2))
        what = "created" if res.dataset_created else "updated"
        unit = "solutions" if layout == "solution" else "rankings" if kind == "irm" else "solutions (by step)"
        print(f"{kind}: dataset {res.dataset!r} ({what}) in workspace {res.workspace!r}: {res.created} new records, "
              f"{res.updated} updated, {res.total} in total")
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(sent["reasons"].items(), key=lambda kv: -kv[1]))
        print(f"  sent {sent['pushed']} of {sent['available']} {unit}, {sent['selection']}"
              + (f" ({reasons})" if reasons else ""))
        print(f"  least certain first: {res.url}")
    return 0


# ---------------------------------------------------------------------------------------------------------- pull
OUTPUT_NAMES = {"irm": ("irm_rankings", "irm_pairs", "irm_review", "irm_answers"),
                "prm": ("prm", "prm_steps", "prm_review", "prm_answers")}


def pull(store: Any, be: Any, kinds: list[str], name: str | None = None, workspace: str | None = None,
         plot: bool = True) -> dict[str, Any]:
    """Pull, merge into the answers pulled earlier (:mod:`evolkit.review.ledger`), resolve and write the reviewed
    datasets of ``kinds`` into ``store`` (stage ``review``); returns the reports by kind. Outputs of a kind not pulled
    now are kept from an earlier pull."""
    from . import ledger, resolve

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    outputs: dict[str, list[dict[str, Any]]] = {}
    reports: dict[str, Any] = {}
    prev = store.stage_info("review").get("summary", {}) if store.is_done("review") else {}
    for kind in adapter.KINDS:
        if kind in kinds or kind not in prev:
            continue
        outputs.update({n: store.load("review", n) for n in OUTPUT_NAMES[kind] if store.has_output("review", n)})
        reports[kind] = prev[kind]
    for kind in kinds:
        state_file = _state_path(store, kind)
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        dataset = name or state.get("dataset") or default_dataset_name(store, kind)
        ws = workspace or state.get("workspace")
        labeller = state.get("labeller", "judge")
        # a push before layouts existed had one record per step
        layout = state.get("layout", "step" if state else "solution") if kind == "prm" else None
        items = build_items(store, kind, labeller, layout or "solution")
        pulled = be.pull(kind, dataset=dataset, workspace=ws)
        answers_name = OUTPUT_NAMES[kind][-1]
        earlier = store.load("review", answers_name) if store.has_output("review", answers_name) else []
        if earlier and earlier[0].get("dataset") not in (None, dataset):
            earlier = []  # answers to another dataset (pushed under another name) are not this one's
        merged, counts = ledger.merge([{k: v for k, v in r.items() if k != "dataset"} for r in earlier], pulled, now)
        answered = ledger.responses(merged)
        if kind == "irm":
            cfg = stage_config(store, "irm")
            res = resolve.resolve_irm(store.load("irm", "irm_rankings"), items, answered, cfg.pair_margin)
        elif layout == "solution":
            res = resolve.resolve_prm_solutions(store.load("prm", "prm"), items, answered, labeller)
        else:
            cfg = stage_config(store, "prm")
            res = resolve.resolve_prm(store.load("prm", "prm"), items, answered, labeller, cfg.neutral_as)
        report = res.pop("report")
        report.update(dataset=dataset, workspace=ws, pulled_records=len(pulled), answers=counts,
                      sent=state.get("sent"), available=state.get("available"), selection=state.get("selection"),
                      budget=state.get("budget"), pulled_at=now)
        if plot:
            report["plot"] = resolve.plot_agreement(report, kind, store.stage_dir("review") / f"agreement_{kind}.png")
        res[answers_name] = [{**r, "dataset": dataset} for r in merged]
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
        if kind == "irm" or reports[kind].get("layout") == "solution":  # per-step records: see prm_steps
            log_name = "irm_review" if kind == "irm" else "prm_review"
            print_multi(kind, store.load("review", log_name))
    print(f"reviewed datasets written to {store.root / 'review'}")
    return 0


def print_multi(kind: str, log: list[dict[str, Any]], limit: int = 20) -> None:
    """The records answered by two or more reviewers, one line each: every answer, the record's agreement and how it
    was resolved (least agreement first)."""
    from ..metrics import fmt

    rows = [r for r in log if len(r.get("reviewers") or []) >= 2]
    if not rows:
        return
    print(f"{kind.upper()} records answered by several reviewers ({len(rows)}): answers | agreement | resolved (how)")
    rows.sort(key=lambda r: (r.get("agreement") if r.get("agreement") is not None else 2.0, r["id"]))
    for r in rows[:limit]:
        if kind == "irm":
            answers = "; ".join(f"{u}: " + " > ".join(v for v, _ in sorted(rk.items(), key=lambda kv: (kv[1], kv[0])))
                                for u, rk in sorted((r.get("rankings") or {}).items()))
            hr = r.get("human_ranking") or {}
            resolved = " ".join(f"{v}={n}" for v, n in sorted(hr.items(), key=lambda kv: (kv[1], kv[0])))
        else:
            answers = "; ".join(f"{u}: {_fe(v)}" for u, v in sorted((r.get("answers") or {}).items()))
            resolved = _fe(r.get("first_error"))
        flag = ", flagged" if r.get("flagged") else ""
        print(f"  {r['id']}  {answers} | agreement {fmt(r.get('agreement'))} | {resolved} "
              f"({r.get('resolution')}{flag})")
    if len(rows) > limit:
        print(f"  ... {len(rows) - limit} more in review/{'irm_review' if kind == 'irm' else 'prm_review'}")


def _fe(v: Any) -> str:
    return "-" if v is None else "no incorrect step" if int(v) == 0 else f"step {int(v)}"


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
    elif rep.get("layout") == "solution":
        con.print(f"[bold]PRM[/bold] {rep['dataset']}: {rep['solutions']} solutions: {rep['human_solutions']} "
                  f"reviewed, {rep['model_solutions']} model only, {rep['excluded_solutions']} discarded, "
                  f"{rep['flagged']} flagged (tied); {rep['stale_responses']} stale, {rep['draft_responses']} draft "
                  f"and {rep['invalid_answers']} invalid answers ignored")
        t = Table(title="PRM agreement (unit: a solution's first incorrect step, none / 1 / 2 ...)")
        for c in ("who", "solutions", "agreement", "kappa"):
            t.add_column(c)
        for p in rep["annotators"]:
            t.add_row(f"{p['a']} vs {p['b']}", str(p["solutions"]), fmt(p["agreement"]), fmt(p["kappa"]))
        jh = rep["judge_vs_human"]
        t.add_row("judge vs resolved humans", str(jh["solutions"]), fmt(jh["first_error_accuracy"]), "")
        for u, d in rep["judge_vs_annotator"].items():
            t.add_row(f"judge vs {u}", str(d["solutions"]), fmt(d["agreement"]), fmt(d["kappa"]))
        con.print(t)
        con.print(f"judge vs humans on the {jh['steps']} labelled steps: accuracy {fmt(jh['accuracy'])}, kappa "
                  f"{fmt(jh['kappa'])}; first-error F1 {fmt(jh['first_error']['f1'])}")
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
        t.add_row("judge vs resolved humans", str(jh["steps"]), fmt(jh["accuracy"]), fmt(jh["kappa"]),
                  fmt(jh["kappa3"]))
        for u, d in rep["judge_vs_annotator"].items():
            t.add_row(f"judge vs {u}", str(d["steps"]), fmt(d["agreement"]), fmt(d["kappa"]), fmt(d["kappa3"]))
        con.print(t)
        pc = jh["per_class"]
        fe = jh["first_error"]
        con.print("judge vs humans: " + ", ".join(
            f"{lab} precision {fmt(pc[lab]['precision'])} recall {fmt(pc[lab]['recall'])}" for lab in pc)
            + f"; first-error F1 {fmt(fe['f1'])} on {fe['n_error'] + fe['n_correct']} fully reviewed solutions")
    if rep.get("answers"):
        a = rep["answers"]
        print(f"answers: {a['new']} new, {a['changed']} changed, {a['unchanged']} unchanged since the last pull, "
              f"{a['kept_from_earlier_pull']} kept from an earlier pull (no longer on the server)")
    if rep.get("sent") is not None:
        print(f"sent to review: {rep['sent']} of {rep['available']} ({rep['selection']})")
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
    pp.add_argument("--budget", type=int, metavar="N",
                    help="send only the N records the judge is least sure of (IRM rankings, PRM solutions): low "
                         "confidence, swapped-order or judge vs Monte-Carlo disagreement; default: all")
    pp.add_argument("--limit", type=int, help=argparse.SUPPRESS)  # the earlier name of --budget
    pp.add_argument("--labeller", default="judge", choices=["judge", "montecarlo"], help="which PRM labels to review")
    pp.add_argument("--prm-layout", choices=list(adapter.PRM_LAYOUTS),
                    help="PRM records: one per solution with a 'first incorrect step' question (default for a new "
                         "dataset), or one per step with a correct/incorrect/neutral label (default: the dataset's)")
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
