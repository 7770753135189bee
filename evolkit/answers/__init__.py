"""Final answers: extraction, equivalence and step splitting.

* :mod:`.extract`: :func:`extract_answer` pulls the final answer out of a model's text; :func:`gsm8k_gold` and
  :func:`math_gold` read the datasets' reference answers; :func:`normalize_answer` makes a display / string key.
* :mod:`.checker`: :class:`AnswerChecker` decides whether two answers are mathematically the same (a fast path in the
  calling process, math-verify in a pool of killable worker processes with per-item limits);
  :func:`majority_answer` clusters sampled answers by equivalence (self-consistency).
* :mod:`.steps`: :func:`split_steps` cuts a solution into reasoning steps (never inside a LaTeX block);
  :func:`steps_distribution` summarises steps per solution by source.

What the checker treats as equal, category by category, is written down in ``docs/answers.md``.
"""

from .checker import REASONS, AnswerChecker, CheckResult, majority_answer
from .extract import extract_answer, find_boxed, gsm8k_gold, math_gold, normalize_answer
from .steps import StepsTally, split_steps, steps_distribution

__all__ = [
    "REASONS",
    "AnswerChecker",
    "CheckResult",
    "extract_answer",
    "find_boxed",
    "gsm8k_gold",
    "majority_answer",
    "math_gold",
    "normalize_answer",
    "split_steps",
    "steps_distribution",
    "StepsTally",
]
