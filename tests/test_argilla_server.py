"""Real tests against a local Argilla 2.8 server (fixture ``argilla_server``, tests/plugins/argilla_server.py).

The owner works through the Argilla SDK (``argilla_client``); annotators work as the web UI does, over HTTP: they log
in with username/password at ``POST /api/v1/token`` (form fields ``username``, ``password``), get a JWT and send it as
``Authorization: Bearer <token>``; they see a dataset only once they are members of its workspace.

Search behaviour here comes from osmem (the in-memory OpenSearch-compatible engine), not from a real OpenSearch:

* text search (``query="..."``) is osmem's ``match`` on the fields' ``standard``-analysed text; ranking scores
  (``query_score``) are osmem's BM25 numbers, so tests check which records match, never score values or the order of
  equally relevant hits;
* terms / range filters on metadata, suggestion value/score/agent, record status and nested response fields
  (``responses.*``, including the per-user response scope), sorting by metadata, and the terms aggregations behind
  dataset progress are osmem's implementations of those queries;
* documents are visible to search right after each write because Argilla asks for ``refresh=true`` and osmem
  refreshes synchronously;
* response create/update/delete and suggestion delete are NOT the Painless scripts Argilla sends to OpenSearch:
  osmem refuses scripts, so the server runs ``ScriptlessOpenSearchEngine`` (evolkit/review/_argilla_engine.py), which
  reads the document, edits its ``_source`` and re-indexes it with ``if_seq_no``/``if_primary_term``;
* nothing is persisted by osmem: a restart reindexes from SQLite (``test_restart_reindexes_from_database``).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow

try:
    import argilla as rg
except ImportError:  # the SDK comes with the project's [review] extra
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        raise
    pytest.skip("the argilla SDK is not installed (pip install -e '.[review]')", allow_module_level=True)


# ---------------------------------------------------------------------------------------------------- helpers
class Annotator:
    """An annotator talking to the server's REST API the way the Argilla web UI does."""

    def __init__(self, url: str, username: str, password: str):
        self.url = url.rstrip("/")
        self.username = username
        self.http = requests.Session()
        resp = self.http.post(f"{self.url}/api/v1/token", data={"username": username, "password": password}, timeout=30)
        assert resp.status_code == 201, resp.text
        self.http.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"
        self.me = self.get("/api/v1/me")

    def request(self, method: str, path: str, expect: int | None = None, **kw) -> requests.Response:
        resp = self.http.request(method, f"{self.url}{path}", timeout=30, **kw)
        if expect is not None:
            assert resp.status_code == expect, f"{method} {path}: {resp.status_code} {resp.text}"
        return resp

    def get(self, path: str, **kw):
        return self.request("GET", path, expect=200, **kw).json()

    def search(self, dataset_id, body: dict | None = None, **params) -> list[dict]:
        resp = self.request(
            "POST", f"/api/v1/me/datasets/{dataset_id}/records/search", json=body or {}, params=params, expect=200
        )
        return [item["record"] for item in resp.json()["items"]]

    def submit(self, record_id, values: dict, status: str = "submitted") -> dict:
        body = {"values": {q: {"value": v} for q, v in values.items()}, "status": status}
        return self.request("POST", f"/api/v1/records/{record_id}/responses", json=body, expect=201).json()


def _terms(entity: str, values: list, **scope) -> dict:
    return {"type": "terms", "scope": {"entity": entity, **scope}, "values": values}


