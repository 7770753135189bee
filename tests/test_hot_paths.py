"""The per-request paths made cheaper for throughput give exactly what the straightforward code gave.

* ``Result.to_json`` spells out the fields instead of ``dataclasses.asdict``;
* ``ShardWriter`` encodes a row once and scrubs only rows whose text shows a secret or a secret-looking key, and
  fsyncs in a helper thread (never on the writing thread, i.e. the event loop);
* ``RequestCache`` commits in a writer thread (write-behind) with read-your-writes, and answers many keys per query;
* ``sft.build_messages`` renders the system + few-shot part once per kind of problem.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from evolkit.backends.base import Completion, Result
from evolkit.backends.cache import RequestCache
from evolkit.store import ShardWriter, scrub

SECRETS = ["sk-abc123xyz789", 'we"ird\\sec-42', "üñí-secret-1"]


def test_result_to_json_matches_asdict() -> None:
    r = Result([Completion('a é "quoted"\n', None, 3, 4), Completion("b", "stop")], error="boom")
    assert r.to_json() == json.dumps({"completions": [asdict(c) for c in r.completions], "error": "boom"})
    assert Result.from_json(r.to_json()).completions == r.completions


@pytest.mark.parametrize("secrets", [[], SECRETS])
def test_shard_lines_equal_scrub_then_dump(tmp_path: Path, secrets: list[str]) -> None:
    rows = [
        {"a": 1, "usage": {"prompt_tokens": 5, "completion_tokens": 7}},
        {"api_key": "zzz"}, {"API-KEY": "zzz"}, {"x": {"token\n": "v"}}, {"monkey": "v"}, {"Token": "x"},
        {"t": "has sk-abc123xyz789 inside"}, {"t": ['we"ird\\sec-42']}, {"t": ("sk-abc123xyz789",)},
        {"prompt_tokens": 5, "token": ""}, {"n": {"password": "p", "k": [{"secret": "s"}]}},
        {"k": "üñí-secret-1"}, {"value": 'a token": b'}, {"tokens": "x"}, {1: "sk-abc123xyz789"},
    ]
    with ShardWriter(tmp_path / "s.jsonl", secrets=secrets) as w:
        for r in rows:
            w.write(r)
    got = (tmp_path / "s.jsonl").read_text(encoding="utf-8").splitlines()
    want = [json.dumps(scrub(r, secrets) if secrets else r, ensure_ascii=False) for r in rows]
    assert got == want


def test_shard_writer_never_fsyncs_on_the_writing_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(threading.current_thread().name)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    w = ShardWriter(tmp_path / "s.jsonl", fsync_every=8, secrets=[])
    for i in range(200):
        w.write({"i": i})
        # Every write has reached the OS at once (a SIGKILL now would lose nothing).
        assert (tmp_path / "s.jsonl").read_bytes().count(b"\n") == i + 1
    assert threading.current_thread().name not in calls and calls  # background fsyncs only, and some happened
    w.close()
    assert calls[-1] == threading.current_thread().name  # the final one, on close
    assert [json.loads(x)["i"] for x in (tmp_path / "s.jsonl").read_text().splitlines()] == list(range(200))


def _res(i: int) -> Result:
    return Result([Completion(f"answer {i}", "stop", 10, i)])


def test_request_cache_write_behind(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    c = RequestCache(path)
    for i in range(300):
        c.put(f"k{i}", _res(i))
        assert c.get(f"k{i}").completions[0].text == f"answer {i}"  # read-your-writes, committed or not
    c.put("k5", _res(5000))  # a newer value for a key wins
    got = c.get_many([f"k{i}" for i in range(0, 310, 5)] + ["k5"])
    assert sorted(got) == sorted(f"k{i}" for i in range(0, 300, 5))
    assert got["k5"].completions[0].text == "answer 5000" and got["k5"].cached
    assert len(c) == 300
    c.close()
    c2 = RequestCache(path)  # everything was committed by close
    assert len(c2) == 300 and c2.get("k5").completions[0].text == "answer 5000" and c2.get("nope") is None
    assert c2.get_many([]) == {}
    c2.close()


def test_request_cache_bounds_what_waits_for_a_commit(tmp_path: Path, monkeypatch) -> None:
    """A slow writer makes ``put`` wait: never more than ``max_pending`` entries are uncommitted (what a SIGKILL can
    lose), and every entry arrives, text intact (quotes, newlines, non-ASCII, through the one-statement insert)."""
    from evolkit.backends import cache as cache_mod

    slow = cache_mod._insert_batch
    batches: list[int] = []

    def slow_insert(db, batch):
        batches.append(len(batch))
        time.sleep(0.01)
        slow(db, batch)

    monkeypatch.setattr(cache_mod, "_insert_batch", slow_insert)
    c = RequestCache(tmp_path / "cache.sqlite", max_pending=8)
    text = 'He said "7\\8"\n\tétape 2: ∑ = 3 \u2028 {"json": [1]}'
    most = 0
    for i in range(100):
        c.put(f"k{i}", Result([Completion(f"{text} {i}", "stop", 10, i)]))
        most = max(most, len(c._pending))
    assert most <= 8 and max(batches) <= 8 and len(batches) >= 100 // 8
    c.close()
    c2 = RequestCache(tmp_path / "cache.sqlite")
    got = c2.get_many([f"k{i}" for i in range(100)])
    assert [got[f"k{i}"].completions[0].text for i in range(100)] == [f"{text} {i}" for i in range(100)]
    c2.close()


def test_request_cache_reports_a_failed_commit(tmp_path: Path) -> None:
    c = RequestCache(tmp_path / "cache.sqlite")
    c.put("a", _res(1))
    c.flush()
    c._db.execute("DROP TABLE results")  # the writer's next commit fails
    c.put("b", _res(2))
    with pytest.raises(RuntimeError, match="writing the request cache failed"):
        c.flush()
    c.close()


def test_build_messages_with_shared_prefix_equals_plain() -> None:
    from evolkit.records import Problem
    from evolkit.stages.sft import Config, build_messages

    cfg = Config(fewshot=2)
    probs = [Problem(id=f"p{i}", root_id=f"p{i}", source="math" if i % 3 else "gsm8k", question=f"What is {i} + 2?",
                     gold_answer=str(i + 2)) for i in range(12)]
    shared: dict = {}
    fast = [build_messages(p, cfg, shared) for p in probs]
    assert fast == [build_messages(p, cfg) for p in probs]
    # The prefix strings are shared between requests, the message dicts are not.
    assert fast[1][0]["content"] is fast[2][0]["content"] and fast[1][0] is not fast[2][0]
