"""Review round trip on a real local Argilla 2.8 server (session fixture ``argilla_server``, tests/plugins/).

evolkit pushes the IRM and PRM datasets of a deterministic run with the CLI (``evolkit review push``); two annotators
answer the way the web UI does (log in at ``POST /api/v1/token``, find their records, ``POST
/api/v1/records/{id}/responses``), agreeing on some records, disagreeing on others, discarding and leaving drafts;
``evolkit review pull`` resolves the answers and writes the reviewed datasets into the run store.

Which behaviour comes from osmem (the in-memory OpenSearch-compatible engine the local stack runs) rather than a real
OpenSearch:

* the annotators find their records with ``POST /api/v1/me/datasets/{id}/records/search`` (empty query, the
  ``pending`` filter): that search, its per-user response scope and its record-status filter are osmem's;
* every response the annotators create is indexed by Argilla's scriptless engine (osmem refuses Painless scripts), so
  the record status Argilla computes from ``min_submitted`` (``completed`` after two answers) is read back from osmem;
* evolkit's own push and pull do NOT use search: ``records.log`` upserts by external id into SQLite and pull lists
  records with ``GET /api/v1/datasets/{id}/records`` (database order and pagination), so the figures checked here do
  not depend on search scoring or ordering.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from evolkit.review import ledger, priority
from evolkit.review.adapter import ItemResponses, Response, irm_items, prm_items, prm_solution_items
from evolkit.review.markdown import fold_figures, numbered_steps
from evolkit.review.resolve import resolve_irm, resolve_prm, resolve_prm_solutions
from tests.test_irm_prm import RUN_CONFIG, build_run

REVIEW_CONFIG = json.loads(json.dumps(RUN_CONFIG))
REVIEW_CONFIG["name"] = "review"
REVIEW_CONFIG["stages"]["irm"] = {"n_instructions": 16, "variants_per_evolver": 2}
REVIEW_CONFIG["stages"]["prm"] = {"sources": ["sft", "evolve"], "labellers": ["judge", "montecarlo"], "rollouts": 2,
                                  "max_solutions": 10}


def flip(label: str) -> str:
    return "incorrect" if label == "correct" else "correct"


def kappa(a: list, b: list) -> float:
    """Cohen's kappa written out here, independent of evolkit.metrics."""
    n = len(a)
    po = sum(x == y for x, y in zip(a, b)) / n
    labels = set(a) | set(b)
    pe = sum((a.count(k) / n) * (b.count(k) / n) for k in labels)
    return (po - pe) / (1 - pe)


def pair_units(rank: dict[str, int]) -> list[str]:
    ids = sorted(rank)
    return ["a" if rank[x] < rank[y] else "b" if rank[y] < rank[x] else "tie"
            for i, x in enumerate(ids) for y in ids[i + 1:]]


class Annotator:
    """A reviewer using the REST API as the Argilla web UI does."""

    def __init__(self, url: str, username: str, password: str):
        self.url = url.rstrip("/")
        self.http = requests.Session()
        r = self.http.post(f"{self.url}/api/v1/token", data={"username": username, "password": password}, timeout=30)
        assert r.status_code == 201, r.text
        self.http.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
        self.username = username

    def records(self, dataset_id: str) -> dict[str, str]:
        """external id -> record id of the records this reviewer sees (osmem search, like the UI's queue)."""
        r = self.http.post(f"{self.url}/api/v1/me/datasets/{dataset_id}/records/search", json={},
                           params={"limit": 1000}, timeout=60)
        assert r.status_code == 200, r.text
        return {i["record"]["external_id"]: i["record"]["id"] for i in r.json()["items"]}

    def pending(self, dataset_id: str) -> set[str]:
        body = {"filters": {"and": [{"type": "terms", "scope": {"entity": "response", "property": "status"},
                                     "values": ["pending"]}]}}
        r = self.http.post(f"{self.url}/api/v1/me/datasets/{dataset_id}/records/search", json=body,
                           params={"limit": 1000}, timeout=60)
        assert r.status_code == 200, r.text
        return {i["record"]["external_id"] for i in r.json()["items"]}

    def answer(self, record_id: str, values: dict, status: str = "submitted") -> None:
        body = {"values": {q: {"value": v} for q, v in values.items()}, "status": status}
        r = self.http.post(f"{self.url}/api/v1/records/{record_id}/responses", json=body, timeout=30)
        assert r.status_code == 201, r.text


def ranking_value(rank: dict[str, int], slots: str) -> list[dict]:
    worst = max(rank.values()) + 1
    return [{"value": v, "rank": rank.get(v, worst)} for v in slots]


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def env(argilla_env):
    return argilla_env


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from evolkit.store import RunStore

    return RunStore(build_run(tmp_path_factory.mktemp("review") / "run", REVIEW_CONFIG))