RANKING = ["solution_a", "solution_b", "solution_c"]
RECORDS = [
    {
        "id": "p1",
        "problem": "Tom has 2 apples and buys 2 more. How many apples does he have?",
        "source": "gsm8k",
        "difficulty": 1,
        "verdict": ("correct", 0.9, "judge-a"),
        "emb": [1.0, 0.0, 0.0],
    },
    {
        "id": "p2",
        "problem": "Which fraction equals 0.5? Simplify the fraction 4/8.",
        "source": "math",
        "difficulty": 3,
        "verdict": ("incorrect", 0.3, "judge-b"),
        "emb": [0.0, 1.0, 0.0],
    },
    {
        "id": "p3",
        "problem": "Solve the quadratic equation x^2 - 1 = 0.",
        "source": "math",
        "difficulty": 4,
        "verdict": ("correct", 0.6, "judge-a"),
        "emb": [0.0, 0.0, 1.0],
    },
    {
        "id": "p4",
        "problem": "A train travels 60 km in 1.5 hours. What is its average speed?",
        "source": "gsm8k",
        "difficulty": 2,
        "verdict": None,
        "emb": [0.9, 0.1, 0.0],
    },
]


@pytest.fixture(scope="module")
def workspace(argilla_client, argilla_server):
    ws = rg.Workspace(name=f"ws-{uuid.uuid4().hex[:8]}", client=argilla_client).create()
    reviewer1 = argilla_server.reviewers[0][0]
    ws.add_user(reviewer1)  # reviewer2 stays outside this workspace
    return ws


@pytest.fixture
def dataset(argilla_client, workspace, request):
    """A fresh dataset per test: TextField, RankingQuestion, LabelQuestion, metadata, a vector, 4 records."""
    settings = rg.Settings(
        fields=[rg.TextField(name="problem")],
        questions=[
            rg.RankingQuestion(name="rank", values=RANKING, required=False),
            rg.LabelQuestion(name="verdict", labels=["correct", "incorrect"]),
        ],
        metadata=[
            rg.TermsMetadataProperty(name="source"),
            rg.IntegerMetadataProperty(name="difficulty"),
        ],
        vectors=[rg.VectorField(name="emb", dimensions=3)],
    )
    name = f"{request.node.name[:40]}-{uuid.uuid4().hex[:6]}".replace("[", "-").replace("]", "")
    ds = rg.Dataset(name=name, workspace=workspace, settings=settings, client=argilla_client).create()
    records = []
    for r in RECORDS:
        suggestions = [rg.Suggestion(question_name="rank", value=RANKING, agent="ranker")]
        if r["verdict"]:
            value, score, agent = r["verdict"]
            suggestions.append(rg.Suggestion(question_name="verdict", value=value, score=score, agent=agent))
        records.append(
            rg.Record(
                id=r["id"],
                fields={"problem": r["problem"]},
                metadata={"source": r["source"], "difficulty": r["difficulty"]},
                suggestions=suggestions,
                vectors={"emb": r["emb"]},
            )
        )
    ds.records.log(records)
    return ds


def _ranked(value) -> list[str]:
    """A ranking value as names in rank order (the API gives [{"value": name, "rank": n}, ...], the SDK names)."""
    items = [v if isinstance(v, dict) else {"value": v, "rank": i} for i, v in enumerate(value)]
    return [v["value"] for v in sorted(items, key=lambda v: v.get("rank") or 0)]


def _ids(records) -> set[str]:
    return {r.id for r in records}


def _server_ids(ds) -> dict[str, str]:
    """external id -> server record id."""
    return {r.id: str(r._server_id) for r in ds.records(with_suggestions=False, with_responses=False)}


# ---------------------------------------------------------------------------------------------------- tests
def test_status_is_up(argilla_server):
    status = requests.get(f"{argilla_server.url}/api/v1/status", timeout=30).json()
    assert status["version"] == "2.8.0"
    assert status["search_engine"]["cluster_name"] == "osmem"
    me = requests.get(
        f"{argilla_server.url}/api/v1/me", headers={"X-Argilla-Api-Key": argilla_server.api_key}, timeout=30
    ).json()
    assert me["username"] == "owner" and me["role"] == "owner"
    assert len(argilla_server.reviewers) == 2
    assert argilla_server.url.startswith("http://127.0.0.1:")


