"""A deterministic fake backend for tests: no model, instant, the same output for the same request.

It answers by the request's ``task`` (``solve``, ``evolve:<operation>``, ``judge:irm``, ``judge:prm``, ``rollout``,
``check:*`` ...) and reads everything else from the prompt itself, the way a model would: the question out of the
prompt that evolkit's own prompt files render (``evolkit/prompts``: the last user message, or the raw prompt of the
evaluation styles), the versions an IRM judge compares, the steps a PRM judge labels, the beginning of a rollout. Gold
answers come from its own index of the seed data (the packaged samples and, under ``EVOLKIT_DATA``, the GSM8k and MATH
train and test files, read through :mod:`evolkit.seeds`); a question it does not know has no gold answer.

Outputs are pseudo-random but reproducible functions of (prompt, sample index), with a configurable share of correct
answers, so stages exercise all of their paths (verified and dropped answers, agreement below threshold, parse
failures) at full speed. A run config selects it with ``backend: {kind: custom, factory:
"tests.doubles.deterministic:DeterministicBackend", model: deterministic, options: {accuracy: 0.7, delay: 0}}``
(see :func:`tests.doubles.fake_backend`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from evolkit.backends.base import Backend, Completion, Request, Result

_NUM = re.compile(r"-?\d+(?:\.\d+)?")
_SLOT = "\x00QUESTION\x00"


def _h(*parts: Any) -> int:
    return int(hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=8).hexdigest(), 16)


def _u(*parts: Any) -> float:
    """A reproducible uniform number in [0, 1)."""
    return (_h(*parts) % 1_000_003) / 1_000_003


# ---------------------------------------------------------------------------------------------------- gold answers
@functools.cache
def gold_index() -> dict[str, str]:
    """Question (stripped) -> gold answer, from the seed data files evolkit ships or finds under ``EVOLKIT_DATA``."""
    from evolkit import seeds, settings

    index: dict[str, str] = {}

    def add(problems: list[Any]) -> None:
        for p in problems:
            if p.gold_answer is not None:
                index.setdefault(p.question.strip(), str(p.gold_answer))

    for source in ("gsm8k", "math"):
        add(seeds.load_problems(source))
    data = settings.data_dir()
    for source, split, rel in (("gsm8k", "train", "gsm8k/train.jsonl"), ("math", "train", "math/train.jsonl"),
                               ("gsm8k", "test", "gsm8k/test.jsonl"), ("math", "test", "math/test.jsonl"),
                               ("math", "test", "math/math500_test.jsonl")):
        if (data / rel).is_file():
            add(seeds.load_problems(source, data / rel, split=split))
    return index


def gold_of(question: str | None) -> str | None:
    return gold_index().get(question.strip()) if question else None


# ---------------------------------------------------------------------------------------------- reading the prompt
def _split(rendered: str) -> tuple[str, str]:
    pre, _, post = rendered.partition(_SLOT)
    return pre, post


@functools.cache
def _question_templates(operation: str | None) -> tuple[tuple[str, str], ...]:
    """(text before, text after) the question in every prompt evolkit renders around one question, most specific
    first: the evolution operations (and the IRM rewrite for ``operation``), the evaluation styles, the solve prompt."""
    from evolkit import eval as ev
    from evolkit import prompts
    from evolkit.errors import ConfigError

    out: list[tuple[str, str]] = []
    for path in sorted(prompts.PROMPT_DIR.glob("*.jinja")):
        try:
            out.append(_split(prompts.render(path.stem, question=_SLOT)))
        except ConfigError:  # needs other variables too
            pass
    if operation:
        out.append(_split(prompts.render("irm_rewrite", question=_SLOT, operation=operation)))
    for style in ev.PROMPT_STYLES:
        out.append(_split(ev.prompt_style(style).render(_SLOT)))
    return tuple(sorted(set(out), key=lambda pp: -(len(pp[0]) + len(pp[1]))))


def prompt_of(req: Request) -> str:
    """The text the model is asked about: the raw prompt, or the last user message."""
    if req.raw:
        return req.prompt_text()
    users = [m["content"] for m in req.messages if m.get("role") == "user"]
    return users[-1] if users else req.messages[-1]["content"]


def question_of(req: Request) -> str:
    """The question inside the request's prompt (the whole prompt when no known prompt file rendered it)."""
    text = prompt_of(req)
    op = req.task.split(":", 1)[1] if req.task.startswith("evolve:") else None
    for pre, post in _question_templates(op):
        if len(text) >= len(pre) + len(post) and text.startswith(pre) and text.endswith(post):
            return text[len(pre): len(text) - len(post)]
    return text


def _between(text: str, start: str, end: str) -> str | None:
    a = text.find(start)
    if a < 0:
        return None
    a += len(start)
    b = text.find(end, a)
    return text[a:b] if b >= 0 else None


@dataclass
class IRMPrompt:
    original: str
    ids: list[str]
    texts: dict[str, str] = field(default_factory=dict)