@pytest.fixture(scope="module")
def names():
    tag = uuid.uuid4().hex[:6]
    return {"irm": f"t-{tag}-irm", "prm": f"t-{tag}-prm"}


def push(run, kind: str, name: str, *extra: str) -> int:
    from evolkit.cli import main

    return main(["review", "push", str(run.root), "--dataset", kind, "--name", name, *extra])


@pytest.fixture(scope="module")
def pushed(env, run, names):
    assert push(run, "irm", names["irm"], "--min-submitted", "2") == 0
    assert push(run, "prm", names["prm"], "--min-submitted", "2", "--prm-layout", "step") == 0
    return names


def _dataset(client, name):
    return client.datasets(name=name, workspace="evolkit")


# ------------------------------------------------------------------------------------------------------ push
def test_push_creates_datasets(pushed, run, argilla_client):
    import argilla as rg

    rankings = run.load("irm", "irm_rankings")
    ds = _dataset(argilla_client, pushed["irm"])
    assert ds is not None and "Definition" in ds.settings.guidelines
    q = ds.settings.questions
    most = max(len(r["variants"]) for r in rankings)  # one slot per version of the longest ranking
    slots = "ABCDEFGH"[:most]
    assert isinstance(q["ranking"], rg.RankingQuestion) and q["ranking"].values == list(slots)
    assert isinstance(q["comment"], rg.TextQuestion) and not q["comment"].required
    assert {m.name for m in ds.settings.metadata} >= {"round", "operation", "source", "judge_confidence", "evolver"}
    assert ds.settings.distribution.min_submitted == 2
    recs = list(ds.records(with_suggestions=True))
    assert sorted(r.id for r in recs) == sorted(r["id"] for r in rankings)
    by_id = {r["id"]: r for r in rankings}
    for rec in recs:
        s = rec.suggestions["ranking"]
        model = sorted(by_id[rec.id]["variants"], key=lambda v: v["rank"])
        # the judge's order, then the slots this instruction has no version for (empty, last)
        assert s.agent == "deterministic" and s.value[:len(model)] == [v["id"] for v in model]
        assert sorted(s.value[len(model):]) == [v for v in slots if v not in {x["id"] for x in model}]
        assert rec.metadata["judge_confidence"] is not None and 0 <= rec.metadata["judge_confidence"] <= 1
        assert rec.metadata["source"] in ("gsm8k", "math", "evol") and isinstance(rec.metadata["round"], int)
        assert rec.fields["instruction"] == fold_figures(by_id[rec.id]["instruction"])  # [asy] code folded

    prm_rows = [r for r in run.load("prm", "prm") if r["labeller"] == "judge"]
    pds = _dataset(argilla_client, pushed["prm"])
    assert isinstance(pds.settings.questions["label"], rg.LabelQuestion)
    assert set(pds.settings.questions["label"].labels) == {"correct", "incorrect", "neutral"}
    precs = list(pds.records(with_suggestions=True))
    assert len(precs) == sum(len(r["completions"]) for r in prm_rows)  # one record per step
    rec = next(r for r in precs if r.id.endswith("#2"))
    assert rec.suggestions["label"].agent == "deterministic" and 0.5 <= rec.suggestions["label"].score <= 1
    assert rec.metadata["step_number"] == 2 and "**1.**" in rec.fields["previous_steps"]
    assert {r.metadata["source"] for r in precs} == {"sft", "evolve"}


def test_push_again_updates_without_duplicates(pushed, run, argilla_client, capsys):
    n_irm = len(list(_dataset(argilla_client, pushed["irm"]).records()))
    n_prm = len(list(_dataset(argilla_client, pushed["prm"]).records()))
    assert push(run, "irm", pushed["irm"]) == 0
    assert push(run, "prm", pushed["prm"]) == 0
    out = capsys.readouterr().out
    assert f"0 new records, {n_irm} updated, {n_irm} in total" in out
    assert f"0 new records, {n_prm} updated, {n_prm} in total" in out
    assert len(list(_dataset(argilla_client, pushed["irm"]).records())) == n_irm
    assert len(list(_dataset(argilla_client, pushed["prm"]).records())) == n_prm