def test_reviewers_can_log_in_and_are_annotators(argilla_server):
    for username, password in argilla_server.reviewers:
        who = Annotator(argilla_server.url, username, password)
        assert who.me["username"] == username and who.me["role"] == "annotator"
    bad = requests.post(
        f"{argilla_server.url}/api/v1/token", data={"username": "reviewer1", "password": "wrong-password"}, timeout=30
    )
    assert bad.status_code == 401


def test_annotator_submits_and_sdk_reads_back(argilla_server, argilla_client, dataset):
    url = argilla_server.url
    reviewer = Annotator(url, *argilla_server.reviewers[0])

    # The annotator sees the dataset of the workspace it was added to, and its records with the suggestions.
    assert str(dataset.id) in {d["id"] for d in reviewer.get("/api/v1/me/datasets")["items"]}
    pending = reviewer.search(dataset.id, include="suggestions")
    assert {r["external_id"] for r in pending} == {"p1", "p2", "p3", "p4"}
    p1 = next(r for r in pending if r["external_id"] == "p1")
    suggested = {s["value"] if isinstance(s["value"], str) else tuple(_ranked(s["value"])) for s in p1["suggestions"]}
    assert suggested == {"correct", tuple(RANKING)}

    ranking = [
        {"value": "solution_b", "rank": 1},
        {"value": "solution_a", "rank": 2},
        {"value": "solution_c", "rank": 3},
    ]
    created = reviewer.submit(p1["id"], {"verdict": "correct", "rank": ranking})
    assert created["status"] == "submitted" and created["user_id"] == reviewer.me["id"]

    # A reviewer outside the workspace may not answer.
    outsider = Annotator(url, *argilla_server.reviewers[1])
    denied = outsider.request(
        "POST", f"/api/v1/records/{p1['id']}/responses", json={"values": {}, "status": "discarded"}
    )
    assert denied.status_code == 403, denied.text

    # The owner's SDK reads the response back.
    ds = argilla_client.datasets(name=dataset.name, workspace=dataset.workspace)
    back = {r.id: r for r in ds.records(with_responses=True)}
    responses = back["p1"].responses
    assert [r.value for r in responses["verdict"]] == ["correct"]
    assert str(responses["verdict"][0].user_id) == reviewer.me["id"]
    assert responses["verdict"][0].status == "submitted"
    assert _ranked(responses["rank"][0].value) == ["solution_b", "solution_a", "solution_c"]
    assert len(back["p2"].responses) == 0
    # ... and the record is completed (min_submitted = 1), in the database and in the search index.
    assert back["p1"].status == "completed"
    assert _ids(ds.records(query=rg.Query(filter=rg.Filter(("status", "==", "completed"))))) == {"p1"}
    assert _ids(ds.records(query=rg.Query(filter=rg.Filter(("status", "==", "pending"))))) == {"p2", "p3", "p4"}


def test_text_search(dataset):
    assert _ids(dataset.records(query="fraction")) == {"p2"}
    assert _ids(dataset.records(query="apples")) == {"p1"}
    assert _ids(dataset.records(query="speed train")) == {"p4"}
    assert _ids(dataset.records(query="nonexistentword")) == set()


