"""An Argilla OpenSearch engine that never sends Painless scripts (for the osmem in-memory search engine).

Imported ONLY inside the argilla-server venv (``.cache/argilla-venv``) by ``_argilla_entry.py``; the project venv never
imports it (it needs ``argilla_server`` and ``opensearchpy``, which live only in that venv).

Why: argilla-server 2.8's ``BaseElasticAndOpenSearchEngine`` updates a record document with a Painless script when a
response is created/updated/deleted (``update_record_response`` / ``delete_record_response``) and when a suggestion is
deleted (``delete_record_suggestion``). osmem (``osmem-server``) answers ``update with script is not supported`` (HTTP
400), so submitting a response would fail. This subclass does the same three edits as *read, modify, re-index* of the
document's ``_source``, guarded by optimistic concurrency control (``if_seq_no`` / ``if_primary_term``, which osmem
honours) and retried on a version conflict, so concurrent writers on one record do not lose each other's edits.

osmem also has no ``knn`` query, which Argilla's "find similar records" (vector similarity search) sends; this class
answers it by scanning the candidate documents' vectors (``_source``) and ranking them by cosine similarity in Python,
with OpenSearch's ``cosinesimil`` score ``(1 + cos) / 2``. That is exact (not approximate HNSW) and linear in the
dataset size, fine for review datasets of up to some ten thousand records.

Everything else (index creation, bulk indexing, partial ``{"doc": ...}`` updates, searches) is inherited unchanged.
``install()`` registers the subclass under the ``opensearch`` engine name, replacing Argilla's class in
``SearchEngine.registered_classes``; every ``SearchEngine.get_by_name("opensearch")`` call after that gets it.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from typing import Any, Callable, Dict, List, Optional
from uuid import UUID

from argilla_server.constants import SEARCH_ENGINE_OPENSEARCH
from argilla_server.models import Response, Suggestion, VectorSettings
from argilla_server.search_engine.base import SearchEngine
from argilla_server.search_engine.commons import es_field_for_vector_settings, es_ids_query, es_index_name_for_dataset
from argilla_server.search_engine.opensearch import OpenSearchEngine
from opensearchpy.exceptions import ConflictError

_LOGGER = logging.getLogger("evolkit.review.argilla_engine")

#: How often a read-modify-write is retried when another writer changed the document in between.
MAX_CONFLICT_RETRIES = 20
#: Similarity search scans the candidate documents in pages of this size, and at most SIMILARITY_MAX_SCAN of them.
SIMILARITY_PAGE = 1000
SIMILARITY_MAX_SCAN = 200_000

SourceEditor = Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]


class ScriptlessOpenSearchEngine(OpenSearchEngine):
    """Argilla's ``OpenSearchEngine`` with the three script-based document updates done without scripts."""

    async def _edit_document_source(self, index_name: str, doc_id: str, edit: SourceEditor) -> None:
        """Apply ``edit`` to the stored ``_source`` of one document and write it back (optimistic locking).

        ``edit`` gets a mutable copy of the source and returns the new source, or ``None`` when nothing changes.
        A missing document raises ``opensearchpy.NotFoundError``, as the scripted ``update`` call would.
        """
        for attempt in range(MAX_CONFLICT_RETRIES):
            doc = await self.client.get(index=index_name, id=doc_id)
            source = edit(dict(doc.get("_source") or {}))
            if source is None:
                return
            try:
                await self.client.index(
                    index=index_name,
                    id=doc_id,
                    body=source,
                    if_seq_no=doc["_seq_no"],
                    if_primary_term=doc["_primary_term"],
                    refresh=True,
                )
                return
            except ConflictError:
                _LOGGER.debug("version conflict on %s/%s (attempt %d), retrying", index_name, doc_id, attempt + 1)
                await asyncio.sleep(0.01 * (attempt + 1))
        raise RuntimeError(f"could not update {index_name}/{doc_id}: {MAX_CONFLICT_RETRIES} version conflicts in a row")

    async def update_record_response(self, response: Response) -> None:
        record = response.record
        es_response = self._map_record_response_to_es(response)
        response_id = str(es_response["id"])

        def edit(source: Dict[str, Any]) -> Dict[str, Any]:
            # Same effect as Argilla's script: drop any response with this id, then append the new one.
            kept = [r for r in (source.get("responses") or []) if str(r.get("id")) != response_id]
            source["responses"] = [*kept, es_response]
            return source

        await self._edit_document_source(es_index_name_for_dataset(record.dataset), str(record.id), edit)

    async def delete_record_response(self, response: Response) -> None:
        record = response.record
        response_id = str(response.id)

        def edit(source: Dict[str, Any]) -> Optional[Dict[str, Any]]:
            responses = source.get("responses")
            if not responses:
                return None
            kept = [r for r in responses if str(r.get("id")) != response_id]
            if len(kept) == len(responses):
                return None
            source["responses"] = kept
            return source

        await self._edit_document_source(es_index_name_for_dataset(record.dataset), str(record.id), edit)

    async def delete_record_suggestion(self, suggestion: Suggestion) -> None:
        question_name = suggestion.question.name

        def edit(source: Dict[str, Any]) -> Optional[Dict[str, Any]]:
            suggestions = source.get("suggestions")
            if not isinstance(suggestions, dict) or question_name not in suggestions:
                return None
            suggestions.pop(question_name)
            return source

        index_name = es_index_name_for_dataset(suggestion.record.dataset)
        await self._edit_document_source(index_name, str(suggestion.record_id), edit)

    async def _request_similarity_search(
        self,
        index: str,
        vector_settings: VectorSettings,
        value: List[float],
        k: int,
        excluded_id: Optional[UUID] = None,
        query_filters: Optional[List[dict]] = None,
    ) -> dict:
        """Exact cosine k-NN without the ``knn`` query; returns a search response shaped like OpenSearch's."""
        field = es_field_for_vector_settings(vector_settings)
        path = field.split(".")
        bool_query: Dict[str, Any] = {"filter": list(query_filters or [])}
        if excluded_id:
            bool_query["must_not"] = [es_ids_query([str(excluded_id)])]
        query = {"bool": bool_query} if bool_query["filter"] or excluded_id else {"match_all": {}}

        query_norm = math.sqrt(sum(x * x for x in value)) or 1.0
        best: List[tuple] = []  # min-heap of (score, doc_id), k best so far
        scanned = 0
        while scanned < SIMILARITY_MAX_SCAN:
            page = await self.client.search(
                index=index,
                body={"query": query, "sort": [{"id": "asc"}]},  # a stable order for from/size paging
                _source=[field],
                from_=scanned,
                size=SIMILARITY_PAGE,
            )
            hits = page["hits"]["hits"]
            for hit in hits:
                vec: Any = hit.get("_source") or {}
                for part in path:
                    vec = vec.get(part) if isinstance(vec, dict) else None
                if not vec or len(vec) != len(value):
                    continue
                norm = math.sqrt(sum(x * x for x in vec)) or 1.0
                cos = sum(a * b for a, b in zip(value, vec, strict=True)) / (query_norm * norm)
                item = ((1.0 + cos) / 2.0, hit["_id"])
                if len(best) < k:
                    heapq.heappush(best, item)
                elif item > best[0]:
                    heapq.heapreplace(best, item)
            scanned += len(hits)
            if len(hits) < SIMILARITY_PAGE:
                break
        ranked = sorted(best, key=lambda item: (-item[0], item[1]))
        return {
            "hits": {
                "total": {"value": len(ranked), "relation": "eq"},
                "hits": [{"_id": doc_id, "_score": score} for score, doc_id in ranked],
            }
        }


def install() -> type:
    """Register ``ScriptlessOpenSearchEngine`` as Argilla's ``opensearch`` engine (idempotent); return the class."""
    SearchEngine.register(engine_name=SEARCH_ENGINE_OPENSEARCH)(ScriptlessOpenSearchEngine)
    return ScriptlessOpenSearchEngine