# ------------------------------------------------------------------------------------------------------ answers
@pytest.fixture(scope="module")
def answered(pushed, run, env, argilla_client):
    """Two annotators answer part of both datasets; returns what they did (for the expected figures)."""
    r1 = Annotator(env.url, *env.reviewers[0])
    r2 = Annotator(env.url, *env.reviewers[1])
    plan: dict = {"irm": {}, "prm": {}}

    # IRM: R0 both reverse the model; R1 they disagree on the top pair; R2 r1 alone agrees with the model;
    # R3 r1 discards; R4 r2 leaves a draft; the rest is not reviewed.
    ds = _dataset(argilla_client, pushed["irm"])
    # rankings of three versions first (the figures below count their version pairs), then the rest
    rankings = sorted(run.load("irm", "irm_rankings"), key=lambda r: (len(r["variants"]) != 3, r["id"]))
    assert len(rankings) >= 6 and all(len(r["variants"]) == 3 for r in rankings[:3])
    slots = "".join(ds.settings.questions["ranking"].values)  # a version a ranking lacks is empty: ranked last
    ids1, ids2 = r1.records(ds.id), r2.records(ds.id)
    assert set(ids1) == set(ids2) == {r["id"] for r in rankings}
    model = [{v["id"]: v["rank"] for v in r["variants"]} for r in rankings]
    R = [r["id"] for r in rankings]
    rev = {k: len(model[0]) + 1 - v for k, v in model[0].items()}
    r1.answer(ids1[R[0]], {"ranking": ranking_value(rev, slots), "comment": "the last one is clearest"})
    r2.answer(ids2[R[0]], {"ranking": ranking_value(rev, slots)})
    top = sorted(model[1], key=model[1].get)
    swapped = dict(model[1]) | {top[0]: model[1][top[1]], top[1]: model[1][top[0]]}
    r1.answer(ids1[R[1]], {"ranking": ranking_value(model[1], slots)})
    r2.answer(ids2[R[1]], {"ranking": ranking_value(swapped, slots)})
    r1.answer(ids1[R[2]], {"ranking": ranking_value(model[2], slots)})
    r1.answer(ids1[R[3]], {}, status="discarded")
    r2.answer(ids2[R[4]], {"ranking": ranking_value(model[4], slots)[:1]}, status="draft")
    plan["irm"] = {"R": R, "model": model, "rev": rev, "swapped": swapped, "top": top}
    # Argilla's record status (min_submitted 2: two submitted answers complete a record), read back from osmem
    import argilla as rg

    done = ds.records(query=rg.Query(filter=rg.Filter(("status", "==", "completed"))))
    assert {r.id for r in done} == {R[0], R[1]}
    assert R[2] not in r1.pending(ds.id) and R[2] in r2.pending(ds.id) and R[5] in r1.pending(ds.id)

    # PRM: S0 both flip step 1; S1 r1 agrees with the model, r2 flips step 1 (tie); S2 r1 marks step 1 neutral only;
    # S3 r2 discards step 2; S4 r1 leaves a draft on step 1; the rest is not reviewed.
    pds = _dataset(argilla_client, pushed["prm"])
    sols = sorted((r for r in run.load("prm", "prm") if r["labeller"] == "judge"), key=lambda r: r["id"])
    items = {i.id: i for i in prm_items(run.load("prm", "prm"), run.load("prm", "judgements"))}
    p1, p2 = r1.records(pds.id), r2.records(pds.id)
    S = [s["id"].rsplit(":", 1)[0] for s in sols]
    m = [[items[f"{sid}#{k + 1}"].suggestion["label"] for k in range(len(s["completions"]))] for sid, s in zip(S, sols)]
    for who, ids in ((r1, p1), (r2, p2)):
        for k, lab in enumerate(m[0]):
            who.answer(ids[f"{S[0]}#{k + 1}"], {"label": flip(lab) if k == 0 else lab})
    for k, lab in enumerate(m[1]):
        r1.answer(p1[f"{S[1]}#{k + 1}"], {"label": lab, "justification": "fine"})
        r2.answer(p2[f"{S[1]}#{k + 1}"], {"label": flip(lab) if k == 0 else lab})
    r1.answer(p1[f"{S[2]}#1"], {"label": "neutral"})
    r2.answer(p2[f"{S[3]}#2"], {}, status="discarded")
    r1.answer(p1[f"{S[4]}#1"], {"label": flip(m[4][0])}, status="draft")
    plan["prm"] = {"S": S, "m": m, "sols": sols}
    return plan


@pytest.fixture(scope="module")
def pulled(answered, run, env):
    from evolkit.cli import main

    assert main(["review", "pull", str(run.root), "--dataset", "all"]) == 0
    return answered


