"""The pieces that keep memory flat at any run size behave like the plain structures they replace: the compact key
index of group records, the lazy Parquet table of the seeds, the cache's chunked lookups and spilled results, the
evolve engine's array plans and its decision log.

(Peak memory itself is measured by benchmarks/bench_memory.py, not asserted here.)
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from evolkit.backends.base import Backend, Completion, Request, Result, Sampling
from evolkit.backends.cache import CachedBackend, RequestCache
from evolkit.records import Problem
from evolkit.stages import evolve
from evolkit.store import GroupReader, KeyIndex, ParquetSink, ParquetTable, ShardWriter, key_digest


def test_key_digest_never_ends_in_a_zero_byte() -> None:
    # numpy's S16 values drop trailing zero bytes: a digest ending in zeros would not find itself in an array.
    digests = [key_digest(f"k{i}") for i in range(5000)] + [key_digest(("a", i)) for i in range(100)]
    assert all(len(d) == 16 and d[-1] != 0 for d in digests)
    arr = np.sort(np.array(digests, dtype="S16"))
    assert all(arr[np.searchsorted(arr, d)] == d for d in digests[:500])


def test_key_index_equals_a_dict_through_merges() -> None:
    idx = KeyIndex()
    idx.RECENT = 64  # merge often
    ref: dict[bytes, int] = {}
    rng = random.Random(0)
    keys = [key_digest(i) for i in range(3000)]
    for step in range(12000):
        k = rng.choice(keys)
        v = rng.randrange(1 << 62)
        idx[k] = v
        ref[k] = v
        if step % 997 == 0:
            probe = rng.sample(keys, 50)
            found, vals = idx.get_many(np.array(probe, dtype="S16"))
            assert found.tolist() == [p in ref for p in probe]
            assert [int(v) for v, f in zip(vals, found) if f] == [ref[p] for p in probe if p in ref]
    assert len(idx) == len(ref)
    for k in keys:
        assert idx.get(k) == ref.get(k)


def test_group_reader_latest_record_wins_and_reads_rows_back(tmp_path: Path) -> None:
    shard = tmp_path / "x.shard-00000.jsonl"
    with ShardWriter(shard, secrets=[]) as w:
        for i in range(5000):
            w.write_group(f"k{i}", i % 7 != 0, [{"i": i}])
        w.write_group("k7", True, [{"i": "retried"}])  # a failed item redone later
        w.write_group(("t", 1), True, [{"i": "tuple"}])
    r = GroupReader([shard])
    assert len(r) == 5001
    assert r.get("k7") == [{"i": "retried"}] and r.ok("k7") and not r.ok("k14") and "k14" in r
    assert r.get(("t", 1)) == [{"i": "tuple"}] and r.get("nope") is None and not r.ok("nope")
    assert r.failed() == sum(1 for i in range(5000) if i % 7 == 0) - 1
    digests = np.array([key_digest(f"k{i}") for i in range(20)], dtype="S16")
    assert r.ok_many(digests).tolist() == [r.ok(f"k{i}") for i in range(20)]
    assert [x["i"] for x in r.rows(["k3", "nope", "k4"])] == [3, 4]
    r.close()


def test_parquet_table_reads_by_row_group(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    sink = ParquetSink(path, row_group_size=100, secrets=[])
    rows = [{"id": f"p{i}", "n": i, "meta": {"a": i} if i % 3 else None} for i in range(1050)]
    sink.write_many(rows)
    sink.close()
    t = ParquetTable(path, cache_groups=2)
    assert len(t) == 1050 and list(t) == rows
    rng = random.Random(1)
    for _ in range(300):
        i = rng.randrange(-1050, 1050)
        assert t[i] == rows[i]
    assert t[10:13] == rows[10:13] and len(t._cache) <= 2
    with pytest.raises(IndexError):
        t[1050]
    assert list(t.column("id")) == [r["id"] for r in rows]
    conv = ParquetTable(path, convert=lambda r: r["n"] * 2)
    assert conv[999] == 1998


class _Counting(Backend):
    """Answers every request after a short pause; counts what it was sent."""

    model = "counting"

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    async def stream(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, Result]]:
        for i in range(len(requests)):
            q = requests[i].messages[-1]["content"]
            self.sent.append(q)
            await asyncio.sleep(0)
            yield i, Result([Completion(f"answer to {q}")])


def test_cached_backend_chunks_lookups_and_spills_results(tmp_path: Path) -> None:
    inner = _Counting()
    cache = RequestCache(tmp_path / "cache.sqlite")
    be = CachedBackend(inner, cache, buffer=8)  # most results wait in the cache, not in memory
    reqs = [Request([{"role": "user", "content": f"q{i}"}], Sampling()) for i in range(1500)]

    async def take(requests: list[Request], slow: bool) -> dict[int, str]:
        got = {}
        async for i, res in be.stream(requests):
            got[i] = res.completions[0].text
            if slow:
                await asyncio.sleep(0)  # the caller is slower than the backend
        return got

    got = asyncio.run(take(reqs[:1000], slow=True))
    assert got == {i: f"answer to q{i}" for i in range(1000)} and len(inner.sent) == 1000
    got = asyncio.run(take(reqs, slow=False))  # 1000 hits (several lookup chunks), 500 misses
    assert got == {i: f"answer to q{i}" for i in range(1500)}
    assert sorted(inner.sent[1000:]) == sorted(f"q{i}" for i in range(1000, 1500))
    be.close()


def test_plan_arrays_equal_plan_children() -> None:
    parents = [Problem(id=f"s{i}", source="gsm8k", question=f"q{i}", root_id=f"s{i}") for i in range(37)]
    w = {"add_constraints": 1.0, "concretize": 1.0, "simplify": 0.5}
    counters: dict[str, int] = {}
    counts = [0] * len(parents)
    for n, share in ((23, 0.0), (100, 0.5), (37, 0.3), (5, 0.0)):
        ref = evolve.plan_children(parents, n, w, random.Random(f"x{n}"), counters, 2, 1, share)
        plan = evolve.plan_arrays(len(parents), n, w, random.Random(f"x{n}"), counts, share)
        kids = evolve.Children([(p, p.source) for p in parents], plan, 2, 1)
        assert [(c.id, c.parent.id, c.op, c.index, c.role) for c in kids] == \
            [(c.id, c.parent.id, c.op, c.index, c.role) for c in ref]
        assert counts == [counters.get(p.id, 0) for p in parents]


def test_parents_span_segments_and_share_child_counts() -> None:
    a = evolve.Segment([(Problem(id=f"a{i}", source="math", question="q", root_id=f"a{i}"), "math") for i in range(3)])
    b = evolve.Segment([(Problem(id=f"b{i}", source="evol", question="q", root_id="a0"), "math") for i in range(2)])
    both = evolve.Parents([a, b])
    assert len(both) == 5 and [p.id for p, _ in both] == ["a0", "a1", "a2", "b0", "b1"]
    both.counts[4] = 7
    both.counts[0] = 2
    assert b.counts.tolist() == [0, 7] and evolve.Parents([a]).counts[0] == 2


def test_decisions_come_back_in_id_order_per_round(tmp_path: Path) -> None:
    d = evolve.Decisions(tmp_path / "decisions.jsonl")
    ids = [evolve.child_id(3, f"p{i}", "simplify", 0) for i in range(200)]
    for i, cid in enumerate(ids):
        d.add("kept" if i % 4 else "eliminated", 3, cid, {"id": cid, "i": i})
    d.add("kept", 4, evolve.child_id(4, "p", "simplify", 0), {"id": "r4"})
    kept = [r["id"] for r in d.sorted("kept", 3)]
    assert kept == sorted(c for i, c in enumerate(ids) if i % 4) and d.count("kept", 3) == 150
    assert [r["id"] for r in d.sorted("eliminated", 3)] == sorted(ids[::4])
    assert [r["id"] for r in d.sorted("kept", 4)] == ["r4"] and list(d.sorted("kept", 9)) == []
    d.close()
    assert json.loads((tmp_path / "decisions.jsonl").read_text().splitlines()[0])["i"] == 0
