"""Real steps: the packaged few-shot exemplars, step splitting of real reference solutions, the steps distribution.

The data tests read the train/test files through EVOLKIT_DATA (evolkit.settings.data_dir()); they skip only when the
data folder is absent and CI is unset.
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

import pytest

from evolkit import prompts
from evolkit.answers import extract_answer, gsm8k_gold, math_gold, split_steps, steps_distribution
from evolkit.filters import Decontaminator
from tests.shared_data import shared_jsonl, shared_path

ROOT = Path(__file__).resolve().parents[1]
FEWSHOT = {"gsm8k": "fewshot_gsm8k", "math": "fewshot_math"}


_data = shared_path
_jsonl = shared_jsonl


def _exemplars(source: str) -> list[dict]:
    return prompts.load_json(FEWSHOT[source])["exemplars"]


# ---------------------------------------------------------------------------------------------------------------
# Few-shot exemplars
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["gsm8k", "math"])
def test_every_exemplar_has_numbered_steps_and_reads_back_its_answer(source):
    shots = _exemplars(source)
    assert len(shots) == 8
    for ex in shots:
        steps = split_steps(ex["solution"])
        assert len(steps) >= 2, ex["id"]
        assert all(s.startswith(f"Step {i}: ") for i, s in enumerate(steps, 1)), ex["id"]
        assert ex["solution"].endswith(f"\nThe answer is: {ex['answer']}")
        assert extract_answer(ex["solution"]) == ex["answer"], ex["id"]


def test_exemplars_are_train_problems_with_their_reference_answers():
    """Every exemplar is the train problem its id names, with that problem's gold answer; the MATH ones keep the
    reference's box in their last step."""
    gsm = _jsonl("gsm8k", "train.jsonl")
    for ex in _exemplars("gsm8k"):
        row = gsm[int(ex["id"].removeprefix("gsm8k/train/"))]
        assert row["question"] == ex["question"]
        assert gsm8k_gold(row["answer"]) == ex["answer"] == extract_answer(ex["solution"])
    math = {r["unique_id"]: r for r in _jsonl("math", "train.jsonl")}
    for ex in _exemplars("math"):
        assert ex["id"].startswith("train/"), ex["id"]
        row = math[ex["id"]]
        assert row["problem"] == ex["question"]
        assert math_gold(row["solution"]) == ex["answer"] == extract_answer(ex["solution"])
        assert math_gold(split_steps(ex["solution"])[-1]) == ex["answer"]


def test_no_exemplar_is_a_test_problem():
    files = [_data("gsm8k", "test.jsonl"), _data("math", "test.jsonl"), _data("math", "math500_test.jsonl")]
    decontam = Decontaminator.from_files(files)
    questions = [ex["question"] for source in FEWSHOT for ex in _exemplars(source)]
    hits = decontam.match_many(questions)
    assert hits == [None] * len(questions), [h.as_dict() for h in hits if h]


def test_make_fewshot_reproduces_the_packaged_files(capsys):
    _data("math", "train.jsonl")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_fewshot
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert make_fewshot.main(["--check"]) == 0, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Step splitting of real reference solutions
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source, file, field", [("gsm8k", "train.jsonl", "answer"), ("math", "train.jsonl", "solution")])
def test_reference_solutions_split_into_several_steps(source, file, field):
    """A fixed sample of 400 train reference solutions: at least 90% split into two steps or more (MATH solutions are
    often one paragraph: split_steps falls back to sentences, then clauses), and splitting loses no text."""
    rows = random.Random(11).sample(_jsonl(source, file), 400)
    counts = [len(split_steps(r[field])) for r in rows]
    share = sum(c >= 2 for c in counts) / len(counts)
    dist = steps_distribution([{"source": source, "solution": r[field]} for r in rows])[source]
    print(f"{source}: {share:.1%} of 400 reference solutions have >= 2 steps; {dist}")
    assert share >= 0.9, share
    for r in rows:
        assert re.sub(r"\s", "", "".join(split_steps(r[field]))) == re.sub(r"\s", "", r[field])


# ---------------------------------------------------------------------------------------------------------------
# Steps distribution
# ---------------------------------------------------------------------------------------------------------------


def test_steps_distribution_per_source():
    rows = [
        {"source": "math", "steps": ["a", "b", "c"]},
        {"source": "math", "steps": ["a"]},
        {"source": "gsm8k", "text": "Step 1: add.\nStep 2: done.\nThe answer is: 3"},
        {"source": "gsm8k", "steps": ["x", "y"]},
        {"source": "gsm8k", "text": "", "steps": []},  # a failed request: no solution, not counted
        {"output": "One.\n\nTwo."},  # no source
    ]
    assert steps_distribution(rows) == {
        "gsm8k": {"n": 2, "mean": 2.0, "hist": {"2": 2}},
        "math": {"n": 2, "mean": 2.0, "hist": {"1": 1, "3": 1}},
        "unknown": {"n": 1, "mean": 2.0, "hist": {"2": 1}},
    }
    many = [{"source": "evol", "steps": ["s"] * k} for k in (1, 2, 2, 10, 3)]
    got = steps_distribution(many)["evol"]
    assert got == {"n": 5, "mean": 3.6, "hist": {"1": 1, "2": 2, "3": 1, "10": 1}}
    assert list(got["hist"]) == ["1", "2", "3", "10"]  # numeric order
    assert steps_distribution([]) == {}
    assert steps_distribution([{"src": "a", "steps": ["1", "2"]}], source_key="src") == {
        "a": {"n": 1, "mean": 2.0, "hist": {"2": 1}}}
