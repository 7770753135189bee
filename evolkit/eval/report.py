"""Eval reports: ``results.md`` (tables of both checkers, by level and subject, the protocol that ran, the paper's
figures) and ``results.png`` (grouped bars of pass@1)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .bench import PAPER_REFERENCE
from .score import CHECKERS

log = logging.getLogger("evolkit.eval")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def paper_rows(bench: str) -> list[tuple[str, float]]:
    key = "gsm8k" if bench == "gsm8k" else ("math" if bench == "math" else None)
    if key is None:
        return []
    return [(m, v[key]) for m, v in PAPER_REFERENCE.items()]


def _code(x: Any) -> str:
    return "`" + str(x).replace("\n", "\\n") + "`"


def protocol_lines(p: dict[str, Any] | None) -> list[str]:
    """The protocol that ran, named, with the paper's settings it departs from (empty for summaries without it)."""
    if not p:
        return []
    titles = {"wizardmath": "the WizardMath paper's", "evolkit": "evolkit's default", "custom": "a custom"}
    lines = [
        f"Protocol: **{p['name']}** ({titles.get(p['name'], p['name'])} protocol): prompt template "
        f"`{p['prompt_template']}` ({'raw text' if p['raw_prompt'] else 'chat template'}), stop strings "
        + (", ".join(_code(x) for x in p["stop"]) or "none")
        + f", checker `{p['checker']}`, max {p['max_tokens']} new tokens, "
        + ("greedy" if p["greedy"] else f"sampled (temperature {p['temperature']}, top_p {p['top_p']}, n {p['n']})")
        + ".",
        "",
    ]
    if p["departures"]:
        lines += ["Where this departs from the paper's protocol:", ""] + [f"- {d}" for d in p["departures"]] + [""]
    return lines


def markdown_report(summary: dict[str, Any], checker: str) -> str:
    st = summary["settings"]
    names = list(CHECKERS) if checker == "both" else [checker]
    label = {"evolkit": "evolkit checker", "wizardmath": "WizardMath protocol"}
    mode = "greedy" if not st["temperature"] else f"T={st['temperature']}, top_p={st['top_p']}, n={st['n']}"
    lines = [
        f"# {st['model']} on {st['bench']}",
        "",
        f"prompt `{st['prompt']}`, {mode}, max {st['max_tokens']} new tokens, backend {st['backend']}; "
        f"{summary['problems']} problems, {summary['samples']} samples"
        + (f", {summary['failed_generations']} failed generations" if summary.get("failed_generations") else ""),
        "",
        *protocol_lines(summary.get("protocol")),
        "| checker | pass@1 (%) | correct / samples | no answer |",
        "|---|---:|---:|---:|",
    ]
    for nm in names:
        sc = summary["scores"][nm]
        lines.append(f"| {label[nm]} | {_pct(sc['pass@1'])} | {sc['correct']} / {sc['total']} | {sc['no_answer']} |")
    if st["n"] > 1:
        lines += ["", "| checker | " + " | ".join(f"pass@{k}" for k in summary["scores"][names[0]]["pass@k"])
                  + " | " + " | ".join(f"maj@{k}" for k in summary["scores"][names[0]]["maj@k"]) + " |"]
        lines.append("|---|" + "---:|" * (2 * len(summary["scores"][names[0]]["pass@k"])))
        for nm in names:
            sc = summary["scores"][nm]
            lines.append(
                f"| {label[nm]} | " + " | ".join(_pct(v) for v in sc["pass@k"].values()) + " | "
                + " | ".join(_pct(v) for v in sc["maj@k"].values()) + " |"
            )
    for title, key, head in (("By level", "by_level", "level"), ("By subject", "by_subject", "subject")):
        groups = summary.get(key) or {}
        if not groups:
            continue
        heads = " | ".join(f"{label[n]} (%)" for n in names)
        lines += ["", f"## {title}", "", f"| {head} | problems | {heads} |", "|---|---:|" + "---:|" * len(names)]
        for g, d in groups.items():
            cells = " | ".join(f"{_pct(d[n]['pass@1'])} ({d[n]['correct']})" for n in names)
            lines.append(f"| {g} | {d['problems']} | {cells} |")
    dis = summary.get("checker_disagreements") or {}
    if checker == "both" and (dis.get("evolkit_only") or dis.get("wizardmath_only")):
        lines += ["", f"Checkers disagree on {dis['evolkit_only'] + dis['wizardmath_only']} samples: "
                  f"{dis['evolkit_only']} correct only for evolkit, "
                  f"{dis['wizardmath_only']} only for the WizardMath protocol."]
    ref = paper_rows(st["bench"])
    if ref:
        lines += ["", "## WizardMath paper (greedy, CoT prompt, pass@1 %)", "",
                  f"| model | {st['bench']} |", "|---|---:|"]
        lines += [f"| {m} | {v} |" for m, v in ref]
    return "\n".join(lines) + "\n"


def plot_report(summary: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars of pass@1 (%) for both checkers: overall, then by MATH level and by subject when present."""
    from ..report import bar_plot

    cats = ["overall"]
    groups = [{n: summary["scores"][n] for n in CHECKERS}]
    for lv, d in (summary.get("by_level") or {}).items():
        cats.append(f"Level {lv}")
        groups.append(d)
    for sub, d in (summary.get("by_subject") or {}).items():
        cats.append(sub)
        groups.append(d)
    series = {
        "evolkit checker": [100 * g["evolkit"]["pass@1"] for g in groups],
        "WizardMath protocol": [100 * g["wizardmath"]["pass@1"] for g in groups],
    }
    st = summary["settings"]
    ref = ", ".join(f"{m.replace('WizardMath-', '').replace('-V1.0', '')} {v}" for m, v in paper_rows(st["bench"]))
    title = f"{st['model']} on {st['bench']} ({st['prompt']} prompt), pass@1 %" + (f"; paper: {ref}" if ref else "")
    try:
        return bar_plot(path, cats, series, title=title, ylabel="pass@1 (%)")
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        log.warning("matplotlib is not installed: no plot")
        return None
