"""The answer-equivalence policy (docs/answers.md) as a table: tests/data/answer_equivalence.jsonl.

Each row is an ``(answer, gold)`` pair with the verdict the policy gives and its category:

* ``adversarial``: pairs written for each category of the policy (the edges: rounding, order, units, ...);
* ``prm800k``: every distinct final answer GPT-4 gave in PRM800K's phase-1 test (MATH500 problems) against the MATH500
  gold, judged by reading each pair;
* ``gsm8k_samples``: final answers of the GSM8k paper's released model samples against the test gold, with the verdict
  the dataset itself gives (``is_correct``).

The real rows name where they come from; a second test checks them against the shared data (when it is there).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from evolkit.answers import AnswerChecker, extract_answer, gsm8k_gold, math_gold
from tests.shared_data import shared_jsonl

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "tests" / "data" / "answer_equivalence.jsonl"
ROWS = [json.loads(line) for line in TABLE.read_text(encoding="utf-8").splitlines() if line.strip()]
CATEGORIES = ["number_forms", "fractions_decimals", "percent", "units", "number_words", "multiple_answers", "intervals",
              "sets", "tuples", "matrices", "text_choices", "expressions", "missing"]


@pytest.fixture(scope="module")
def checker():
    with AnswerChecker(workers=2, timeout=10.0) as ch:
        yield ch


@pytest.fixture(scope="module")
def verdicts(checker):
    """All pairs in one batch (the pool works in parallel); looked up per row by the parametrised test."""
    return checker.check_many([(r["answer"], r["gold"]) for r in ROWS])


@pytest.mark.parametrize("i", range(len(ROWS)),
                         ids=[f"{r['source']}-{r['category']}-{i}" for i, r in enumerate(ROWS)])
def test_answer_equivalence_policy(verdicts, i):
    row, got = ROWS[i], verdicts[i]
    assert got.equal == row["equal"], (row, got)
    assert got.reason in (("match",) if row["equal"] else ("mismatch", "no_answer")), (row, got)


def test_table_covers_every_category_and_the_policy_names_them():
    assert len(ROWS) >= 200
    assert {r["category"] for r in ROWS} == set(CATEGORIES)
    written = Counter(r["category"] for r in ROWS if r["source"] == "adversarial")
    thin = {c: written[c] for c in CATEGORIES if written[c] < 4}
    assert not thin, thin  # each category has its own edge cases, equal and not equal
    for c in CATEGORIES:
        verdicts = {r["equal"] for r in ROWS if r["category"] == c and r["source"] == "adversarial"}
        assert verdicts == ({False} if c == "missing" else {True, False}), c
    assert Counter(r["source"] for r in ROWS)["prm800k"] >= 100
    assert Counter(r["source"] for r in ROWS)["gsm8k_samples"] >= 50
    doc = (ROOT / "docs" / "answers.md").read_text(encoding="utf-8")
    for c in CATEGORIES:
        assert f"`{c}`" in doc, c


_jsonl = shared_jsonl


def test_real_rows_are_what_the_data_says():
    """Every prm800k / gsm8k_samples row is the model's final answer and the gold as the shared data has them (and a
    GSM8k row's verdict is the dataset's own is_correct label)."""
    prm = _jsonl("prm800k", "phase1_test.stepwise-critic.jsonl")
    math500 = {r["unique_id"]: r for r in _jsonl("math", "math500_test.jsonl")}
    samples = _jsonl("gsm8k", "example_model_solutions.jsonl")
    test = _jsonl("gsm8k", "test.jsonl")
    checked = Counter()
    for row in ROWS:
        if row["source"] == "prm800k":
            where, gold_at = row["origin"].split("; gold: ")
            rec = prm[int(where.split("#")[1])]
            m = math500[gold_at.split(" ")[1]]
            assert rec["answer"] == row["answer"] and rec["instruction"] == m["problem"], row
            assert math_gold(m["solution"]) == row["gold"], row
        elif row["source"] == "gsm8k_samples":
            where, gold_at = row["origin"].split("; gold: ")
            i, key = where.split("#")[1].split(" ")
            rec = samples[int(i)][key]
            assert extract_answer(rec["solution"]) == row["answer"], row
            assert gsm8k_gold(test[int(gold_at.split("#")[1])]["answer"]) == row["gold"], row
            assert rec["is_correct"] == row["equal"], row
        else:
            continue
        checked[row["source"]] += 1
    assert checked["prm800k"] >= 100 and checked["gsm8k_samples"] >= 50