def test_pull_resolves_irm(pulled, run):
    p = pulled["irm"]
    R, model = p["R"], p["model"]
    base = {r["id"]: r for r in run.load("irm", "irm_rankings")}
    got = {r["id"]: r for r in run.load("review", "irm_rankings")}
    ranks = {rid: {v["id"]: v["rank"] for v in r["variants"]} for rid, r in got.items()}
    assert ranks[R[0]] == p["rev"] and got[R[0]]["label_source"] == "human" and got[R[0]]["agreement"] == 1.0
    top = p["top"]
    assert ranks[R[1]][top[0]] == ranks[R[1]][top[1]] == 1 and ranks[R[1]][top[2]] == 3  # tie on the top pair
    assert got[R[1]]["label_source"] == "human" and got[R[1]]["agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert ranks[R[2]] == model[2] and got[R[2]]["label_source"] == "human"  # one reviewer overrides (agrees here)
    assert R[3] not in got  # discarded
    for rid in R[4:]:  # draft and unreviewed: the model's ranking, untouched
        assert got[rid] == base[rid]
    assert len(got) == len(base) - 1  # nothing else lost

    log = {r["id"]: r for r in run.load("review", "irm_review")}
    assert log[R[1]]["flagged"] and not log[R[0]]["flagged"] and log[R[3]]["status"] == "excluded"
    assert log[R[4]]["status"] == "model" and log[R[0]]["reviewers"] == ["reviewer1", "reviewer2"]

    pairs = run.load("review", "irm_pairs")
    by_r = {}
    for x in pairs:
        by_r.setdefault(x["ranking_id"], []).append(x)
    assert len(by_r[R[1]]) == 2 and R[3] not in by_r and len(by_r[R[0]]) == 3
    assert {x["label_source"] for x in by_r[R[0]]} == {"human"} and {x["label_source"] for x in by_r[R[5]]} == {"model"}
    texts = {v["id"]: v["text"] for v in base[R[0]]["variants"]}
    best = min(p["rev"], key=p["rev"].get)
    assert all(x["rejected"] != texts[best] for x in by_r[R[0]])

    rep = run.stage_info("review")["summary"]["irm"]
    assert (rep["human"], rep["model"], rep["excluded"], rep["flagged"]) == (3, len(base) - 4, 1, 1)
    assert rep["draft_responses"] == 1
    # annotators: units = version pairs of R0 and R1 (both answered)
    u1 = pair_units(p["rev"]) + pair_units(model[1])
    u2 = pair_units(p["rev"]) + pair_units(p["swapped"])
    (a,) = rep["annotators"]
    assert (a["a"], a["b"], a["records"], a["units"]) == ("reviewer1", "reviewer2", 2, 6)
    assert a["agreement"] == pytest.approx(5 / 6) and a["kappa"] == pytest.approx(kappa(u1, u2))
    jh = rep["judge_vs_human"]
    assert jh["records"] == 3 and jh["exact_ranking"] == pytest.approx(1 / 3) and jh["top1"] == pytest.approx(1 / 3)
    judge_units = pair_units(model[0]) + pair_units(model[1]) + pair_units(model[2])
    human_units = pair_units(p["rev"]) + pair_units(ranks[R[1]]) + pair_units(model[2])
    assert jh["pair_units"] == 9 and jh["kappa"] == pytest.approx(kappa(human_units, judge_units))
    assert Path(rep["plot"]).exists()


def test_pull_resolves_prm(pulled, run):
    p = pulled["prm"]
    S, m, sols = p["S"], p["m"], p["sols"]
    base = {r["id"]: r for r in run.load("prm", "prm")}
    got = {r["id"]: r for r in run.load("review", "prm")}
    b = lambda labs: [x != "incorrect" for x in labs]  # noqa: E731 (neutral counts as correct)

    s0 = got[f"{S[0]}:judge"]
    assert s0["labels"] == b([flip(m[0][0])] + m[0][1:])
    assert (s0["label_source"], s0["labeller"], s0["step_scores"]) == ("human", "human", None)
    s1 = got[f"{S[1]}:judge"]  # step 1 tied -> judge's label kept, flagged; the row is not fully human
    assert s1["labels"] == b(m[1]) and (s1["label_source"], s1["labeller"]) == ("model", "judge+human")
    s2 = got[f"{S[2]}:judge"]
    assert s2["labels"] == b(["neutral"] + m[2][1:]) and s2["labeller"] == "judge+human"
    assert f"{S[3]}:judge" not in got  # a discarded step drops its solution
    for sid in S[4:]:
        assert got[f"{sid}:judge"] == base[f"{sid}:judge"]  # draft / unreviewed: untouched
    assert all(got[k] == v for k, v in base.items() if v["labeller"] == "montecarlo")  # other labeller passes
    assert len(got) == len(base) - 1

    steps = {s["id"]: s for s in run.load("review", "prm_steps")}
    assert steps[f"{S[1]}#1"]["provenance"] == "tie" and steps[f"{S[1]}#1"]["flagged"]
    assert steps[f"{S[0]}#1"]["provenance"] == "human" and steps[f"{S[3]}#2"]["provenance"] == "excluded"
    assert steps[f"{S[4]}#1"]["provenance"] == "model"

    rep = run.stage_info("review")["summary"]["prm"]
    assert (rep["human_solutions"], rep["partial_solutions"], rep["excluded_solutions"]) == (1, 2, 1)
    assert rep["flagged_steps"] == 1 and rep["draft_responses"] == 1
    a1 = [flip(m[0][0])] + m[0][1:] + m[1]
    a2 = [flip(m[0][0])] + m[0][1:] + [flip(m[1][0])] + m[1][1:]
    (pair,) = rep["annotators"]
    assert pair["steps"] == len(a1) and pair["agreement"] == pytest.approx((len(a1) - 1) / len(a1))
    assert pair["kappa3"] == pytest.approx(kappa(a1, a2))
    # judge vs resolved humans on the human-resolved steps: S0 all, S1 steps 2.., S2 step 1
    human = [flip(m[0][0])] + m[0][1:] + m[1][1:] + ["neutral"]
    judge = m[0] + m[1][1:] + [m[2][0]]
    jh = rep["judge_vs_human"]
    assert jh["steps"] == len(human)
    assert jh["accuracy3"] == pytest.approx(sum(x == y for x, y in zip(human, judge)) / len(human))
    assert jh["kappa"] == pytest.approx(kappa(b(human), b(judge)))
    fe = jh["first_error"]
    assert fe["n_error"] + fe["n_correct"] == 1  # only S0 is fully reviewed
    assert Path(rep["plot"]).exists()
    assert len(sols) >= 5


def test_pull_again_and_push_after_review_keep_answers(pulled, run, pushed, argilla_client):
    from evolkit.cli import main

    before = (run.load("review", "irm_rankings"), run.load("review", "prm"))
    n = len(list(_dataset(argilla_client, pushed["prm"]).records()))
    assert push(run, "prm", pushed["prm"]) == 0 and push(run, "irm", pushed["irm"]) == 0
    assert len(list(_dataset(argilla_client, pushed["prm"]).records())) == n
    assert main(["review", "pull", str(run.root), "--dataset", "prm", "--no-plot"]) == 0
    # the IRM outputs of the earlier pull are kept when only PRM is pulled
    assert (run.load("review", "irm_rankings"), run.load("review", "prm")) == before


def test_budget_least_certain_first_on_an_older_dataset(env, run, argilla_client, capsys, tmp_path):
    """--budget sends the N least certain solutions; a dataset made before the ordering metadata existed gets it, and
    the server's metadata sort returns the records least certain first."""
    import argilla as rg

    from evolkit.review.argilla_backend import ArgillaReview, connection
    from evolkit.review.cli import build_items
    from evolkit.store import RunStore

    run = RunStore(shutil.copytree(run.root, tmp_path / "run"))  # its own push state
    be = ArgillaReview(connection())
    new = be.settings("prm", layout="step")
    old = rg.Settings(fields=list(new.fields), questions=list(new.questions), guidelines=new.guidelines,
                      metadata=[m for m in new.metadata if m.name not in ("review_order", "uncertainty", "why")],
                      allow_extra_metadata=True)
    name = f"t-{uuid.uuid4().hex[:6]}-old"
    rg.Dataset(name=name, workspace="evolkit", settings=old, client=argilla_client).create()
    assert push(run, "prm", name, "--prm-layout", "step", "--budget", "2") == 0
    out = capsys.readouterr().out
    assert "sent 2 of" in out and "sort=metadata.review_order.asc~metadata.step_number.asc" in out
    ds = _dataset(argilla_client, name)
    assert {"review_order", "uncertainty", "why"} <= {m.name for m in ds.settings.metadata}
    want = [i.id for i in build_items(run, "prm", "judge", "step") if i.metadata["review_order"] <= 2]
    body = {"sort": [{"scope": {"entity": "metadata", "metadata_property": p}, "order": "asc"}
                     for p in ("review_order", "step_number")]}
    resp = requests.post(f"{env.url}/api/v1/datasets/{ds.id}/records/search", json=body, params={"limit": 100},
                         headers={"X-Argilla-Api-Key": env.api_key}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert [i["record"]["external_id"] for i in resp.json()["items"]] == want


# ------------------------------------------------------------------------------------------------------ errors
def test_missing_or_unreachable_server_is_a_clear_error(run, monkeypatch, capsys):
    from evolkit.cli import main
    from evolkit.review.server import free_port

    monkeypatch.delenv("ARGILLA_API_URL", raising=False)
    monkeypatch.setenv("ARGILLA_API_KEY", "x" * 10)
    assert main(["review", "push", str(run.root), "--dataset", "irm"]) == 2
    assert "no Argilla server configured: set ARGILLA_API_URL" in capsys.readouterr().err
    monkeypatch.setenv("ARGILLA_API_URL", f"http://127.0.0.1:{free_port()}")
    assert main(["review", "pull", str(run.root)]) == 2
    err = capsys.readouterr().err
    assert "cannot reach Argilla at http://127.0.0.1:" in err and "Traceback" not in err
    assert main(["review", "push", "/nonexistent/run", "--dataset", "irm"]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_wrong_key_is_a_clear_error(env, run, monkeypatch, capsys):
    from evolkit.cli import main

    monkeypatch.setenv("ARGILLA_API_KEY", "evk.not-the-key")
    assert main(["review", "push", str(run.root), "--dataset", "irm"]) == 2
    assert "rejected the API key" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------ resolution
def test_resolution_rules_without_a_server():
    """Three reviewers: majority; a stale answer (record content changed since) is ignored."""
    row = {"id": "irm:x", "instruction_id": "x", "instruction": "q", "judge": "j", "consistent": True,
           "label_source": "model", "agreement": 1.0,
           "variants": [{"id": v, "text": f"t{v}", "evolver": "e", "operation": "o", "rank": i + 1, "definition": 5.0,
                         "precision": 5.0, "integrity": 5.0} for i, v in enumerate("ABC")]}
    items = irm_items([row])
    good = items[0].content_hash
    resp = [Response("u1", "submitted", ranking={"A": 2, "B": 1, "C": 3}),
            Response("u2", "submitted", ranking={"A": 2, "B": 1, "C": 3}),
            Response("u3", "submitted", ranking={"A": 1, "B": 3, "C": 2})]
    res = resolve_irm([row], items, [ItemResponses("irm:x", good, resp)])
    # mean ranks A 5/3, B 5/3, C 8/3 -> A and B tie (flagged), C third
    ranks = {v["id"]: v["rank"] for v in res["irm_rankings"][0]["variants"]}
    assert ranks == {"A": 1, "B": 1, "C": 3} and res["irm_review"][0]["flagged"]
    stale = resolve_irm([row], items, [ItemResponses("irm:x", "0" * 16, resp)])
    assert stale["irm_rankings"][0] == row and stale["report"]["stale_responses"] == 3

    ex = {"id": "sft:p:0:judge", "problem_id": "p", "prompt": "q", "completions": ["s1", "s2"], "labels": [True, False],
          "labeller": "judge", "label_source": "model", "step_scores": None, "final_correct": False, "source": "sft"}
    pitems = prm_items([ex], [])
    h = {i.id: i.content_hash for i in pitems}
    votes = [ItemResponses("sft:p:0#1", h["sft:p:0#1"], [Response(u, "submitted", label=lab) for u, lab in
                                                        (("u1", "incorrect"), ("u2", "incorrect"), ("u3", "correct"))]),
             ItemResponses("sft:p:0#2", h["sft:p:0#2"], [Response(u, "submitted", label=lab) for u, lab in
                                                        (("u1", "neutral"), ("u2", "correct"), ("u3", "neutral"))])]
    res = resolve_prm([ex], pitems, votes)
    assert res["prm"][0]["labels"] == [False, True] and res["prm"][0]["label_source"] == "human"
    res = resolve_prm([ex], pitems, votes, neutral_as="incorrect")
    assert res["prm"][0]["labels"] == [False, False]


def _prm_row(sid: str, labels: list[bool], labeller: str = "judge", n: int | None = None) -> dict:
    n = n or len(labels)
    return {"id": f"{sid}:{labeller}", "problem_id": sid.split(":")[1], "prompt": f"problem of {sid}",
            "completions": [f"Step {k + 1}: s{k + 1}" for k in range(n)], "labels": labels, "labeller": labeller,
            "label_source": "model", "step_scores": None, "final_correct": all(labels), "source": "sft",
            "solution_model": "teacher", "labeller_model": "judge-model"}


def _judgement(sid: str, labels3: list[str], conf: list[float]) -> dict:
    return {"solution_id": sid, "ok": True, "labels3": labels3, "confidence": conf, "judge": "judge-model"}


def test_least_certain_first_and_budget():
    """Order: swapped-order disagreement (IRM), judge vs Monte-Carlo disagreement (PRM), then low confidence."""
    def ranking(rid: str, gap: float, consistent: bool = True) -> dict:
        return {"id": rid, "instruction_id": rid, "instruction": "q", "judge": "j", "consistent": consistent,
                "agreement": 1.0, "label_source": "model",
                "variants": [{"id": "A", "text": "a", "evolver": "e1", "operation": "o", "rank": 1, "definition": 5.0,
                              "precision": 5.0, "integrity": 5.0 + gap},
                             {"id": "B", "text": "b", "evolver": "e2", "operation": "o", "rank": 2, "definition": 5.0,
                              "precision": 5.0, "integrity": 5.0}]}

    items = irm_items([ranking("sure", 9.0), ranking("unsure", 1.0), ranking("swapped", 9.0, consistent=False)])
    assert [i.id for i in items] == ["swapped", "unsure", "sure"]
    assert [i.metadata["review_order"] for i in items] == [1, 2, 3]
    assert "swapped-order disagreement" in items[0].metadata["why"] and items[2].metadata["why"] == ["confident"]
    assert [i.id for i in priority.select(items, 2)] == ["swapped", "unsure"]

    rows = [_prm_row("sft:a:0", [True, False]), _prm_row("sft:b:0", [True, True]), _prm_row("sft:c:0", [True, True]),
            _prm_row("sft:c:0", [False, True], "montecarlo")]
    judg = [_judgement("sft:a:0", ["correct", "incorrect"], [0.9, 0.55]),
            _judgement("sft:b:0", ["correct", "correct"], [0.95, 0.9]),
            _judgement("sft:c:0", ["correct", "correct"], [0.99, 0.99])]
    sols = prm_solution_items(rows, judg)
    assert [i.id for i in sols] == ["sft:c:0", "sft:a:0", "sft:b:0"]  # MC disagrees on c; a has a 0.55 step
    assert sols[0].metadata["other_first_error"] == 1 and sols[0].suggestion["first_error"] == 0
    assert sols[1].score == 0.55 and sols[1].suggestion["first_error"] == 2
    steps = prm_items(rows, judg)  # per-step layout: a solution's steps stay together, in order
    assert [i.id for i in steps][:2] == ["sft:c:0#1", "sft:c:0#2"]
    assert {i.metadata["review_order"] for i in priority.select(steps, 2)} == {1, 2}
    assert len(priority.select(steps, 2)) == 4


def test_solution_layout_resolution():
    """First-error answers -> published labels ending at the first error; majority; ties; discards; bad answers."""
    rows = [_prm_row(f"sft:p{i}:0", [True, True, False, True]) for i in range(6)] + [
        _prm_row("sft:p0:0", [True, True, True, True], "montecarlo")]
    items = {i.id: i for i in prm_solution_items(rows, [])}
    h = {k: v.content_hash for k, v in items.items()}
    S = [f"sft:p{i}:0" for i in range(6)]

    def answers(sid: str, *rs: Response) -> ItemResponses:
        return ItemResponses(sid, h[sid], list(rs))

    pulled = [
        answers(S[0], Response("r1", "submitted", first_error=2)),                       # one reviewer
        answers(S[1], Response("r1", "submitted", first_error=0), Response("r2", "submitted", first_error=0),
                Response("r3", "submitted", first_error=4)),                             # majority: none
        answers(S[2], Response("r1", "submitted", first_error=3), Response("r2", "submitted", first_error=1)),
        answers(S[3], Response("r1", "submitted", first_error=4), Response("r2", "submitted", first_error=0)),
        answers(S[4], Response("r1", "discarded")),
        answers(S[5], Response("r1", "submitted", first_error=9), Response("r2", "draft", first_error=1)),
    ]
    res = resolve_prm_solutions(rows, list(items.values()), pulled)
    got = {r["id"]: r for r in res["prm"]}
    r0 = got[f"{S[0]}:judge"]
    assert r0["completions"] == ["Step 1: s1", "Step 2: s2"] and r0["labels"] == [True, False]
    assert (r0["label_source"], r0["labeller"], r0["labeller_model"]) == ("human", "human", None)
    assert got[f"{S[1]}:judge"]["labels"] == [True] * 4 and len(got[f"{S[1]}:judge"]["completions"]) == 4
    assert got[f"{S[2]}:judge"]["labels"] == [True, True, False]  # tie 3 vs 1: the judge's answer (3) wins
    assert got[f"{S[3]}:judge"]["labels"] == [True, True, True, False]  # tie 4 vs none: the earliest error
    assert f"{S[4]}:judge" not in got  # discarded
    assert got[f"{S[5]}:judge"] == rows[5]  # step 9 of 4 is ignored, the draft too: the model's row stays
    assert got["sft:p0:0:montecarlo"] == rows[-1]
    log = {r["id"]: r for r in res["prm_review"]}
    assert log[S[1]]["agreement"] == pytest.approx(1 / 3, abs=1e-4) and log[S[1]]["resolution"] == "majority"
    assert log[S[2]]["flagged"] and "judge" in log[S[2]]["resolution"]
    assert log[S[3]]["flagged"] and "earliest" in log[S[3]]["resolution"]
    steps = {s["id"]: s for s in res["prm_steps"]}
    assert steps[f"{S[0]}#3"]["label"] is None and steps[f"{S[0]}#3"]["provenance"].startswith("not labelled")
    rep = res["report"]
    assert (rep["human_solutions"], rep["model_solutions"], rep["excluded_solutions"]) == (4, 1, 1)
    assert (rep["invalid_answers"], rep["draft_responses"], rep["flagged"]) == (1, 1, 2)
    jh = rep["judge_vs_human"]  # judge says 3 everywhere; humans 2, none, 3, 4
    assert jh["solutions"] == 4 and jh["first_error_accuracy"] == pytest.approx(1 / 4)
    assert jh["steps"] == 2 + 4 + 3 + 4
    pair = next(p for p in rep["annotators"] if (p["a"], p["b"]) == ("r1", "r2"))
    assert pair["solutions"] == 3 and pair["agreement"] == pytest.approx(1 / 3)


def test_answer_ledger_merges_pulls():
    """Pulling again never duplicates; a changed answer replaces the old; one gone from the server is kept; an answer
    given before a re-push keeps the hash of what it answered (so it stays stale)."""
    a1 = Response("r1", "submitted", first_error=2, updated_at="t1")
    first, c1 = ledger.merge([], [ItemResponses("s1", "h1", [a1])], "p1")
    assert c1 == {"new": 1, "changed": 0, "unchanged": 0, "kept_from_earlier_pull": 0}
    b1 = Response("r2", "submitted", first_error=0, updated_at="t2")
    second, c2 = ledger.merge(first, [ItemResponses("s1", "h2", [a1, b1])], "p2")  # s1 re-pushed with new content
    assert c2 == {"new": 1, "changed": 0, "unchanged": 1, "kept_from_earlier_pull": 0} and len(second) == 2
    by_user = {r["user"]: r for r in second}
    assert by_user["r1"]["content_hash"] == "h1" and by_user["r2"]["content_hash"] == "h2"
    assert by_user["r1"]["first_pulled"] == "p1" and by_user["r1"]["last_pulled"] == "p2"
    a2 = Response("r1", "submitted", first_error=1, updated_at="t3")
    third, c3 = ledger.merge(second, [ItemResponses("s1", "h2", [a2])], "p3")  # r1 changed it; r2's is gone
    assert c3 == {"new": 0, "changed": 1, "unchanged": 0, "kept_from_earlier_pull": 1} and len(third) == 2
    back = {r.user: r for r in ledger.responses(third)[0].responses}
    assert back["r1"].first_error == 1 and back["r1"].content_hash == "h2" and back["r2"].first_error == 0


def test_figures_fold_and_steps_are_numbered():
    text = "Find the area of $\\triangle ABC$. [asy]\ndraw((0,0)--(1,1));\nlabel(\"$A$\", (0,0));\n[/asy] Then stop."
    out = fold_figures(text)
    assert "<details><summary>Figure: Asymptote code, 2 lines" in out and "[asy]" not in out
    assert out.index("$\\triangle ABC$") < out.index("<details>") < out.index("draw(") < out.index("Then stop.")
    assert numbered_steps(["Step 1: x = 2", "Step 2: so 4"]) == "**1.** x = 2\n\n**2.** so 4"


def test_card_section_reports_the_human_check(tmp_path):
    """review_stats() from a pulled review, rendered by the card template's review section."""
    import jinja2

    from evolkit.review.stats import review_stats
    from evolkit.store import RunStore

    store = RunStore(tmp_path / "run")
    assert review_stats(store) == []
    irm = {"records": 12, "human": 5, "excluded": 1, "sent": 6, "selection": "least certain first",
           "annotators": [{"a": "r1", "b": "r2", "agreement": 0.75}], "judge_vs_annotator": {"r1": {}, "r2": {}},
           "judge_vs_human": {"exact_ranking": 0.4, "pair_accuracy": 0.7}}
    prm = {"layout": "solution", "solutions": 24, "human_solutions": 3, "excluded_solutions": 0, "sent": 24,
           "selection": "all", "annotators": [], "judge_vs_annotator": {"r1": {}},
           "judge_vs_human": {"first_error_accuracy": 2 / 3, "accuracy": 0.9, "first_error": {}}}
    store.finish("review", {}, {"irm": irm, "prm": prm})
    stats = review_stats(store)
    assert [(s["kind"], s["judged"], s["sent"], s["checked"], s["judge_accuracy"]) for s in stats] == [
        ("irm", 12, 6, 5, 0.4), ("prm", 24, 24, 3, 2 / 3)]
    assert stats[0]["reviewers"] == 2 and stats[0]["reviewer_agreement"] == 0.75

    template = (Path(__file__).resolve().parent.parent / "hub_cards" / "dataset_card.md.jinja").read_text()
    start = template.index("{% if review_stats is defined")
    section = template[start:template.index("{% endif %}", template.index("{% endfor %}", start)) + len("{% endif %}")]
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"
    out = env.from_string(section).render(review_stats=stats)
    assert "| `irm` | ranking | 12 | 6 (least certain first) | 5 | 1 | 2 (agreement 75.0%) | 40.0% (same ranking" in out
    assert "| `prm` | solution | 24 | 24 (all) | 3 | 0 | 1 | 66.7% (same first incorrect step" in out
    assert env.from_string(section).render() == ""  # publish code that does not pass it yet renders nothing


# ------------------------------------------------------------------------------------------------------ serve
@pytest.mark.slow
def test_serve_command_starts_prints_logins_and_stops(tmp_path, argilla_server):
    """`evolkit review serve` (the same local stack as the fixture, in its own workdir) until SIGINT."""
    cmd = [sys.executable, "-m", "evolkit.cli", "review", "serve", "--workdir", str(tmp_path / "srv")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    url = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.strip().startswith("export ARGILLA_API_URL="):
                url = line.strip().split("=", 1)[1]
            if "Ctrl-C stops the server" in line:
                break
        text = "".join(lines)
        assert url, text
        assert "reviewer:     reviewer1 /" in text and "reviewer2" in text and "export ARGILLA_API_KEY=" in text
        assert requests.get(f"{url}/api/v1/status", timeout=30).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopped" in rest
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/api/v1/status", timeout=5)
