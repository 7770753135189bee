"""The one "local file or Hub id" loader (evolkit.datafiles): seeds, eval, contamination and filters read through it."""

from __future__ import annotations

import json

import pytest

from evolkit.datafiles import expand_path, load_table, looks_local
from evolkit.errors import DataError
from evolkit.settings import data_dir


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_files_folders_and_where_each_row_came_from(tmp_path):
    f = _jsonl(tmp_path / "a.jsonl", [{"x": 1}, "", {"x": 2}])
    t = load_table(str(f))
    assert t.path == f and [n for n, _ in t.rows] == [1, 3] and list(t.located())[1] == (f"{f}:3", {"x": 2})
    split = _jsonl(tmp_path / "folder" / "gsm8k" / "test.jsonl", [{"q": "a"}])
    assert load_table(tmp_path / "folder", split="test", subfolders=("gsm8k",)).path == split
    with pytest.raises(DataError, match=r"folder: no train.jsonl / .parquet / .json in this folder"):
        load_table(tmp_path / "folder", subfolders=("gsm8k",))
    assert load_table(tmp_path / "folder" / "gsm8k", any_file=True).path == split  # any data file of the folder
    assert expand_path("{data}/gsm8k/test.jsonl") == data_dir() / "gsm8k" / "test.jsonl"


@pytest.mark.parametrize("content,message", [
    ('{"x": 1}\n{"x": \n', r"bad.jsonl:2: invalid JSON"),
    ('{"x": 1}\n[1, 2]\n', r"bad.jsonl:2: expected a JSON object, got list"),
    ("\n\n", r"bad.jsonl: no records \(only blank lines\)"),
    ("", r"bad.jsonl: the file is empty"),
])
def test_bad_files_name_file_and_line(tmp_path, content, message):
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(DataError, match=message):
        load_table(str(tmp_path / "bad.jsonl"))


def test_local_or_hub(tmp_path):
    assert looks_local("{data}/math/test.jsonl") and looks_local("./x") and looks_local("rows.parquet")
    assert looks_local(str(tmp_path)) and not looks_local("openai/gsm8k")
    with pytest.raises(DataError, match=r"no such file"):
        load_table(str(tmp_path / "missing.jsonl"))


def test_every_reader_uses_it(tmp_path):
    """Seeds, benchmarks, decontamination test files and the contamination command report the same file:line."""
    from evolkit.contamination import load_texts
    from evolkit.eval import load_benchmark
    from evolkit.filters import load_test_items
    from evolkit.seeds import load_problems

    bad = _jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "#### 1"}, "{oops"])
    for load in (lambda: load_problems("gsm8k", str(bad)), lambda: load_benchmark("gsm8k", str(bad)),
                 lambda: load_test_items([bad]), lambda: load_texts(str(bad))):
        with pytest.raises(DataError, match=rf"{bad}:2: invalid JSON"):
            load()
    good = _jsonl(tmp_path / "good" / "train.jsonl", [{"question": "How many?", "answer": "so 3\n#### 3"}])
    assert [p.id for p in load_problems("gsm8k", str(good.parent))] == ["gsm8k-train-00000"]
    assert load_texts(str(good.parent)) == (["0"], ["How many?"])
    with pytest.raises(DataError, match=rf"{good}:1: the first row has no field 'nope'"):
        load_texts(str(good), fields=["nope"])
