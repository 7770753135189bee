"""Agreement metrics by hand values, and step-judge calibration on labelled steps (a hand-made set, the shared PRM800K).

Every expected figure below is worked out by hand in the comments, not by calling the code under test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from evolkit import metrics
from evolkit.backends import Sampling
from tests.doubles import FAKE_YAML
from tests.doubles.deterministic import DeterministicBackend, prm_prompt, prompt_of
from evolkit.settings import data_dir
from evolkit.stages import prm

PRM800K = data_dir() / "prm800k" / "phase1_test.stepwise-critic.jsonl"


def _need_shared() -> None:
    if not PRM800K.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{PRM800K} is missing (CI is set)")
        pytest.skip(f"{PRM800K} not found")


# ------------------------------------------------------------------------------------------------------- metrics
def test_kappa_hand_values():
    # po = 3/4; rater 1: a 2, b 2; rater 2: a 1, b 3; pe = (2*1 + 2*3) / 16 = 1/2; kappa = (3/4 - 1/2) / (1/2) = 1/2
    assert metrics.cohen_kappa(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == pytest.approx(0.5)
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15: po = 35/50 = 0.7; rater 1 yes 25, rater 2 yes 30;
    # pe = (25*30 + 25*20) / 2500 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert metrics.cohen_kappa(a, b) == pytest.approx(0.4)
    assert metrics.cohen_kappa(["x", "y"], ["y", "x"]) == pytest.approx(-1.0)  # po 0, pe 1/2
    assert metrics.cohen_kappa(["x", "x"], ["x", "x"]) is None  # pe = 1: undefined
    assert metrics.cohen_kappa([], []) is None
    with pytest.raises(ValueError):
        metrics.cohen_kappa(["a"], [])


def test_precision_recall_and_accuracy_hand_values():
    t = [True, True, False, False, False]
    p = [True, False, False, False, True]
    pc = metrics.per_class(t, p, [True, False])
    # True: tp 1, predicted 2, true 2 -> P 1/2, R 1/2, F1 1/2.  False: tp 2, predicted 3, true 3 -> P = R = 2/3
    assert pc[True]["precision"] == pytest.approx(0.5) and pc[True]["recall"] == pytest.approx(0.5)
    assert pc[True]["f1"] == pytest.approx(0.5)
    assert pc[False]["precision"] == pytest.approx(2 / 3) and pc[False]["recall"] == pytest.approx(2 / 3)
    assert pc[False]["support"] == 3 and pc[False]["predicted"] == 3
    assert metrics.accuracy(t, p) == pytest.approx(3 / 5)
    never = metrics.per_class([True, False], [True, True], [True, False])
    assert never[False]["precision"] is None and never[False]["recall"] == 0.0 and never[False]["f1"] is None
    assert metrics.confusion(t, p, [True, False]) == {True: {True: 1, False: 1}, False: {True: 1, False: 2}}


def test_first_error_f1_hand_values():
    true = [[True, True, False], [True, False, False], [True, True], [True]]
    pred = [[True, True, False], [False, False, False], [True, True], [False]]
    # errors: #1 first error 2 predicted 2 (hit), #2 first error 1 predicted 0 (miss) -> acc_error 1/2
    # error-free: #3 none predicted (hit), #4 error predicted (miss) -> acc_correct 1/2; F1 = 1/2; exact 2/4
    fe = metrics.first_error_f1(true, pred)
    assert fe == {"acc_error": 0.5, "acc_correct": 0.5, "f1": 0.5, "exact": 0.5, "n_error": 2, "n_correct": 2}
    assert metrics.first_error_index([True, True]) is None and metrics.first_error_index([True, False]) == 1
    assert metrics.first_error_f1([[False]], [[True]])["f1"] is None  # no error-free solution: undefined


def test_ranking_pair_figures():
    assert metrics.pairwise_preferences({"A": 1, "B": 2, "C": 2}) == {("A", "B"): "a", ("A", "C"): "a", ("B", "C"): "tie"}
    # AB differs, AC and BC agree -> 2/3
    assert metrics.ranking_pair_agreement({"A": 1, "B": 2, "C": 3}, {"A": 2, "B": 1, "C": 3}) == pytest.approx(2 / 3)
    assert metrics.fmt(None) == "-" and metrics.fmt(0.5) == "0.500" and metrics.fmt(3) == "3"


# ------------------------------------------------------------------------------------------------------- calibration
P1, P2 = "What is 2 + 3?", "What is 10 / 2?"
HAND_ROWS = [  # PRM800K stepwise-critique rows
    {"instruction": P1, "responses": [], "next_response": "Add 2 and 3.", "rating": 1},  # r1
    {"instruction": P1, "responses": ["Add 2 and 3."], "next_response": "That is 6, wrong.", "rating": -1},  # r2
    {"instruction": P1, "responses": ["Add 2 and 3."], "next_response": "That is 5.", "rating": 1},  # r3
    {"instruction": P1, "responses": ["Add 2 and 3."], "next_response": "Maybe it is 5.", "rating": 0},  # r4
    {"instruction": P2, "responses": [], "next_response": "Divide 10 by 2, wrong sign.", "rating": 1},  # r5
    {"instruction": P2, "responses": ["Divide 10 by 2, wrong sign."], "next_response": "The answer is 5.",
     "rating": -1},  # r6
    {"instruction": P2, "responses": [], "next_response": "Half of 10 is 5.", "rating": None,
     "is_human_response": True},  # r7: human step without rating -> +1
    {"instruction": P2, "responses": [], "next_response": "Guess.", "rating": None,
     "is_human_response": False},  # r8: unrated model step -> skipped
    {"instruction": P2, "responses": [], "next_response": "garble", "rating": -1},  # r9: the judge answers no JSON
]


def rule_judge(req, k):
    """incorrect if a step says "wrong", neutral if it says "Maybe", else correct; no JSON for "garble"."""
    steps = prm_prompt(prompt_of(req)).steps
    if any("garble" in s for s in steps):
        return "I cannot tell."
    labels = ["incorrect" if "wrong" in s else "neutral" if "Maybe" in s else "correct" for s in steps]
    return "```json\n" + json.dumps({"steps": [{"step": i + 1, "label": lab} for i, lab in enumerate(labels)]}) + "\n```"


@pytest.fixture
def hand_file(tmp_path: Path) -> Path:
    p = tmp_path / "hand.jsonl"
    p.write_text("".join(json.dumps({"answer": None, "is_human_response": False, **r}) + "\n" for r in HAND_ROWS))
    return p


def test_load_labelled_steps(hand_file, tmp_path):
    rows = prm.load_labelled_steps(hand_file)
    assert len(rows) == 8  # r8 skipped
    assert [r["rating"] for r in rows] == [1, -1, 1, 0, 1, -1, 1, -1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "responses": []}\n')
    from evolkit.errors import DataError

    with pytest.raises(DataError, match="bad.jsonl:1: missing field 'next_response'"):
        prm.load_labelled_steps(bad)


def test_calibrate_hand_set(hand_file):
    rows = prm.load_labelled_steps(hand_file)
    be = DeterministicBackend(responders={"judge:prm": rule_judge})
    rep = prm.calibrate(be, rows, prm.Config(), Sampling(temperature=0))
    # r9 fails to parse; the 7 others: human C C C C(neutral) C I... see the module comments:
    # gold  r1 C, r2 I, r3 C, r4 C (0 -> correct), r5 C, r6 I, r7 C
    # judge r1 C, r2 I, r3 C, r4 C (neutral),      r5 I, r6 C, r7 C
    assert rep["rows"] == 8 and rep["judged"] == 7 and rep["parse_failures"] == {"no_json": 1}
    assert rep["accuracy"] == pytest.approx(5 / 7)
    pc = rep["per_class"]
    assert pc["correct"]["precision"] == pytest.approx(4 / 5) and pc["correct"]["recall"] == pytest.approx(4 / 5)
    assert pc["incorrect"]["precision"] == pytest.approx(1 / 2) and pc["incorrect"]["recall"] == pytest.approx(1 / 2)
    # po 5/7, pe (5*5 + 2*2)/49 = 29/49 -> kappa (35 - 29) / (49 - 29) = 0.3
    assert rep["kappa"] == pytest.approx(0.3)
    # First error over prefix + step (prefix labels from their own rows): errors r2 (hit), r6 (judge flags the
    # prefix: miss) -> 1/2; error-free r1 r3 r4 r7 hit, r5 miss -> 4/5; F1 = 2 * 0.5 * 0.8 / 1.3
    fe = rep["first_error"]
    assert (fe["n_error"], fe["n_correct"]) == (2, 5)
    assert fe["acc_error"] == pytest.approx(0.5) and fe["acc_correct"] == pytest.approx(0.8)
    assert fe["f1"] == pytest.approx(0.8 / 1.3)
    assert rep["confusion"] == {"correct": {"correct": 4, "incorrect": 1}, "incorrect": {"correct": 1, "incorrect": 1}}
    assert rep["accuracy3"] == pytest.approx(5 / 7)  # the judge said "neutral": 3-way figures too
    assert rep["confusion3"]["neutral"]["neutral"] == 1

    # neutral counted as incorrect: gold C r1 r3 r5 r7, I r2 r4 r6; judge C r1 r3 r6 r7, I r2 r4 r5
    rep2 = prm.calibrate(be, rows, prm.Config(), Sampling(temperature=0), neutral_as="incorrect")
    assert rep2["accuracy"] == pytest.approx(5 / 7)
    assert rep2["kappa"] == pytest.approx(10 / 24)  # pe (4*4 + 3*3)/49 = 25/49 -> (35-25)/(49-25)


def test_calibrate_shared_prm800k_all_correct_judge():
    """A judge that calls every step correct, on the shared PRM800K phase-1 test labels.

    SOURCE.md: 5,449 rows; ratings +1 2,245 / 0 867 / -1 1,970 / null 367, of which 257 are human steps (-> +1) and
    110 unrated model steps (skipped): 5,339 labelled steps, 2,245 + 867 + 257 = 3,369 correct, 1,970 incorrect."""
    _need_shared()
    rows = prm.load_labelled_steps(PRM800K)
    assert len(rows) == 5339

    def all_correct(req, k):
        n = len(prm_prompt(prompt_of(req)).steps)
        return json.dumps({"steps": [{"step": i + 1, "label": "correct"} for i in range(n)]})

    rep = prm.calibrate(DeterministicBackend(responders={"judge:prm": all_correct}), rows, prm.Config())
    assert rep["judged"] == 5339 and rep["parse_failures"] == {}
    assert rep["human_labels"] == {"correct": 3369, "incorrect": 1970}
    assert rep["accuracy"] == pytest.approx(3369 / 5339)
    assert rep["per_class"]["correct"]["precision"] == pytest.approx(3369 / 5339)
    assert rep["per_class"]["correct"]["recall"] == 1.0
    assert rep["per_class"]["incorrect"]["recall"] == 0.0 and rep["per_class"]["incorrect"]["precision"] is None
    assert rep["kappa"] == pytest.approx(0.0)  # po = pe = 3369/5339
    fe = rep["first_error"]
    assert fe["acc_error"] == 0.0 and fe["acc_correct"] == 1.0 and fe["f1"] == 0.0

    # n_error by a plain count over the raw file: a row's trajectory has an error when its step is rated -1 or one of
    # its prefix steps is (looked up as that prefix's own row).
    raw = [json.loads(line) for line in PRM800K.read_text().splitlines()]
    rating = {}
    for r in raw:
        rt = r["rating"] if r["rating"] is not None else (1 if r["is_human_response"] else None)
        rating.setdefault((r["instruction"], tuple(r["responses"]), r["next_response"]), rt)
    n_error = 0
    for r in raw:
        rt = r["rating"] if r["rating"] is not None else (1 if r["is_human_response"] else None)
        if rt is None:
            continue
        prefix_bad = any(rating.get((r["instruction"], tuple(r["responses"][:i]), s), 1) == -1
                         for i, s in enumerate(r["responses"]))
        n_error += rt == -1 or prefix_bad
    assert fe["n_error"] == n_error and fe["n_correct"] == 5339 - n_error
    assert n_error >= 1970


def test_calibrate_command(hand_file, tmp_path, capsys):
    from evolkit.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"name: cal\nbackend: {FAKE_YAML}\n")
    out = tmp_path / "run"
    assert main(["calibrate", "prm", str(cfg), "--data", str(hand_file), "-o", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "judge vs human step labels" in text and "first-error-step F1" in text and "accuracy" in text
    summary = json.loads((out / "calibration" / "summary.json").read_text())
    assert summary["rows"] == 8 and summary["judge"] == "deterministic"
    assert (out / "calibration" / "predictions.parquet").exists()
    # calibration options belong to `evolkit calibrate prm`: the stage command refuses them (argparse, exit 2).
    with pytest.raises(SystemExit) as e:
        main(["prm", str(cfg), "--data", str(hand_file)])
    assert e.value.code == 2
