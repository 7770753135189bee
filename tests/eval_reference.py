"""Test helpers for ``evolkit eval``: the benchmarks' reference solutions written the way WizardMath answers, and a
backend that answers every eval request with them (a check of the scorers and of the eval pipeline end to end).

Test-only: evolkit's product never answers with the gold solutions.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence

from evolkit.backends.base import Backend, Completion, Request, Result
from evolkit.eval import EvalItem

_CALC = re.compile(r"<<[^<>\n]*>>")


def reference_completion(item: EvalItem, kind: str) -> str:
    """The reference solution as WizardMath writes answers: the worked steps, then ``The answer is: X``."""
    ref = item.reference
    if kind == "gsm8k":
        body, _, final = ref.rpartition("####")
        return _CALC.sub("", body).rstrip() + "\nThe answer is: " + final.strip()
    return ref.rstrip() + "\nThe answer is: " + " ".join((item.gold or "").split())  # the answer on one line


class ReferenceBackend(Backend):
    """Answers each eval request (matched by ``meta["id"]``) with :func:`reference_completion`; records the requests."""

    model = "reference"

    def __init__(self, items: Sequence[EvalItem], kind: str):
        super().__init__()
        self.items = {it.id: it for it in items}
        self.kind = kind
        self.requests: list[Request] = []

    async def stream(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, Result]]:
        for i, r in enumerate(requests):
            self.requests.append(r)
            prompt = "".join(m.get("content", "") for m in r.messages)
            # The item whose question the prompt asks (the longest that appears: no question is part of another's).
            item = max((it for it in self.items.values() if it.question in prompt), key=lambda it: len(it.question),
                       default=None)
            if item is None:
                res = Result(error="unknown problem")
            else:
                text = reference_completion(item, self.kind)
                res = Result([Completion(text, "stop", 0, len(text) // 4) for _ in range(r.sampling.n)])
            self.stats.add(res)
            yield i, res
