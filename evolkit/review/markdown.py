"""What reviewers read, as markdown (with LaTeX between ``$``): any review tool that renders markdown can show it.

* Figure code (``[asy] ... [/asy]``, MATH's Asymptote figures) is folded into a ``<details>`` block: a reader sees
  one line ("Figure: Asymptote code, N lines") instead of dozens of drawing commands above the text that matters.
* A solution is a numbered list of its steps (``**1.** ...``), the numbers reviewers answer with; the "Step k:"
  markers the teacher wrote are dropped (the numbers replace them).
"""

from __future__ import annotations

import re

from ..judging import strip_step_marker

_FIGURE = re.compile(r"\[asy\](.*?)\[/asy\]", re.DOTALL | re.IGNORECASE)


def fold_figures(text: str) -> str:
    """``[asy]...[/asy]`` blocks -> a closed ``<details>`` block with the code inside (unchanged otherwise)."""

    def repl(m: re.Match[str]) -> str:
        code = m.group(1).strip("\n")
        n = len(code.splitlines())
        return (f"\n\n<details><summary>Figure: Asymptote code, {n} line{'s' if n != 1 else ''} (click to show)"
                f"</summary>\n\n```\n{code}\n```\n\n</details>\n\n")

    return _FIGURE.sub(repl, text).strip()


def numbered_steps(steps: list[str]) -> str:
    """The steps as a numbered list reviewers refer to by number (figure code folded)."""
    return "\n\n".join(f"**{i}.** {fold_figures(strip_step_marker(s))}" for i, s in enumerate(steps, 1))
