"""Content-aware replies for the local OpenAI-compatible test servers (tests/faultserver.py, benchmarks).

A reply depends only on the prompt, the sample index and the request's seed, so runs are reproducible. It reads what
the prompt asks for, by the prompt files' own wording:

* an evolution (the evolve system prompt): a new word problem with numbers;
* the IRM judge (``The ids are A, B, C``): a JSON object with scores and a ranking of exactly those ids;
* the PRM judge (``one entry per step (N steps)``): a JSON object labelling steps 1..N;
* the information-gain check: ``Yes``;
* anything else (solving, rollouts): a three-step solution whose final answer agrees across most samples.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

WORDS = (
    "apple river stone garden window candle market ladder basket pencil bridge forest harbor cookie marble ticket "
    "wagon lantern meadow orchard engine rocket violin puzzle castle island canyon glacier valley tunnel station "
    "library museum bakery workshop factory farmer painter sailor baker pilot teacher doctor student runner"
).split()

_IDS = re.compile(r"The ids are ([A-H](?:, [A-H])*);")
_STEPS = re.compile(r"one entry per step \((\d+) steps\)")


def h(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


def smart_reply(messages: list[dict[str, Any]], index: int, seed: Any = None) -> str:
    system = next((m.get("content", "") for m in messages if m.get("role") == "system"), "")
    last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    if system.startswith("You write math problems") or last.startswith("Rewrite the math problem"):
        x = h("evolve", last, seed, index)
        w = [WORDS[(x >> (3 * j)) % len(WORDS)] for j in range(10)]
        a, b, c = 3 + x % 89, 2 + (x >> 7) % 53, 2 + (x >> 13) % 11
        return (f"A {w[0]} {w[1]} near the {w[2]} holds {a} {w[3]}s and {b} {w[4]}s. Each {w[5]} adds {c} more "
                f"{w[6]}s, and the {w[7]} takes away {c + 1}. How many {w[8]}s and {w[9]}s are there in the end?")
    m = _IDS.search(last)
    if m:
        ids = m.group(1).split(", ")
        order = sorted(ids, key=lambda i: h("rank", last.split("Version")[0], i))
        scores = {i: {"definition": 9 - r, "precision": 8 - r // 2, "integrity": 9 - r} for r, i in enumerate(order)}
        return json.dumps({"scores": scores, "ranking": order})
    m = _STEPS.search(last)
    if m:
        n = int(m.group(1))
        bad = h("prm", last) % (n + 2)  # the first wrong step (none when beyond n)
        return json.dumps({"steps": [{"step": i, "label": "correct" if i < bad or bad == 0 else "incorrect"}
                                     for i in range(1, n + 1)]})
    if "new information" in last.lower() or "information gain" in last.lower():
        return "Yes"
    x = h("solve", last)
    ans = x % 97 if h("agree", last, index) % 10 < 8 else x % 97 + 1 + h("d", last, index) % 5
    return (f"Step 1: Read the numbers in the problem ({len(last)} characters).\n\n"
            f"Step 2: Combine them: {x % 13} + {x % 17} = {x % 13 + x % 17}.\n\n"
            f"Step 3: Finish the computation.\n\nThe answer is: {ans}")
