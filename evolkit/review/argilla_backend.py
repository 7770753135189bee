"""The Argilla 2.x implementation of :class:`evolkit.review.adapter.ReviewBackend` (``argilla`` is imported lazily).

Dataset designs (guidelines: :data:`evolkit.review.adapter.IRM_GUIDELINES` / ``PRM_GUIDELINES``):

* **IRM** (one record per ranked instruction): fields ``instruction`` and ``version_A`` ... (markdown; versions beyond
  the record's count are left out); questions ``ranking`` (RankingQuestion over the version ids, one slot per version
  the dataset was created with) and ``comment`` (optional text); metadata ``source``, ``round``, ``operation``,
  ``evolver``, ``judge_confidence``, ``versions``, ``consistent``. The judge's ranking is a suggestion with the judge
  model as agent and its confidence as score.
* **PRM, layout solution** (the default; one record per solution): fields ``problem`` (figure code folded) and
  ``solution`` (numbered steps); questions ``first_error`` (LabelQuestion: ``1`` ... ``N`` = "Step k", then ``none`` =
  "No incorrect step", so the keyboard shortcut of "Step k" is k; N = the longest solution the dataset was created
  for) and ``justification`` (optional text); metadata ``source``, ``round``, ``operation``, ``judge_confidence``,
  ``n_steps``, ``final_correct``, ``judge_first_error``, ``other_first_error`` (the other labeller's, when both ran).
  The judge's first incorrect step is the suggestion (agent, score = its confidence).
* **PRM, layout step** (one record per solution step): fields ``problem``, ``previous_steps``, ``step``; questions
  ``label`` (LabelQuestion correct / incorrect / neutral) and ``justification`` (optional text); metadata ``source``,
  ``round``, ``operation``, ``judge_confidence``, ``step_number``, ``n_steps``, ``final_correct``, ``solution``. The
  judge's label is a suggestion (agent, score = its confidence when it gave one).

Every dataset also has metadata ``review_order`` (1 = least certain, see :mod:`evolkit.review.priority`),
``uncertainty`` and ``why``. Argilla 2.8 shows each annotator the pending records in an order of its own (a random
score seeded by the user id) unless a sort is chosen, so the dataset link evolkit prints carries the sort
(``?sort=metadata.review_order.asc``) and the guidelines tell reviewers to keep it.

Records are keyed by evolkit's item id (Argilla's ``external_id``), so ``records.log`` upserts: pushing again updates
fields, metadata and suggestions and keeps reviewers' responses; nothing is duplicated. The hash of what reviewers see
is stored as extra metadata ``content_hash`` so ``pull`` can tell answers to an older version of a record.

Responses are read over Argilla's REST API (``GET /api/v1/datasets/{id}/records?include=responses``, through the SDK's
authenticated HTTP client) because the SDK's record objects drop responses that hold no values (discarded records).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

from ..errors import EvolkitError
from .adapter import (
    IRM_GUIDELINES,
    PRM_GUIDELINES,
    PRM_SOLUTION_GUIDELINES,
    VERSION_IDS,
    ItemResponses,
    Kind,
    Layout,
    PushResult,
    Response,
    ReviewItem,
)
from .markdown import fold_figures, numbered_steps

log = logging.getLogger("evolkit.review")

URL_ENV = "ARGILLA_API_URL"
KEY_ENV = "ARGILLA_API_KEY"
WORKSPACE_ENV = "ARGILLA_WORKSPACE"
DEFAULT_WORKSPACE = "evolkit"
PAGE = 500
NO_ERROR = "none"  # the first_error option "No incorrect step"


class ReviewError(EvolkitError):
    """The review server is missing, unreachable, refuses the key, or a dataset does not fit."""


@dataclass
class Connection:
    url: str
    api_key: str
    workspace: str | None = None


def connection(url: str | None = None, api_key: str | None = None, workspace: str | None = None,
               api_key_env: str = KEY_ENV, timeout: float = 10.0) -> Connection:
    """Connection settings from the arguments, else ``ARGILLA_API_URL`` / ``ARGILLA_API_KEY`` / ``ARGILLA_WORKSPACE``;
    checks that the server answers and accepts the key (clear :class:`ReviewError` otherwise)."""
    import requests

    url = (url or os.environ.get(URL_ENV) or "").rstrip("/")
    key = api_key or os.environ.get(api_key_env) or ""
    workspace = workspace or os.environ.get(WORKSPACE_ENV) or None
    if not url:
        raise ReviewError(
            f"no Argilla server configured: set {URL_ENV} and {KEY_ENV} (or pass --api-url, and the key in "
            f"{api_key_env}); for a local server run `evolkit review serve`"
        )
    if not key:
        raise ReviewError(f"no Argilla API key: set {api_key_env} (the owner's or an admin's key)")
    try:
        resp = requests.get(f"{url}/api/v1/status", timeout=timeout)
    except requests.RequestException as e:
        raise ReviewError(f"cannot reach Argilla at {url}: {type(e).__name__}: {e}. Is the server running? "
                          f"(`evolkit review serve` starts a local one)") from None
    if resp.status_code != 200:
        raise ReviewError(f"{url}/api/v1/status answered HTTP {resp.status_code}: is {url} an Argilla 2.x server?")
    me = requests.get(f"{url}/api/v1/me", headers={"X-Argilla-Api-Key": key}, timeout=timeout)
    if me.status_code in (401, 403):
        raise ReviewError(f"Argilla at {url} rejected the API key (HTTP {me.status_code}); check {api_key_env}")
    if me.status_code != 200:
        raise ReviewError(f"Argilla at {url}: GET /api/v1/me answered HTTP {me.status_code}: {me.text[:200]}")
    return Connection(url, key, workspace)


class ArgillaReview:
    """Push and pull evolkit review items on an Argilla 2.x server."""

    def __init__(self, conn: Connection):
        import argilla as rg
        from argilla._exceptions import ArgillaError

        self.rg = rg
        self.sdk_error = ArgillaError
        self.conn = conn
        logging.getLogger("argilla.sdk").setLevel(logging.WARNING)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.WARNING)  # the SDK logs "Logged in as ..." on the root logger
        try:
            self.client = rg.Argilla(api_url=conn.url, api_key=conn.api_key)
        finally:
            root.setLevel(level)

    # ------------------------------------------------------------------------------------------ lookups
    def workspace(self, name: str | None = None, create: bool = True) -> Any:
        rg = self.rg
        name = name or self.conn.workspace
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if name:
                ws = self.client.workspaces(name)
                if ws is None:
                    if not create:
                        raise ReviewError(f"Argilla workspace {name!r} does not exist")
                    ws = rg.Workspace(name=name, client=self.client).create()
                    log.warning("created Argilla workspace %r: add the reviewers to it (workspace.add_user)", name)
                return ws
            ws = self.client.workspaces(DEFAULT_WORKSPACE)
            if ws is not None:
                return ws
            all_ws = list(self.client.workspaces)
            if all_ws:
                return all_ws[0]
            if not create:
                raise ReviewError("this Argilla server has no workspace")
            return rg.Workspace(name=DEFAULT_WORKSPACE, client=self.client).create()

    def dataset(self, name: str, workspace: str | None = None) -> Any | None:
        ws = self.workspace(workspace, create=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.client.datasets(name=name, workspace=ws)

    def dataset_url(self, ds: Any, sort: bool = True) -> str:
        """The dataset's annotation page; with ``sort`` the least certain records first (step layout: in step order)."""
        url = f"{self.conn.url}/dataset/{ds.id}/annotation-mode"
        if not sort:
            return url
        keys = ["metadata.review_order.asc"]  # the web UI's `sort` query: entity.name.order, joined by "~"
        if "step_number" in {m.name for m in ds.settings.metadata}:
            keys.append("metadata.step_number.asc")
        return f"{url}?sort={'~'.join(keys)}"

    # ------------------------------------------------------------------------------------------ settings
    @staticmethod
    def _solution_metadata() -> list[Any]:
        """The metadata every PRM record carries: where its solution comes from and how sure the judge was."""
        import argilla as rg

        return [
            rg.TermsMetadataProperty(name="source", title="Solution source"),
            rg.IntegerMetadataProperty(name="round", title="Evolution round"),
            rg.TermsMetadataProperty(name="operation", title="Evolution operation"),
            rg.FloatMetadataProperty(name="judge_confidence", title="Judge confidence", min=0.0, max=1.0),
        ]

    def _priority_metadata(self) -> list[Any]:
        rg = self.rg
        return [
            rg.IntegerMetadataProperty(name="review_order", title="Review order (1 = least certain)"),
            rg.FloatMetadataProperty(name="uncertainty", title="Judge uncertainty"),
            rg.TermsMetadataProperty(name="why", title="Why reviewed early"),
        ]

    def settings(self, kind: Kind, n_versions: int = 4, min_submitted: int = 1, allow_neutral: bool = True,
                 layout: Layout = "solution", n_steps: int = 2) -> Any:
        rg = self.rg
        if kind == "irm":
            ids = VERSION_IDS[:n_versions]
            fields = [rg.TextField(name="instruction", title="Original problem", use_markdown=True)]
            fields += [rg.TextField(name=f"version_{v}", title=f"Version {v}", use_markdown=True, required=i < 2)
                       for i, v in enumerate(ids)]
            questions = [
                rg.RankingQuestion(name="ranking", title="Rank the versions (1 = best)",
                                   values={v: f"Version {v}" for v in ids},
                                   description="Definition, precision, integrity; an empty version goes last."),
                rg.TextQuestion(name="comment", title="Comment (optional)", required=False),
            ]
            metadata = [
                rg.TermsMetadataProperty(name="source", title="Instruction source"),
                rg.IntegerMetadataProperty(name="round", title="Evolution round"),
                rg.TermsMetadataProperty(name="operation", title="Evolution operations"),
                rg.TermsMetadataProperty(name="evolver", title="Evolvers"),
                rg.FloatMetadataProperty(name="judge_confidence", title="Judge confidence", min=0.0, max=1.0),
                rg.IntegerMetadataProperty(name="versions", title="Number of versions"),
                rg.TermsMetadataProperty(name="consistent", title="Judge consistent in both orders"),
            ]
            text = IRM_GUIDELINES
        elif layout == "solution":
            labels = {str(k): f"Step {k}" for k in range(1, n_steps + 1)}
            labels[NO_ERROR] = "No incorrect step"
            fields = [
                rg.TextField(name="problem", title="Problem", use_markdown=True),
                rg.TextField(name="solution", title="Solution (steps numbered)", use_markdown=True),
            ]
            questions = [
                rg.LabelQuestion(name="first_error", title="First incorrect step", labels=labels,
                                 description="The number of the first wrong step, or 'No incorrect step'."),
                rg.TextQuestion(name="justification", title="Why? (say what is wrong, or why you override the model)",
                                required=False),
            ]
            metadata = [
                *self._solution_metadata(),
                rg.IntegerMetadataProperty(name="n_steps", title="Steps in the solution"),
                rg.TermsMetadataProperty(name="final_correct", title="Final answer correct"),
                rg.IntegerMetadataProperty(name="judge_first_error", title="Judge's first incorrect step (0 = none)"),
                rg.IntegerMetadataProperty(name="other_first_error", title="Other labeller's first incorrect step"),
            ]
            text = PRM_SOLUTION_GUIDELINES
        else:
            labels = {"correct": "Correct", "incorrect": "Incorrect"}
            if allow_neutral:
                labels["neutral"] = "Neutral"
            fields = [
                rg.TextField(name="problem", title="Problem", use_markdown=True),
                rg.TextField(name="previous_steps", title="Earlier steps (context)", use_markdown=True),
                rg.TextField(name="step", title="Step to label", use_markdown=True),
            ]
            questions = [
                rg.LabelQuestion(name="label", title="Is this step correct?", labels=labels),
                rg.TextQuestion(name="justification", title="Why? (say what is wrong, or why you override the model)",
                                required=False),
            ]
            metadata = [
                *self._solution_metadata(),
                rg.IntegerMetadataProperty(name="step_number", title="Step number"),
                rg.IntegerMetadataProperty(name="n_steps", title="Steps in the solution"),
                rg.TermsMetadataProperty(name="final_correct", title="Final answer correct"),
                rg.TermsMetadataProperty(name="solution", title="Solution id"),
            ]
            text = PRM_GUIDELINES
        return rg.Settings(fields=fields, questions=questions, metadata=metadata + self._priority_metadata(),
                           guidelines=text, allow_extra_metadata=True,
                           distribution=rg.TaskDistribution(min_submitted=min_submitted))

    @staticmethod
    def layout_of(ds: Any) -> Layout | None:
        """``solution`` / ``step`` for an evolkit PRM review dataset (by its question), None otherwise."""
        names = {q.name for q in ds.settings.questions}
        return "solution" if "first_error" in names else "step" if "label" in names else None

    def _check_compatible(self, kind: Kind, ds: Any, n_versions: int, layout: Layout = "solution",
                          n_steps: int = 0) -> None:
        questions = {q.name: q for q in ds.settings.questions}
        fields = {f.name for f in ds.settings.fields}
        if kind == "irm":
            need_q, need_f = "ranking", {"instruction"}
        elif layout == "solution":
            need_q, need_f = "first_error", {"problem", "solution"}
        else:
            need_q, need_f = "label", {"problem", "previous_steps", "step"}
        if need_q not in questions or not need_f <= fields:
            what = kind.upper() + ("" if kind == "irm" else f" ({layout} layout)")
            raise ReviewError(f"Argilla dataset {ds.name!r} exists but is not an evolkit {what} review dataset "
                              f"(questions {sorted(questions)}, fields {sorted(fields)}); choose another --name")
        if kind == "irm":
            slots = len(questions["ranking"].values)
            if n_versions > slots:
                raise ReviewError(f"Argilla dataset {ds.name!r} ranks {slots} versions but this push has records with "
                                  f"{n_versions}; push to a new dataset (--name)")
        elif layout == "solution":
            options = len([x for x in questions["first_error"].labels if x != NO_ERROR])
            if n_steps > options:
                raise ReviewError(f"Argilla dataset {ds.name!r} offers steps 1-{options} but this push has solutions "
                                  f"with {n_steps} steps; push to a new dataset (--name)")

    def _ensure_metadata(self, ds: Any) -> None:
        """Add the ordering metadata properties to a dataset created before they existed (so the UI can sort)."""
        have = {m.name for m in ds.settings.metadata}
        http = self.client.api.http_client
        types = {"review_order": ("integer", "Review order (1 = least certain)"),
                 "uncertainty": ("float", "Judge uncertainty"), "why": ("terms", "Why reviewed early")}
        added = False
        for name, (typ, title) in types.items():
            if name in have:
                continue
            resp = http.post(f"/api/v1/datasets/{ds.id}/metadata-properties",
                             json={"name": name, "title": title, "settings": {"type": typ},
                                   "visible_for_annotators": True})
            if resp.status_code != 201:
                raise ReviewError(f"adding metadata property {name!r} to {ds.name!r} failed: HTTP {resp.status_code} "
                                  f"{resp.text[:200]}")
            added = True
        if added:
            ds.settings.get()

    # ------------------------------------------------------------------------------------------ records
    def _record(self, kind: Kind, item: ReviewItem, slots: int) -> Any:
        rg = self.rg
        c = item.content
        floats = ("judge_confidence", "uncertainty")
        meta = {k: (float(v) if k in floats and v is not None else v) for k, v in item.metadata.items()}
        meta = {k: v for k, v in meta.items() if v is not None and v != []}
        meta["content_hash"] = item.content_hash
        if kind == "irm":
            fields = {"instruction": fold_figures(c["instruction"])}
            fields.update({f"version_{v}": fold_figures(t) for v, t in c["versions"].items()})
            ranked = sorted(item.suggestion["ranking"], key=lambda v: (item.suggestion["ranking"][v], v))
            empty = [v for v in VERSION_IDS[:slots] if v not in item.suggestion["ranking"]]
            value = ranked + empty
            score = [float(item.score)] * len(value) if item.score is not None else None
            sugg = [rg.Suggestion(question_name="ranking", value=value, score=score, agent=item.agent)]
        elif "steps" in c:
            fields = {"problem": fold_figures(c["problem"]), "solution": numbered_steps(c["steps"])}
            fe = int(item.suggestion["first_error"])
            score = float(item.score) if item.score is not None else None
            sugg = [rg.Suggestion(question_name="first_error", value=str(fe) if fe else NO_ERROR, score=score,
                                  agent=item.agent)]
        else:
            fields = {"problem": c["problem"], "previous_steps": c["previous_steps"],
                      "step": f"**Step {c['position'].replace('/', ' of ')}**\n\n{c['step']}"}
            score = float(item.score) if item.score is not None else None
            sugg = [rg.Suggestion(question_name="label", value=item.suggestion["label"], score=score, agent=item.agent)]
        return rg.Record(id=item.id, fields=fields, metadata=meta, suggestions=sugg)

    def _put_ranking_suggestions(self, ds: Any, items: list[ReviewItem], slots: int) -> None:
        """The judge's ranking with its ranks. The SDK (2.8) sends a ranking suggestion as the version ids in order,
        which the server stores with every rank empty, so the web UI shows no suggested rank; this upserts the
        suggestions again over the REST API (records by external id), ranks included (ties kept, empty versions
        last)."""
        http = self.client.api.http_client
        qid = str(ds.settings.questions["ranking"]._model.id)
        body = []
        for it in items:
            ranking = it.suggestion["ranking"]
            worst = max(ranking.values()) + 1
            value = [{"value": v, "rank": ranking.get(v, worst)} for v in VERSION_IDS[:slots]]
            value.sort(key=lambda x: (x["rank"], x["value"]))
            sugg: dict[str, Any] = {"question_id": qid, "value": value, "agent": it.agent}
            if it.score is not None:
                sugg["score"] = [float(it.score)] * len(value)
            body.append({"external_id": it.id, "suggestions": [sugg]})
        for i in range(0, len(body), PAGE):
            resp = http.put(f"/api/v1/datasets/{ds.id}/records/bulk", json={"items": body[i:i + PAGE]})
            if resp.status_code != 200:
                raise ReviewError(f"setting the judge's rankings on {ds.name!r} failed: HTTP {resp.status_code} "
                                  f"{resp.text[:300]}")

    def existing_ids(self, ds: Any) -> set[str]:
        return {it["external_id"] for it in self._iter_records(ds, include=())}

    def _iter_records(self, ds: Any, include: tuple[str, ...] = ("responses",)) -> Any:
        http = self.client.api.http_client
        offset = 0
        while True:
            params: dict[str, Any] = {"offset": offset, "limit": PAGE}
            if include:
                params["include"] = list(include)
            resp = http.get(f"/api/v1/datasets/{ds.id}/records", params=params)
            if resp.status_code != 200:
                raise ReviewError(f"listing records of {ds.name!r} failed: HTTP {resp.status_code} {resp.text[:200]}")
            items = resp.json().get("items", [])
            yield from items
            if len(items) < PAGE:
                return
            offset += PAGE

    def push(self, kind: Kind, items: list[ReviewItem], *, dataset: str, workspace: str | None = None,
             guidelines: str = "", min_submitted: int = 1, allow_neutral: bool = True,
             layout: Layout = "solution") -> PushResult:
        try:
            return self._push(kind, items, dataset, workspace, guidelines, min_submitted, allow_neutral, layout)
        except self.sdk_error as e:
            raise ReviewError(f"Argilla refused the push of {kind} to {dataset!r}: {e}") from None

    def _push(self, kind: Kind, items: list[ReviewItem], dataset: str, workspace: str | None, guidelines: str,
              min_submitted: int, allow_neutral: bool, layout: Layout) -> PushResult:
        rg = self.rg
        ws = self.workspace(workspace)
        n_versions = max((len(i.content["versions"]) for i in items), default=2) if kind == "irm" else 0
        n_steps = max((len(i.content["steps"]) for i in items if "steps" in i.content), default=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = self.client.datasets(name=dataset, workspace=ws)
        created_ds = ds is None
        default_text = IRM_GUIDELINES if kind == "irm" else (
            PRM_SOLUTION_GUIDELINES if layout == "solution" else PRM_GUIDELINES)
        if ds is None:
            settings = self.settings(kind, max(2, n_versions), min_submitted, allow_neutral, layout, max(2, n_steps))
            if guidelines:
                settings.guidelines = guidelines
            ds = rg.Dataset(name=dataset, workspace=ws, settings=settings, client=self.client).create()
            existing: set[str] = set()
        else:
            self._check_compatible(kind, ds, n_versions, layout, n_steps)
            self._ensure_metadata(ds)
            existing = self.existing_ids(ds)
            text = guidelines or default_text
            if (ds.settings.guidelines or "").strip() != text.strip():
                ds.settings.guidelines = text
                ds.settings.update()
        slots = len(ds.settings.questions["ranking"].values) if kind == "irm" else 0
        records = [self._record(kind, it, slots) for it in items]
        if records:
            ds.records.log(records)
        if kind == "irm" and items:
            self._put_ranking_suggestions(ds, items, slots)
        ids = {it.id for it in items}
        return PushResult(dataset=dataset, workspace=ws.name, url=self.dataset_url(ds),
                          created=len(ids - existing), updated=len(ids & existing), dataset_created=created_ds,
                          total=len(existing | ids))

    def pull(self, kind: Kind, *, dataset: str, workspace: str | None = None) -> list[ItemResponses]:
        try:
            return self._pull(kind, dataset, workspace)
        except self.sdk_error as e:
            raise ReviewError(f"Argilla: pulling {dataset!r} failed: {e}") from None

    def _pull(self, kind: Kind, dataset: str, workspace: str | None) -> list[ItemResponses]:
        ds = self.dataset(dataset, workspace)
        if ds is None:
            raise ReviewError(f"no Argilla dataset {dataset!r} in workspace "
                              f"{workspace or self.conn.workspace or DEFAULT_WORKSPACE!r}: push it first")
        users = {str(u.id): u.username for u in self.client.users}
        layout = self.layout_of(ds) if kind == "prm" else None
        out = []
        for rec in self._iter_records(ds):
            meta = rec.get("metadata") or {}
            # the versions this record shows: a ranking slot beyond them is an empty version, not an answer
            fields = rec.get("fields")
            shown = ({k[len("version_"):] for k, t in fields.items() if k.startswith("version_") and t}
                     if kind == "irm" and isinstance(fields, dict) else None)
            responses = []
            for r in rec.get("responses") or []:
                values = r.get("values") or {}
                user = users.get(str(r.get("user_id")), str(r.get("user_id")))
                resp = Response(user=user, status=r.get("status"), updated_at=r.get("updated_at"))
                if kind == "irm":
                    v = (values.get("ranking") or {}).get("value")
                    if v:
                        resp.ranking = {x["value"]: int(x["rank"]) for x in v if x.get("rank") is not None
                                        and (shown is None or x["value"] in shown)}
                    resp.comment = (values.get("comment") or {}).get("value")
                elif layout == "solution":
                    v = (values.get("first_error") or {}).get("value")
                    if v is not None and (v == NO_ERROR or str(v).isdigit()):
                        resp.first_error = 0 if v == NO_ERROR else int(v)
                    resp.comment = (values.get("justification") or {}).get("value")
                else:
                    resp.label = (values.get("label") or {}).get("value")
                    resp.comment = (values.get("justification") or {}).get("value")
                responses.append(resp)
            out.append(ItemResponses(id=rec["external_id"], content_hash=meta.get("content_hash"), responses=responses))
        return out
