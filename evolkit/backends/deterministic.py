"""A deterministic backend for tests and dry runs: no model, instant, same output for the same request.

It answers by the request's ``task`` (``solve``, ``evolve:<operation>``, ``judge:irm``, ``judge:prm``, ``check:*`` ...)
using the request's ``meta`` (the bare question, the gold answer when the stage knows it). Outputs are pseudo-random but
reproducible functions of (prompt, sample offset), with a configurable share of correct answers, so stages exercise all of
their paths (verified and dropped answers, agreement below threshold, parse failures) at full speed. It is selected with
``backend: {kind: deterministic}`` and is never a default.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from .base import Backend, Completion, Request, Result

_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def _h(*parts: Any) -> int:
    return int(hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=8).hexdigest(), 16)


def _u(*parts: Any) -> float:
    """A reproducible uniform number in [0, 1)."""
    return (_h(*parts) % 1_000_003) / 1_000_003


_NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jia", "Kofi", "Lena", "Mateo", "Nia"]
_ITEMS = ["apples", "marbles", "stamps", "books", "tickets", "coins", "pencils", "cookies", "shells", "cards", "bolts"]
_PLACES = ["market", "library", "garden", "workshop", "school fair", "harbour", "bakery", "museum", "train station"]


class DeterministicBackend(Backend):
    def __init__(
        self,
        model: str = "deterministic",
        accuracy: float = 0.7,
        noise: float = 0.15,
        responders: dict[str, Callable[[Request, int], str]] | None = None,
        delay: float = 0.0,
    ):
        super().__init__()
        self.model = model
        self.accuracy = accuracy
        self.noise = noise
        self.responders = dict(responders or {})
        #: Seconds to wait per request (lets tests kill a run mid-stage).
        self.delay = delay

    # -- task responders -------------------------------------------------------------------------------------------
    def _solve(self, req: Request, k: int) -> str:
        q = req.meta.get("question") or req.messages[-1]["content"]
        gold = req.meta.get("gold")
        nums = [float(x) for x in _NUM.findall(q)][:6]
        base = sum(nums) if nums else float(_h(q) % 50)
        answer: str
        if gold is not None and _u("acc", q) < self.accuracy:
            answer = str(gold)
        elif _u("noise", q, k) < self.noise:
            answer = _fmt(base + 1 + _h("n", q, k) % 7)
        else:
            answer = _fmt(base)
        if _u("noanswer", q, k) < 0.03:
            return "Step 1: Read the problem carefully.\n\nStep 2: I am not sure how to finish."
        steps = [f"Step 1: The numbers given are {', '.join(_fmt(n) for n in nums) or 'none'}."]
        steps.append(f"Step 2: Combining them gives {_fmt(base)}.")
        if answer != _fmt(base):
            steps.append(f"Step 3: Adjusting for the question, the result is {answer}.")
        steps.append(f"The answer is: {answer}")
        return "\n\n".join(steps)

    def _evolve(self, req: Request, k: int, op: str) -> str:
        q = req.meta.get("question") or req.messages[-1]["content"]
        h = _h("evolve", q, op, k)
        name, item, place = _NAMES[h % len(_NAMES)], _ITEMS[(h >> 8) % len(_ITEMS)], _PLACES[(h >> 16) % len(_PLACES)]
        a, b, c = 3 + h % 47, 2 + (h >> 6) % 31, 2 + (h >> 12) % 9
        if op in ("simplify", "downward_simplify"):
            sent = re.split(r"(?<=[.?!])\s+", q.strip())
            core = " ".join(sent[-2:]) if len(sent) > 1 else q
            return f"{name} is at the {place}. {_renumber(core, h)} (Assume {name} starts with {a} {item}.)"
        if op in ("new_easier", "new_easier_problem"):
            return (
                f"At the {place}, {name} has {a} {item} and gets {b} more, then gives away {c}. "
                f"How many {item} does {name} have now?"
            )
        extra = {
            "add_constraints": f" In addition, {name} must set aside {c} {item} for the {place} and may use at most {a}.",
            "concretize": f" Here the {item} come from the {place}, and each of the {b} boxes holds exactly {c} of them.",
            "increase_reasoning": f" Afterwards, {name} splits the result into {c} equal groups and adds {b} to one group;"
            f" how large is that group?",
        }.get(op, f" Then {name} repeats this {c} times at the {place}.")
        return _renumber(q.strip(), h) + extra

    def _judge_irm(self, req: Request, k: int) -> str:
        ids = req.meta.get("variant_ids") or []
        if _u("irm-bad", req.messages[-1]["content"], k) < 0.05:
            return "I think the second one is better, but it is hard to say."
        texts = req.meta.get("variant_texts") or {}
        scores = {}
        for vid in ids:
            base = 1 + _h("irm", vid, texts.get(vid)) % 9
            scores[vid] = {"definition": base, "precision": 1 + (base * 7) % 10, "integrity": 1 + (base * 3) % 10}
        ranking = sorted(ids, key=lambda v: (-sum(scores[v].values()), v))
        # A little position bias (depends on the prompt, i.e. on the order shown): swapped-order judging must catch it.
        if len(ranking) > 1 and _u("irm-position", req.messages[-1]["content"]) < 0.15:
            ranking[0], ranking[1] = ranking[1], ranking[0]
        return json.dumps({"scores": scores, "ranking": ranking})

    def _judge_prm(self, req: Request, k: int) -> str:
        steps = req.meta.get("steps") or []
        correct = req.meta.get("final_correct")
        labels = []
        bad_from = None if correct else max(0, len(steps) - 1 - _h("prm", req.messages[-1]["content"]) % max(1, len(steps)))
        content = req.messages[-1]["content"]
        for i, _ in enumerate(steps):
            labels.append({"step": i + 1, "label": "incorrect" if bad_from is not None and i >= bad_from else "correct",
                           "confidence": round(0.5 + 0.5 * _u("prm-conf", content, i), 2)})
        return json.dumps({"steps": labels})

    def _rollout(self, req: Request, k: int) -> str:
        """Continue a solution prefix (``meta["prefix"]``): a prefix that already states a wrong value keeps it; a sound
        prefix reaches the gold answer most of the time (Monte-Carlo step labelling)."""
        if req.meta.get("prefix") is None:
            return self._solve(req, k)
        q, gold, prefix = req.meta.get("question") or "", req.meta.get("gold"), req.meta["prefix"]
        stated = _STATED.findall(prefix)
        if stated and gold is not None and _fmt(float(stated[-1])) != _fmt_gold(gold):
            answer = _fmt(float(stated[-1]))
        elif gold is not None and _u("rollout", q, prefix, k) < 0.85:
            answer = str(gold)
        else:
            nums = [float(x) for x in _NUM.findall(q)][:6]
            answer = _fmt((sum(nums) if nums else 0) + 1 + _h("r", q, prefix, k) % 5)
        return f"Continuing from there, the remaining work gives {answer}.\n\nThe answer is: {answer}"

    def respond(self, req: Request, k: int) -> str:
        task = req.task or "solve"
        for prefix, fn in self.responders.items():
            if task.startswith(prefix):
                return fn(req, k)
        if task.startswith("rollout"):
            return self._rollout(req, k)
        if task.startswith("solve"):
            return self._solve(req, k)
        if task.startswith("evolve:"):
            return self._evolve(req, k, task.split(":", 1)[1])
        if task.startswith("judge:irm"):
            return self._judge_irm(req, k)
        if task.startswith("judge:prm"):
            return self._judge_prm(req, k)
        if task.startswith("check:"):
            return "Yes" if _u("check", req.messages[-1]["content"]) < 0.9 else "No"
        return f"Deterministic reply {_h(req.messages, k) % 10_000}."

    async def stream(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, Result]]:
        for i, req in enumerate(requests):
            if self.delay:
                await asyncio.sleep(self.delay)
            comps = []
            for j in range(req.sampling.n):
                text = self.respond(req, req.sample_offset + j)
                comps.append(
                    Completion(text, "stop", sum(len(m["content"]) for m in req.messages) // 4 if j == 0 else 0, len(text) // 4)
                )
            res = Result(comps)
            self.stats.add(res)
            yield i, res


_STATED = re.compile(r"(?:gives|result is|answer is:?)\s*(-?\d+(?:\.\d+)?)", re.I)


def _fmt_gold(gold: Any) -> str:
    try:
        return _fmt(float(str(gold).replace(",", "")))
    except ValueError:
        return str(gold)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}".rstrip("0").rstrip(".")


def _renumber(text: str, h: int) -> str:
    """Change each number a little (deterministically) so evolved problems differ from their parents."""
    counter = iter(range(1000))

    def rep(m: re.Match[str]) -> str:
        v = float(m.group(0))
        return _fmt(v + 1 + (h >> next(counter)) % 5)

    return _NUM.sub(rep, text)
