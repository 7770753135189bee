"""Elimination rules, MinHash dedup and decontamination (evolkit.filters)."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest

from evolkit import filters
from evolkit.filters import BenchmarkItem, Decontaminator, Deduper, Eliminator, MinHasher
from evolkit.settings import data_dir

DATA = data_dir()  # EVOLKIT_DATA, or the shared data folder next to the checkout
TEST_FILES = [DATA / "gsm8k" / "test.jsonl", DATA / "math" / "test.jsonl", DATA / "math" / "math500_test.jsonl"]


def need_data() -> None:
    missing = [p for p in TEST_FILES if not p.exists()]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing[0]} is missing (required in CI; set EVOLKIT_DATA)")
        pytest.skip(f"{missing[0]} is missing (set EVOLKIT_DATA)")


def rows(path: Path, field: str) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


PARENT = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
          "How many clips did Natalia sell altogether in April and May?")
CHILD = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. In June she "
         "sold 12 more clips than in May but gave 5 of them away for free. How many clips did she sell in all three "
         "months?")


# ---------------------------------------------------------------------------------------------------------- rules
@pytest.mark.parametrize("text,reason", [
    ("#Rewritten Prompt#: Natalia sold 50 clips in April and 30 in May. How many in total?", "prompt_artifact"),
    ("Here is the rewritten problem: Natalia sold 50 clips in April and 30 in May. How many?", "prompt_artifact"),
    ("Natalia sold 50 clips, as in the given prompt, and 30 in May. How many clips did she sell?", "prompt_artifact"),
    ("The original problem asked about clips; now Natalia sells 50 pens and 30 pencils. How many items?",
     "prompt_artifact"),
    ("I'm sorry, but I can't help with rewriting this problem into a harder one.", "refusal"),
    ("As an AI language model, I cannot create a new problem for you. Natalia sold clips.", "refusal"),
    ("To solve this problem, we first add 48 and 24 to get 72 clips sold in total.", "solution_not_problem"),
    ("Natalia sold 50 clips in April and 30 in May. How many? The answer is: 80", "solution_not_problem"),
    ("Natalia sold 50 clips in April and 30 in May. How many in all?\n#### 80", "solution_not_problem"),
    ("Step 1: Natalia sold 50 clips in April and 30 in May, so 80 in all.", "solution_not_problem"),
    ("How many?", "length"),
    ("x" * 5000, "length"),
    ("", "empty"),
    (PARENT, "no_information_gain"),
    (PARENT.upper().replace(",", " ;"), "no_information_gain"),
    (PARENT.replace("How many clips did Natalia sell altogether in April and May?",
                    "How many clips did Natalia sell altogether in April and in May?"), "no_information_gain"),
])
def test_eliminator_reasons(text, reason):
    got = Eliminator().check(filters.clean_evolved(text), PARENT)
    assert got is not None and got[0] == reason, got


def test_eliminator_keeps_real_evolutions():
    el = Eliminator()
    assert el.check(CHILD, PARENT) is None
    easier = "A baker puts 6 muffins in each of 4 boxes. How many muffins are in the boxes?"
    assert el.check(easier, PARENT) is None
    # Words that merely look like the patterns do not trigger them.
    assert el.check("I am thinking of a number: three times it is 27. What is the number I am thinking of?") is None
    assert el.check("The new prices of the given items are $3 and $5. What do 4 of each cost?") is None


def test_clean_evolved():
    assert filters.clean_evolved('  "A problem with 3 apples."  ') == "A problem with 3 apples."
    assert filters.clean_evolved("```\nA problem with 3 apples.\n```") == "A problem with 3 apples."
    assert filters.clean_evolved(None) == ""


def test_custom_patterns_and_bounds():
    el = Eliminator(artifacts=[r"\bEVOLVED:"], refusals=[], min_chars=5, max_chars=50, parent_similarity=0.5)
    assert el.check("EVOLVED: what is 2+2?")[0] == "prompt_artifact"
    assert el.check("I'm sorry, what is 2 + 2 + 2 + 7?") is None
    assert el.check("y" * 51)[0] == "length"


# ---------------------------------------------------------------------------------------------------------- minhash
def test_minhash_is_datasketch_minhash_of_the_word_shingles():
    """The batch shingle hashing feeds datasketch's MinHash exactly the shingles of each text: every signature equals a
    MinHash built one text at a time from ``filters.shingles`` (plain Python), hashed with ``TextHasher.whole``."""
    from datasketch import MinHash

    rng = random.Random(0)
    words = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 80))) for _ in range(40)] + ["", "one", "two w"]
    mh = MinHasher(num_perm=96, seed=7)
    sigs, empty = mh.signatures(texts)
    sketches = mh.minhashes(mh.hasher.encode(texts))
    hasher = filters.TextHasher()
    for i, t in enumerate(texts):
        shingles = filters.shingles(t, 3)
        vals = {hasher.whole(hasher.encode([" ".join(sh)]).flat.tolist()) >> 32 for sh in shingles}
        ref = MinHash(num_perm=96, seed=7, hashfunc=int, scheme="affine32")
        ref.update_batch(sorted(vals))
        assert empty[i] == (not vals) and (sketches[i] is None) == (not vals)
        if vals:
            assert np.array_equal(ref.hashvalues, sigs[i]), i
            assert sketches[i].jaccard(ref) == 1.0


def test_minhash_estimates_jaccard():
    rng = random.Random(1)
    base = [f"t{rng.randint(0, 5000)}" for _ in range(200)]
    other = list(base)
    for j in rng.sample(range(200), 40):
        other[j] = f"u{j}"
    a, b = " ".join(base), " ".join(other)
    exact = filters.shingle_jaccard(a, b)
    sigs, _ = MinHasher(num_perm=256).signatures([a, b])
    est = float((sigs[0] == sigs[1]).mean())
    assert abs(est - exact) < 0.1, (est, exact)


def test_ngram_hashes_stay_inside_texts():
    h = filters.TextHasher()
    enc = h.encode(["a b c", "d e", "f g h i"])
    hashes, owner, pos = filters.TextHasher.ngrams(enc, 3)
    assert owner.tolist() == [0, 2, 2]
    assert pos.tolist() == [0, 5, 6]
    same = filters.TextHasher.ngrams(h.encode(["x f g h y"]), 3)[0]
    assert hashes[1] == same[1]  # "f g h" hashes the same wherever it occurs
    assert filters.TextHasher.whole(enc.flat[:3].tolist()) == hashes[0]


# ---------------------------------------------------------------------------------------------------------- dedup
def test_deduper_exact_near_and_clean():
    d = Deduper(near_threshold=0.8)
    d.add(["seed-1", "seed-2"], [PARENT, CHILD])
    long_q = ("A farmer has 120 sheep and 45 cows on a farm near the river. Each sheep eats 3 kilograms of hay per day "
              "and each cow eats 11 kilograms. The farmer buys hay in bales of 25 kilograms that cost 8 dollars each. "
              "How much does the farmer spend on hay in a 30-day month?")
    texts = [
        "  natalia SOLD clips to 48 of her friends in april; and then she sold half as many clips in may!! how many "
        "clips did natalia sell altogether in april and may",                       # exact (normalised) copy
        long_q,                                                                     # clean
        long_q.replace("near the river", "by the river"),                           # near copy of the previous one
        "A baker puts 6 muffins in each of 4 boxes. How many muffins are in the boxes?",  # clean
        "Compute 17 times 23, then subtract 45. What is the result?",              # clean
    ]
    got = d.check(["c1", "c2", "c3", "c4", "c5"], texts)
    assert got[0] is not None and got[0].kind == "exact" and got[0].key == "seed-1"
    assert got[1] is None and got[3] is None and got[4] is None
    assert got[2] is not None and got[2].kind == "near" and got[2].key == "c2" and got[2].similarity >= 0.8
    assert len(d) == 5
    # Removing a kept item lets a later copy in (it then counts as the first one).
    d.remove(["c2"])
    again = d.check(["c6"], [long_q])
    assert again == [None]


def test_copy_of_a_dropped_duplicate_names_the_kept_item():
    """An exact copy of an item that was itself dropped as a near duplicate is a duplicate of the kept item (the
    dropped one is not in the pool)."""
    q = ("A farmer has 120 sheep and 45 cows on a farm near the river. Each sheep eats 3 kilograms of hay per day and "
         "each cow eats 11 kilograms. The farmer buys hay in bales of 25 kilograms that cost 8 dollars each. How much "
         "does the farmer spend on hay in a 30-day month?")
    near = q.replace("near the river", "by the river")
    got = Deduper(near_threshold=0.8).check(["a", "b", "c"], [q, near, near.upper()])
    assert got[0] is None
    assert got[1].kind == "near" and got[1].key == "a"
    assert got[2].kind == "near" and got[2].key == "a" and got[2].similarity == got[1].similarity


def test_sketches_shared_between_decontamination_and_dedup_change_nothing(tmp_path):
    """The evolve stage encodes a batch once, decontaminates it, then dedups the clean part of the same encoding
    (whose MinHash sketches are then reused): the same verdicts as dedup from the texts alone."""
    test = tmp_path / "test.jsonl"
    train = ("A train leaves the station at 3 pm and travels 60 miles per hour for the first two hours, then 45 miles "
             "per hour. How far from the station is it at 6 pm?")
    test.write_text(json.dumps({"question": train, "id": "t1"}) + "\n")
    dc = Decontaminator.from_files([test], near_threshold=0.7)
    texts = [CHILD, train + " Show your work.", CHILD.replace("12 more", "13 more"), "Compute 17 times 23 minus 45.",
             CHILD + " Explain."]
    enc = dc.hasher.encode(texts)
    hits = dc.match_many(texts, encoded=enc)
    keep = [i for i, h in enumerate(hits) if h is None]
    assert keep == [0, 2, 3, 4] and enc.sketches  # sketched once, kept on the encoding
    sub = filters.TextHasher.subset(enc, keep)
    assert len(next(iter(sub.sketches.values()))) == len(keep)
    shared = Deduper(near_threshold=0.8).check([f"k{i}" for i in keep], [texts[i] for i in keep], encoded=sub)
    alone = Deduper(near_threshold=0.8).check([f"k{i}" for i in keep], [texts[i] for i in keep])
    assert shared == alone and [m is None for m in shared] == [True, True, True, False]


def test_deduper_near_off():
    d = Deduper(near_threshold=None)
    q = "A farmer has 120 sheep and 45 cows. Each sheep eats 3 kg of hay per day. How much hay is eaten in a week?"
    got = d.check(["a", "b", "c"], [q, q.replace("120", "121"), q + " "])
    assert got[0] is None and got[1] is None and got[2].kind == "exact"


# ---------------------------------------------------------------------------------------------------------- decontam
def test_decontaminator_small(tmp_path):
    test = tmp_path / "test.jsonl"
    boiler = "Express your answer as a common fraction in simplest form and in lowest terms please now."
    items = [
        {"question": "Tom has 5 red marbles and 7 blue marbles in a big bag at home. How many marbles does Tom have in "
                     "the bag altogether?", "id": "t1"},
        {"problem": "Compute the product of nine and seven plus two.", "unique_id": "short1"},  # 9 tokens
        {"problem": f"What is 1/2 + 1/3? {boiler}", "unique_id": "b1"},
        {"problem": f"What is 2/5 + 1/4? {boiler}", "unique_id": "b2"},
        {"problem": f"What is 3/7 - 1/9? {boiler}", "unique_id": "b3"},
    ]
    test.write_text("\n".join(json.dumps(r) for r in items) + "\n")
    dc = Decontaminator.from_files([test], ngram=13, near_threshold=0.8)
    m = dc.match("Lisa counts: Tom has 5 red marbles and 7 blue marbles in a big bag at home. How many are green?")
    assert m is not None and m.kind == "ngram" and m.test_id == "t1" and m.test_file == "test.jsonl"
    assert m.evidence.split() == "tom has 5 red marbles and 7 blue marbles in a big bag".split()
    m = dc.match("First, compute the product of nine and seven plus two. Then halve it.")
    assert m is not None and m.kind == "ngram" and m.test_id == "short1"
    assert dc.match("Compute the product of nine and seven.") is None  # only part of a short test problem
    m = dc.match("compute the PRODUCT of nine and seven plus two")
    assert m is not None and m.kind == "exact"
    # Boilerplate shared by >= 3 test problems is not evidence.
    assert dc.match(f"What is 5/6 - 1/8? {boiler}") is None
    assert Decontaminator.from_files([test], ignore_common=0, near_threshold=None).match(
        f"What is 5/6 - 1/8? {boiler}") is not None
    assert dc.match("A train leaves at 3 pm and travels 60 miles per hour. How far does it go by 6 pm?") is None


def _ngram_reference(texts: list[str], tests: list[str], n: int = 13) -> list[bool]:
    """Plain-Python reference of the n-gram rule (long test problems only), for comparison."""
    grams: dict[tuple[str, ...], set[int]] = {}
    for j, t in enumerate(tests):
        toks = filters.tokenize(t)
        for i in range(len(toks) - n + 1):
            grams.setdefault(tuple(toks[i : i + n]), set()).add(j)
    common = {g for g, s in grams.items() if len(s) >= 3}
    out = []
    for t in texts:
        toks = filters.tokenize(t)
        out.append(any(tuple(toks[i : i + n]) in grams and tuple(toks[i : i + n]) not in common
                       for i in range(len(toks) - n + 1)))
    return out


@pytest.fixture(scope="module")
def decontaminator():
    need_data()
    return Decontaminator.from_files(TEST_FILES)


def _reword(text: str, change_number: bool) -> str:
    """A light rewording: one word swapped, spacing and punctuation changed, a lead-in and a closing sentence added;
    optionally one number changed (GSM8k: a new instance of the same story)."""
    swaps = [("Janet", "Jenna"), ("How many", "How much"), ("what is", "find"), ("What is", "Find"), (" the ", " a ")]
    for a, b in swaps:
        if a in text:
            text = text.replace(a, b, 1)
            break
    m = re.search(r"\d+", text) if change_number else None
    if m:
        text = text[: m.start()] + str(int(m.group()) + 1) + text[m.end() :]
    return "Question: " + text.replace(",", " ,").replace(".", " .").replace("  ", " ") + " Show your work."


def test_decontaminates_planted_test_problems(decontaminator):
    rng = random.Random(3)
    # Long enough to be recognisable once reworded (GSM8k >= 40 words with a changed number, MATH >= 20 words);
    # shorter test problems are found when copied verbatim (below) or when a long enough run survives.
    gsm = [r["question"] for r in rows(DATA / "gsm8k" / "test.jsonl", "question")]
    mth = [r["problem"] for r in rows(DATA / "math" / "test.jsonl", "problem")]
    gsm = rng.sample([t for t in gsm if len(filters.tokenize(t)) >= 40], 60)
    mth = rng.sample([t for t in mth if len(filters.tokenize(t)) >= 20], 60)
    reworded = [_reword(t, True) for t in gsm] + [_reword(t, False) for t in mth]
    hits = decontaminator.match_many(reworded)
    missed = [t for t, h in zip(reworded, hits) if h is None]
    assert not missed, missed[:3]
    kinds = {h.kind for h in hits}
    assert kinds <= {"ngram", "near"} and "ngram" in kinds
    for orig, h in zip(gsm + mth, hits):
        if h.kind == "near":
            assert h.test_text == orig and h.score >= 0.7
        assert h.test_file in ("test.jsonl", "math500_test.jsonl")
    # Verbatim copies are exact matches, whatever their length.
    exact = decontaminator.match_many(gsm + mth + [r["problem"] for r in rows(DATA / "math" / "test.jsonl", "")[:50]])
    assert all(h is not None and h.kind == "exact" for h in exact)


def test_clean_problems_are_kept(decontaminator):
    rng = random.Random(4)
    train = [r["question"] for r in rows(DATA / "gsm8k" / "train.jsonl", "question")]
    sample = rng.sample(train, 400)
    tests = [it.text for it in decontaminator.items]
    ref = _ngram_reference(sample, tests)
    got = decontaminator.match_many(sample)
    # The vectorised n-gram rule agrees with the plain-Python reference on every problem.
    for text, r, g in zip(sample, ref, got):
        if r:
            assert g is not None and g.kind in ("ngram", "exact"), text
        else:
            assert g is None or g.kind == "near", text
    clean = [t for t, r in zip(sample, ref) if not r]
    kept = sum(g is None for t, r, g in zip(sample, ref, got) if not r)
    assert kept >= 0.98 * len(clean)
    handmade = [
        "A library lends 37 books on Monday and twice as many on Tuesday. How many books does it lend on both days?",
        "Find the remainder when $7^{100}$ is divided by 13.",
        "A rectangle has a perimeter of 46 cm and a length of 15 cm. What is its area in square centimetres?",
    ]
    assert decontaminator.match_many(handmade) == [None, None, None]


def test_match_many_equals_match(tmp_path):
    items = [BenchmarkItem(f"t{i}", "x.jsonl", f"Problem number {i}: a shop sells {i} pens at {i + 2} dollars each and "
                                          f"{i * 3} pencils at one dollar each. What is the total revenue?")
             for i in range(30)]
    dc = Decontaminator(items, near_threshold=0.7)
    qs = [items[5].text.replace("shop", "store"), "Nothing to see here, just a different question about cats.",
          items[9].text]
    assert dc.match_many(qs) == [dc.match(q) for q in qs]


@pytest.mark.parametrize("threshold", [0.5, 0.85])
def test_sketch_index_proposes_what_datasketch_proposes(threshold: float) -> None:
    """The compact index finds, for every query, the same candidates as ``datasketch.MinHashLSH`` with the same bands
    and rows (merged and recently added items, removals included), and the same Jaccard estimates as ``LeanMinHash``."""
    from datasketch import MinHashLSH

    from evolkit.filters import SketchIndex

    rng = random.Random(11)
    words = [f"w{i}" for i in range(60)]
    base = [[rng.choice(words) for _ in range(rng.randint(8, 30))] for _ in range(150)]
    texts = []
    for toks in base:  # each text, then copies with one to four words changed: near duplicates at many similarities
        texts.append(" ".join(toks))
        for changes in range(1, 5):
            t = list(toks)
            for _ in range(changes):
                t[rng.randrange(len(t))] = rng.choice(words)
            texts.append(" ".join(t))
    rng.shuffle(texts)
    mh = MinHasher()
    sketches = mh.minhashes(mh.hasher.encode(texts))
    idx = SketchIndex(threshold, 128)
    idx.MERGE_EVERY = 97  # several merges, and recent items at query time
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    assert (idx.b, idx.r) == (lsh.b, lsh.r)
    half = len(texts) // 2
    for i in range(half):
        idx.add(i, sketches[i])
        lsh.insert(i, sketches[i], check_duplication=False)
    for i in range(0, half, 7):  # removals, before and after merges
        idx.remove(i)
        lsh.remove(i)
    idx.remove(10**6)  # never added: nothing happens
    assert len(idx) == len(lsh.keys)
    proposed = 0
    for j in range(half, len(texts)):
        got = idx.similar(sketches[j])
        assert [i for i, _ in got] == sorted(lsh.query(sketches[j])), j
        assert [s for _, s in got] == [sketches[i].jaccard(sketches[j]) for i, _ in got]
        proposed += len(got)
        if j % 3 == 0:  # the index keeps growing while it is queried
            idx.add(j, sketches[j])
            lsh.insert(j, sketches[j], check_duplication=False)
    assert proposed > 10  # the data has near duplicates to find


def test_exact_keys_behave_like_a_dict_across_merges_and_removals() -> None:
    """``ExactKeys`` against a plain dict model: keys put only when no live item holds them, removals, lookups of
    merged and recent keys, digests sharing their first half or ending in zero bytes."""
    from evolkit.filters import ExactKeys

    rng = random.Random(5)
    pool = [rng.randbytes(16) for _ in range(300)]
    pool += [pool[i][:8] + rng.randbytes(8) for i in range(40)]  # same first half, other second half
    pool += [rng.randbytes(12) + bytes(4) for _ in range(20)]  # trailing zero bytes
    ex = ExactKeys()
    ex.MERGE_EVERY = 37
    model: dict[bytes, int] = {}
    item = 0
    for step in range(5000):
        key = rng.choice(pool)
        assert ex.get(key) == model.get(key), step
        if key not in model:
            ex.put(key, item)
            model[key] = item
            item += 1
        elif rng.random() < 0.3:  # the holder is taken out of the pool; the key is free again
            ex.discard(model.pop(key))
    assert all(ex.get(k) == model.get(k) for k in pool)
    with pytest.raises(ValueError, match="16-byte"):
        ex.put(b"short", 1)
