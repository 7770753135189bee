"""Benchmark evaluation (``evolkit eval``): GSM8k / MATH / MATH500 pass@1 with the WizardMath protocol and evolkit's
checker.

* :mod:`.bench`: the benchmarks (loading, gold answers), prompt styles and the paper's protocol;
* :mod:`.score`: both checkers on every sample, pass@k and maj@k;
* :mod:`.report`: ``results.md`` and ``results.png``;
* :mod:`.run`: :func:`run_eval` (settings, resumable generation, the files it writes);
* :mod:`.cli`: the ``evolkit eval`` command.

Test-set contamination of a dataset is :mod:`evolkit.contamination` (``evolkit contamination``).
"""

from __future__ import annotations

from .bench import BENCHMARKS, PAPER_REFERENCE, PROMPT_STYLES, EvalItem, load_benchmark, prompt_style, protocol
from .report import markdown_report
from .run import EvalSettings, protocol_info, run_eval
from .score import pass_at_k, score_completions, summarize

__all__ = [
    "BENCHMARKS", "PAPER_REFERENCE", "PROMPT_STYLES", "EvalItem", "EvalSettings", "load_benchmark", "markdown_report",
    "pass_at_k", "prompt_style", "protocol", "protocol_info", "run_eval", "score_completions", "summarize",
]
