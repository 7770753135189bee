"""Regenerate evolkit/prompts/fewshot_gsm8k.json and fewshot_math.json from real *train* solutions.

Each exemplar is a GSM8k or MATH train problem with its reference solution rewritten into evolkit's answer format:
numbered steps ("Step 1: ...", one per line) and a final line "The answer is: X", which is what the SFT data teaches, what
``evolkit.answers.split_steps`` splits and what the answer checker reads first. The final answer is the reference's own
(GSM8k: the number after ``####``; MATH: the content of the last ``\\boxed{}``, which the last step keeps).

* GSM8k: every reasoning line of the reference answer is one step (calculator annotations ``<<...>>`` removed).
* MATH: the reference solution split with ``split_steps`` (paragraphs, lines, then sentences; never inside a formula).

Selection is deterministic (a seeded shuffle of the train files, the first problems that fit): 3-5 steps for GSM8k,
2-5 for MATH, each a whole sentence or paragraph; short problems; MATH levels 2-4, one subject after another, no
Asymptote figures, one short final answer.
Every chosen problem is checked against the benchmark test sets with evolkit's decontamination (GSM8k test, MATH test,
MATH500): test problems are never exemplars.

    python scripts/make_fewshot.py           # writes the two files (data from EVOLKIT_DATA or the shared data folder)
    python scripts/make_fewshot.py --check   # exit 1 when the packaged files differ from what would be written
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evolkit.answers import extract_answer, gsm8k_gold, math_gold, split_steps  # noqa: E402
from evolkit.filters import Decontaminator  # noqa: E402
from evolkit.settings import data_dir  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "evolkit" / "prompts"
N_EXEMPLARS = 8
MATH_SUBJECTS = ["Algebra", "Prealgebra", "Number Theory", "Counting & Probability", "Geometry",
                 "Intermediate Algebra", "Precalculus", "Algebra"]
_CALC_RE = re.compile(r"<<[^<>\n]*>>")
_SENTENCE_END = re.compile(r"(?:[.!?:]|\\\]|\$\$)\s*\$?$")


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def numbered(steps: list[str], answer: str) -> str:
    return "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, 1)) + f"\nThe answer is: {answer}"


def gsm8k_steps(answer_text: str) -> list[str]:
    """The reasoning lines of a GSM8k reference answer (everything before ``####``), annotations removed."""
    body = answer_text[: answer_text.rfind("####")]
    return [re.sub(r"\s+", " ", _CALC_RE.sub("", line)).strip() for line in body.split("\n") if line.strip()]


def usable(solution: str, steps: list[str], answer: str) -> bool:
    """The rewritten solution splits back into exactly these steps and reads back this answer."""
    expected = [f"Step {i}: {s}" for i, s in enumerate(steps, 1)]
    expected[-1] += f"\nThe answer is: {answer}"  # the final line belongs to the last step
    return split_steps(solution) == expected and extract_answer(solution) == answer


def pick_gsm8k(rows: list[dict], clean) -> list[dict]:
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    out = []
    for i in order:
        r = rows[i]
        gold = gsm8k_gold(r["answer"])
        steps = gsm8k_steps(r["answer"])
        if not (3 <= len(steps) <= 5 and len(r["question"]) <= 300 and gold and re.fullmatch(r"\d+", gold)):
            continue
        if not all(re.search(r"\d", s) and len(s) <= 200 for s in steps):
            continue
        solution = numbered(steps, gold)
        if usable(solution, steps, gold) and clean(r["question"]):
            out.append({"id": f"gsm8k/train/{i}", "question": r["question"], "solution": solution, "answer": gold})
        if len(out) == N_EXEMPLARS:
            return out
    raise SystemExit("not enough GSM8k exemplars found")


def pick_math(rows: list[dict], clean) -> list[dict]:
    rng = random.Random(0)
    by_type: dict[str, list[dict]] = {}
    for r in rows:
        by_type.setdefault(r["type"], []).append(r)
    for group in by_type.values():
        rng.shuffle(group)
    out, used = [], set()
    for subject in MATH_SUBJECTS:
        for r in by_type[subject]:
            if r["unique_id"] in used or r["level"] not in ("Level 2", "Level 3", "Level 4"):
                continue
            if "[asy]" in r["problem"] + r["solution"] or len(r["problem"]) > 400 or len(r["solution"]) > 900:
                continue
            gold = math_gold(r["solution"])
            steps = split_steps(r["solution"])
            if not gold or len(gold) > 20 or not 2 <= len(steps) <= 5 or any(len(s) > 350 for s in steps):
                continue
            if r["solution"].count("\\boxed") != 1 or "\\boxed" not in steps[-1] or "Step" in r["solution"]:
                continue  # one final answer, in the last step
            if not all(_SENTENCE_END.search(st) for st in steps):
                continue  # whole sentences (or paragraphs) as steps
            solution = numbered(steps, gold)
            if usable(solution, steps, gold) and clean(r["problem"]):
                out.append({"id": r["unique_id"], "question": r["problem"], "solution": solution, "answer": gold})
                used.add(r["unique_id"])
                break
        else:
            raise SystemExit(f"no MATH exemplar found for {subject}")
    return out


def build(d: Path) -> dict[str, dict]:
    test_files = [d / "gsm8k" / "test.jsonl", d / "math" / "test.jsonl", d / "math" / "math500_test.jsonl"]
    decontam = Decontaminator.from_files(test_files)

    def clean(question: str) -> bool:
        return decontam.match(question) is None

    gsm = pick_gsm8k(_jsonl(d / "gsm8k" / "train.jsonl"), clean)
    mth = pick_math(_jsonl(d / "math" / "train.jsonl"), clean)
    how = ("reference solution rewritten into numbered steps (one per line) and a final 'The answer is: X' line by "
           "scripts/make_fewshot.py; checked against the GSM8k / MATH / MATH500 test sets")
    return {
        "fewshot_gsm8k.json": {"origin": f"GSM8k train (Cobbe et al. 2021, MIT): {how}", "exemplars": gsm},
        "fewshot_math.json": {"origin": f"MATH train (Hendrycks et al. 2021, MIT): {how}", "exemplars": mth},
    }


def render(obj: dict) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the packaged files instead of writing them")
    ap.add_argument("--out", type=Path, default=OUT, help="folder to write to (default: evolkit/prompts)")
    args = ap.parse_args(argv)
    d = data_dir()
    if not (d / "math" / "train.jsonl").exists():
        print(f"shared data not found at {d} (set EVOLKIT_DATA)", file=sys.stderr)
        return 2
    stale = []
    for name, obj in build(d).items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != render(obj):
                stale.append(name)
        else:
            path.write_text(render(obj), encoding="utf-8")
            steps = [len(split_steps(ex["solution"])) for ex in obj["exemplars"]]
            print(f"{path}: {len(steps)} exemplars, steps {steps}")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python scripts/make_fewshot.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