def test_filters_and_sort(argilla_server, dataset):
    def q(*conditions):
        return _ids(dataset.records(query=rg.Query(filter=rg.Filter(list(conditions)))))

    assert q(("metadata.source", "==", "math")) == {"p2", "p3"}
    assert q(("metadata.source", "in", ["gsm8k"])) == {"p1", "p4"}
    assert q(("metadata.difficulty", ">=", 3)) == {"p2", "p3"}
    assert q(("metadata.difficulty", "<=", 2)) == {"p1", "p4"}
    assert q(("verdict.suggestion", "==", "correct")) == {"p1", "p3"}
    assert q(("verdict.score", ">=", 0.5)) == {"p1", "p3"}
    assert q(("verdict.agent", "==", "judge-b")) == {"p2"}
    assert q(("metadata.source", "==", "math"), ("verdict.suggestion", "==", "correct")) == {"p3"}
    # Text query and filter together.
    combined = dataset.records(query=rg.Query(query="fraction", filter=rg.Filter(("metadata.source", "==", "math"))))
    assert _ids(combined) == {"p2"}

    # Sorting by a metadata property, over the REST API (the SDK has no sort argument).
    body = {"sort": [{"scope": {"entity": "metadata", "metadata_property": "difficulty"}, "order": "desc"}]}
    resp = requests.post(
        f"{argilla_server.url}/api/v1/datasets/{dataset.id}/records/search",
        json=body,
        headers={"X-Argilla-Api-Key": argilla_server.api_key},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    assert [i["record"]["external_id"] for i in resp.json()["items"]] == ["p3", "p2", "p4", "p1"]


def test_vector_similarity(dataset):
    """osmem has no knn query: ScriptlessOpenSearchEngine ranks by exact cosine similarity instead."""
    p1 = next(r for r in dataset.records(query=rg.Query(filter=rg.Filter(("id", "==", "p1")))))
    similar = list(dataset.records(query=rg.Query(similar=rg.Similar(name="emb", value=p1))))  # (record, score)
    assert [r.id for r, _ in similar][0] == "p4" and "p1" not in {r.id for r, _ in similar}
    scores = [score for _, score in similar]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    least = [
        r.id for r, _ in dataset.records(query=rg.Query(similar=rg.Similar("emb", [1.0, 0, 0], most_similar=False)))
    ]
    assert set(least[:2]) == {"p2", "p3"} and least[2:] == ["p4", "p1"]
    # A filter narrows the candidates.
    filtered = dataset.records(
        query=rg.Query(similar=rg.Similar("emb", [1.0, 0, 0]), filter=rg.Filter(("metadata.source", "==", "math")))
    )
    assert sorted(r.id for r, _ in filtered) == ["p2", "p3"]


def test_response_update_and_delete_reach_the_index(argilla_server, dataset):
    """Response create/update/delete go through the scriptless engine; the index must follow each step."""
    reviewer = Annotator(argilla_server.url, *argilla_server.reviewers[0])
    ids = _server_ids(dataset)

    def mine(status: str) -> set[str]:
        found = reviewer.search(dataset.id, {"filters": {"and": [_terms("response", [status], property="status")]}})
        return {r["external_id"] for r in found}

    def by_my_verdict(value: str) -> set[str]:
        found = reviewer.search(dataset.id, {"filters": {"and": [_terms("response", [value], question="verdict")]}})
        return {r["external_id"] for r in found}

    first = reviewer.submit(ids["p3"], {"verdict": "correct"})
    reviewer.submit(ids["p4"], {"verdict": "incorrect"}, status="draft")
    assert mine("submitted") == {"p3"}
    assert mine("draft") == {"p4"}
    assert by_my_verdict("correct") == {"p3"}

    # Update: the response keeps its id; the indexed value changes and no duplicate appears.
    updated = reviewer.request(
        "PUT",
        f"/api/v1/responses/{first['id']}",
        json={"values": {"verdict": {"value": "incorrect"}}, "status": "submitted"},
        expect=200,
    ).json()
    assert updated["id"] == first["id"]
    assert by_my_verdict("correct") == set()
    assert by_my_verdict("incorrect") == {"p3", "p4"}

    # Delete: the record goes back to pending and has no response left.
    reviewer.request("DELETE", f"/api/v1/responses/{first['id']}", expect=200)
    assert mine("submitted") == set()
    assert by_my_verdict("incorrect") == {"p4"}
    pending = reviewer.search(dataset.id, {"filters": {"and": [_terms("record", ["pending"], property="status")]}})
    assert {r["external_id"] for r in pending} == {"p1", "p2", "p3", "p4"}

    # Two reviewers' responses on one record are kept side by side (read-modify-write keeps the other's entry).
    owner_headers = {"X-Argilla-Api-Key": argilla_server.api_key}
    owner_resp = requests.post(
        f"{argilla_server.url}/api/v1/records/{ids['p4']}/responses",
        json={"values": {"verdict": {"value": "correct"}}, "status": "submitted"},
        headers=owner_headers,
        timeout=30,
    )
    assert owner_resp.status_code == 201, owner_resp.text
    assert mine("draft") == {"p4"}  # the reviewer's draft is still indexed next to the owner's response


def test_suggestion_delete_reaches_the_index(argilla_server, dataset):
    headers = {"X-Argilla-Api-Key": argilla_server.api_key}
    ids = _server_ids(dataset)
    url = argilla_server.url

    def with_verdict_suggestion(value: str) -> set[str]:
        return _ids(dataset.records(query=rg.Query(filter=rg.Filter(("verdict.suggestion", "==", value)))))

    assert with_verdict_suggestion("correct") == {"p1", "p3"}
    suggestions = requests.get(f"{url}/api/v1/records/{ids['p1']}/suggestions", headers=headers, timeout=30).json()
    questions = {q.name: str(q._model.id) for q in dataset.settings.questions}
    verdict = next(s for s in suggestions["items"] if s["question_id"] == questions["verdict"])
    resp = requests.delete(
        f"{url}/api/v1/records/{ids['p1']}/suggestions", params={"ids": verdict["id"]}, headers=headers, timeout=30
    )
    assert resp.status_code == 204, resp.text
    assert with_verdict_suggestion("correct") == {"p3"}
    # The ranking suggestion of p1 is still there.
    back = next(r for r in dataset.records(query=rg.Query(filter=rg.Filter(("id", "==", "p1")))))
    assert {s.question_name for s in back.suggestions} == {"rank"}


def test_progress_aggregations(argilla_server, dataset):
    reviewer = Annotator(argilla_server.url, *argilla_server.reviewers[0])
    ids = _server_ids(dataset)
    reviewer.submit(ids["p1"], {"verdict": "correct"})
    reviewer.submit(ids["p2"], {}, status="discarded")
    progress = reviewer.get(f"/api/v1/datasets/{dataset.id}/progress")
    assert progress["total"] == 4 and progress["completed"] == 1 and progress["pending"] == 3
    metrics = reviewer.get(f"/api/v1/me/datasets/{dataset.id}/metrics")
    assert metrics["responses"]["submitted"] == 1 and metrics["responses"]["discarded"] == 1
    assert metrics["responses"]["total"] == 4 and metrics["responses"]["pending"] == 2  # total = records


def test_restart_reindexes_from_database(argilla_server, dataset, tmp_path):
    """A second server on a copy of the SQLite database finds the records: start() reindexed osmem from it."""
    from evolkit.review.server import LocalArgilla

    reviewer = Annotator(argilla_server.url, *argilla_server.reviewers[0])
    ids = _server_ids(dataset)
    reviewer.submit(ids["p2"], {"verdict": "incorrect"})

    workdir = tmp_path / "copy"
    (workdir / "argilla").mkdir(parents=True)
    src = sqlite3.connect(Path(argilla_server.workdir) / "argilla" / "argilla.db")
    dst = sqlite3.connect(workdir / "argilla" / "argilla.db")
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    shutil.copy(Path(argilla_server.workdir) / "credentials.json", workdir / "credentials.json")

    with LocalArgilla(workdir) as second:
        assert second.api_key == argilla_server.api_key  # same owner, key kept
        assert second.reviewers == argilla_server.reviewers
        assert "reindexed" in second.log_paths["argilla"].read_text()
        client = rg.Argilla(api_url=second.url, api_key=second.api_key)
        ds = client.datasets(name=dataset.name, workspace=dataset.workspace.name)
        assert _ids(ds.records(query="fraction")) == {"p2"}
        assert _ids(ds.records(query=rg.Query(filter=rg.Filter(("status", "==", "completed"))))) == {"p2"}
        again = Annotator(second.url, *second.reviewers[0])
        found = again.search(ds.id, {"filters": {"and": [_terms("response", ["incorrect"], question="verdict")]}})
        assert {r["external_id"] for r in found} == {"p2"}
    assert not second.running
