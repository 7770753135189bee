"""Tables for the terminal and PNG plots for run folders, shared by every stage that reports figures.

* :func:`print_table` / :func:`table`: a rich table (plain text when the output is not a terminal).
* :func:`line_plot`: series over a common x axis (optionally with bars on a second axis), e.g. a growth curve.
* :func:`panel_plot`: several small line charts side by side sharing x and series names (e.g. metrics by round).
* :func:`bar_plot`: grouped bars by category.
* :func:`fmt`, :func:`format_counts`: compact cell text.

Plots use matplotlib's Agg backend (no display needed), one PNG per call, written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def fmt(x: Any, digits: int = 2) -> str:
    """A number for a table cell: ``-`` for None/NaN, integers without decimals."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, int) or (isinstance(x, float) and digits == 0):
        return f"{x:,.0f}"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def format_counts(counts: Mapping[str, int] | None, sep: str = ", ") -> str:
    """``{"a": 3, "b": 1}`` -> ``"a 3, b 1"`` (largest first, zeros left out)."""
    if not counts:
        return ""
    items = sorted(((k, v) for k, v in counts.items() if v), key=lambda kv: (-kv[1], kv[0]))
    return sep.join(f"{k} {v}" for k, v in items)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Any:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(str(c), overflow="fold")
    for r in rows:
        t.add_row(*[c if isinstance(c, str) else fmt(c) for c in r])
    return t


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], file: Any = None) -> None:
    from rich.console import Console

    width = None if file is not None else max(120, _terminal_width())
    Console(file=file, width=width).print(table(title, columns, rows))


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 160


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    os.replace(tmp, path)
    return path


def _clean(ys: Sequence[Any]) -> list[float]:
    return [float("nan") if y is None else float(y) for y in ys]


def line_plot(path: str | os.PathLike[str], x: Sequence[Any], series: Mapping[str, Sequence[Any]], title: str = "",
              xlabel: str = "", ylabel: str = "", bars: Mapping[str, Sequence[Any]] | None = None,
              annotate_last: bool = True) -> Path:
    """Lines (None values leave gaps); ``bars`` are drawn behind them on the same y axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    if bars:
        width = 0.8 / len(bars)
        for i, (name, ys) in enumerate(bars.items()):
            offs = [xi + (i - (len(bars) - 1) / 2) * width for xi in x]
            ax.bar(offs, _clean(ys), width=width, alpha=0.3, label=name)
    styles = ["-o", "--s", "-.^", ":D"]
    for i, (name, ys) in enumerate(series.items()):
        vals = _clean(ys)
        ax.plot(list(x), vals, styles[i % len(styles)], label=name, linewidth=2, markersize=5)
        if annotate_last and vals and not math.isnan(vals[-1]):
            ax.annotate(fmt(vals[-1], 0), (x[-1], vals[-1]), textcoords="offset points", xytext=(6, 0 if i else 6),
                        fontsize=9)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks(list(x))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    return _save(fig, path)


def panel_plot(path: str | os.PathLike[str], x: Sequence[Any], panels: Mapping[str, Mapping[str, Sequence[Any]]],
               title: str = "", xlabel: str = "") -> Path:
    """One small line chart per panel (panel title -> {series name -> values}); series share colours across panels."""
    plt = _plt()
    n = max(1, len(panels))
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    names: list[str] = []
    for series in panels.values():
        for s in series:
            if s not in names:
                names.append(s)
    colors = {s: f"C{i}" for i, s in enumerate(names)}
    for k, (ptitle, series) in enumerate(panels.items()):
        ax = axes[k // cols][k % cols]
        for s, ys in series.items():
            ax.plot(list(x), _clean(ys), "-o", color=colors[s], label=s, markersize=4)
        ax.set_title(ptitle, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_xticks(list(x))
        ax.grid(alpha=0.3)
    for k in range(len(panels), rows * cols):
        axes[k // cols][k % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, path)


def bar_plot(path: str | os.PathLike[str], categories: Sequence[str], series: Mapping[str, Sequence[Any]],
             title: str = "", ylabel: str = "", horizontal: bool = False) -> Path:
    """Grouped bars: one group per category, one bar per series."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(categories) + 2), 4.5))
    k = max(1, len(series))
    width = 0.8 / k
    idx = list(range(len(categories)))
    for i, (name, ys) in enumerate(series.items()):
        pos = [j + (i - (k - 1) / 2) * width for j in idx]
        (ax.barh if horizontal else ax.bar)(pos, _clean(ys), width, label=name)
    if horizontal:
        ax.set_yticks(idx, list(categories))
        ax.set_xlabel(ylabel)
    else:
        ax.set_xticks(idx, list(categories), rotation=20, ha="right")
        ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3, axis="x" if horizontal else "y")
    if len(series) > 1:
        ax.legend(fontsize=9)
    return _save(fig, path)
