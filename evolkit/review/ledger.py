"""Every reviewer answer pulled so far, kept in the run folder (``review/<kind>_answers``); each pull merges into it.

One row per (record id, reviewer): the answer's status and value, the hash of the record content it answers, when the
tool last changed it and when pulls saw it. Merging a new pull:

* an answer the tool still has replaces the stored one when it changed (the reviewer edited it) and is left as it is
  otherwise, so nothing is counted twice however often one pulls;
* an answer stored earlier that the tool no longer returns (a dataset deleted and pushed again, a server that lost its
  database) is **kept** and still counts, with ``on_server`` false: a pull never loses an answer;
* an unchanged answer keeps the content hash it was first pulled with, so an answer given before a later push changed
  the record is recognised as stale even after the push.
"""

from __future__ import annotations

import json
from typing import Any

from .adapter import ItemResponses, Response


def _value(r: Response) -> dict[str, Any]:
    return {"status": r.status, "ranking_json": json.dumps(r.ranking, sort_keys=True) if r.ranking else None,
            "label": r.label, "first_error": r.first_error, "comment": r.comment}


def merge(previous: list[dict[str, Any]], pulled: list[ItemResponses], now: str) -> tuple[list[dict[str, Any]],
                                                                                            dict[str, int]]:
    """(merged answer rows, counts ``new`` / ``changed`` / ``unchanged`` / ``kept_from_earlier_pull``)."""
    prev = {(r["id"], r["user"]): r for r in previous}
    seen: set[tuple[str, str]] = set()
    counts = {"new": 0, "changed": 0, "unchanged": 0, "kept_from_earlier_pull": 0}
    rows = []
    for item in pulled:
        for r in item.responses:
            key = (item.id, r.user)
            if key in seen:  # one answer per reviewer and record: a tool that repeats one must not double it
                continue
            seen.add(key)
            value = _value(r)
            old = prev.get(key)
            row = {"id": item.id, "user": r.user, **value, "content_hash": r.content_hash or item.content_hash,
                   "updated_at": r.updated_at, "first_pulled": now, "last_pulled": now, "on_server": True}
            if old is None:
                counts["new"] += 1
            elif all(old.get(k) == v for k, v in value.items()) and old.get("updated_at") == r.updated_at:
                counts["unchanged"] += 1
                row["content_hash"] = old.get("content_hash") or row["content_hash"]
                row["first_pulled"] = old.get("first_pulled") or now
            else:
                counts["changed"] += 1
                row["first_pulled"] = old.get("first_pulled") or now
            rows.append(row)
    for key, old in prev.items():
        if key not in seen:
            counts["kept_from_earlier_pull"] += 1
            rows.append({**old, "on_server": False})
    return sorted(rows, key=lambda r: (r["id"], r["user"])), counts


def responses(rows: list[dict[str, Any]]) -> list[ItemResponses]:
    """The ledger as the adapter's :class:`ItemResponses` (each answer with the content hash it was given to)."""
    by_id: dict[str, ItemResponses] = {}
    for row in rows:
        ir = by_id.setdefault(row["id"], ItemResponses(id=row["id"], content_hash=None))
        ir.responses.append(Response(
            user=row["user"], status=row["status"],
            ranking=json.loads(row["ranking_json"]) if row.get("ranking_json") else None,
            label=row.get("label"), comment=row.get("comment"),
            first_error=int(row["first_error"]) if row.get("first_error") is not None else None,
            updated_at=row.get("updated_at"), content_hash=row.get("content_hash")))
    return list(by_id.values())