def irm_prompt(text: str) -> IRMPrompt:
    """The original and the versions of a ``judge_irm`` prompt."""
    m = re.search(r"\nThe ids are (.*); score and rank each of them exactly once\.$", text)
    ids = m.group(1).split(", ") if m else []
    end = text.rfind("\n\nReply with one JSON object")
    marks = []
    pos = 0
    for vid in ids:
        k = text.find(f"\n\nVersion {vid}:\n", pos)
        if k < 0:
            return IRMPrompt("", ids)
        marks.append((vid, k))
        pos = k + 1
    original = _between(text, "Original problem:\n", "\n\nVersion ") or ""
    texts = {}
    for n, (vid, k) in enumerate(marks):
        stop = marks[n + 1][1] if n + 1 < len(marks) else end
        texts[vid] = text[k + len(f"\n\nVersion {vid}:\n"): stop]
    return IRMPrompt(original, ids, texts)


@dataclass
class PRMPrompt:
    problem: str
    steps: list[str]


def prm_prompt(text: str) -> PRMPrompt:
    """The problem and the (marker-stripped) steps of a ``judge_prm`` prompt."""
    m = re.search(r"one entry per step \((\d+) steps\)", text)
    n = int(m.group(1)) if m else 0
    problem = _between(text, "\n\nProblem:\n", "\n\nSolution:\n") or ""
    body = _between(text, "\n\nSolution:\n", "\n\nReply with one JSON object") or ""
    parts = re.split(r"(?m)^\[(\d+)\] ", body)
    steps = [p.rstrip("\n") for p in parts[2::2]]
    if len(steps) != n:  # a step that itself holds a "[k] " line: trust the count
        steps = (steps + [""] * n)[:n]
    return PRMPrompt(problem, steps)


@dataclass
class RolloutPrompt:
    problem: str
    prefix: list[str]


def rollout_prompt(text: str) -> RolloutPrompt | None:
    """The problem and the given steps of a ``prm_rollout`` prompt (None for another prompt)."""
    head = "\n\nProblem:\n"
    mid = "\n\nBeginning of the solution:\n"
    if head not in text or mid not in text:
        return None
    problem = _between(text, head, mid) or ""
    rest = text[text.index(mid) + len(mid):]
    return RolloutPrompt(problem, [s for s in rest.split("\n") if s] if rest.strip() else [])


_NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jia", "Kofi", "Lena", "Mateo", "Nia"]
_ITEMS = ["apples", "marbles", "stamps", "books", "tickets", "coins", "pencils", "cookies", "shells", "cards", "bolts"]
_PLACES = ["market", "library", "garden", "workshop", "school fair", "harbour", "bakery", "museum", "train station"]


class DeterministicBackend(Backend):
    """The fake: ``accuracy`` is the share of known questions answered with their gold answer, ``noise`` the share of
    samples that stray from the backend's own consensus, ``delay`` seconds per request; ``responders`` maps task
    prefixes to functions ``(request, sample index) -> text`` that take over those tasks."""

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
        q = question_of(req)
        gold = gold_of(q)
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
        q = question_of(req)
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
        shown = irm_prompt(prompt_of(req))
        ids = shown.ids
        if _u("irm-bad", req.messages[-1]["content"], k) < 0.05:
            return "I think the second one is better, but it is hard to say."
        texts = shown.texts
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
        shown = prm_prompt(prompt_of(req))
        steps = shown.steps
        correct = self._final_correct(shown)
        labels = []
        bad_from = None if correct else max(0, len(steps) - 1 - _h("prm", req.messages[-1]["content"]) % max(1, len(steps)))
        content = req.messages[-1]["content"]
        for i, _ in enumerate(steps):
            labels.append({"step": i + 1, "label": "incorrect" if bad_from is not None and i >= bad_from else "correct",
                           "confidence": round(0.5 + 0.5 * _u("prm-conf", content, i), 2)})
        return json.dumps({"steps": labels})

    def expected(self, question: str) -> str | None:
        """The answer a checker would accept for ``question``: its gold answer, or, for a question outside the seed
        data (an evolved one), the answer most of this backend's own samples give (what majority voting keeps)."""
        gold = gold_of(question)
        if gold is not None:
            return gold
        nums = [float(x) for x in _NUM.findall(question)][:6]
        return _fmt(sum(nums) if nums else float(_h(question) % 50))

    def _final_correct(self, shown: PRMPrompt) -> bool:
        """Whether the solution a PRM judge sees ends with the expected answer."""
        m = _ANSWER.findall("\n".join(shown.steps))
        expected = self.expected(shown.problem)
        return bool(m) and expected is not None and _fmt_gold(m[-1].strip()) == _fmt_gold(expected)

    def _rollout(self, req: Request, k: int) -> str:
        """Continue the beginning of a solution (a ``prm_rollout`` prompt): a beginning that already states a wrong
        value keeps it; a sound one reaches the expected answer most of the time (Monte-Carlo step labelling)."""
        shown = rollout_prompt(prompt_of(req))
        if shown is None:
            return self._solve(req, k)
        q, gold, prefix = shown.problem, self.expected(shown.problem), "\n\n".join(shown.prefix)
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
                prompt_tokens = sum(len(m["content"]) for m in req.messages) // 4 if j == 0 else 0
                comps.append(Completion(text, "stop", prompt_tokens, len(text) // 4))
            res = Result(comps)
            self.stats.add(res)
            yield i, res


_ANSWER = re.compile(r"The answer is:?\s*(.+)")
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
