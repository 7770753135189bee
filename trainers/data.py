"""Turning published evolkit datasets into what each trainer consumes.

* ``sft``: TRL's prompt/completion format as published (prompt = WizardMath Alpaca template, completion = " " + steps).
* ``irm_pairs`` / ``irm_rankings``: TRL RewardTrainer's implicit-prompt preference rows (chosen, rejected, margin); a
  ranking expands to the pairs evolkit publishes as ``irm_pairs`` (every two variants of different rank).
* ``prm``: TRL's stepwise-supervision rows (prompt, completions = steps, labels = step verdicts), tokenized here with
  one separator after each step whose token carries the step label; every other token is -100.
* ``rl_prompts``: prompt (the template the policy sees), instruction (scored by the IRM), gold_answer; the published
  config holds the seed problems and every kept evolved problem (``source`` says which).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from evolkit.errors import DataError

IGNORE_INDEX = -100

SFT_COLUMNS = ("prompt", "completion")
RL_COLUMNS = ("prompt", "instruction", "gold_answer")

_ALPACA_INSTRUCTION = re.compile(r"### Instruction:\s*\n(.*?)\n\s*\n### Response:", re.S)


def instruction_from_prompt(prompt: str) -> str:
    """The instruction inside a WizardMath Alpaca prompt (the prompt itself when it is not in that template)."""
    m = _ALPACA_INSTRUCTION.search(prompt)
    return m.group(1).strip() if m else prompt


# ------------------------------------------------------------------------------------------------------------------ SFT


def sft_dataset(ds: Any) -> Any:
    """Keep TRL's prompt/completion columns (extra columns such as ``text`` or ``messages`` would change TRL's path)."""
    missing = [c for c in SFT_COLUMNS if c not in ds.column_names]
    if missing:
        raise DataError(f"sft dataset lacks column(s) {missing}; has {ds.column_names}")
    return ds.select_columns(list(SFT_COLUMNS))


# ------------------------------------------------------------------------------------------------------------------ IRM

MARGINS = ("scores", "rank", "none")


def ranking_pairs(row: dict[str, Any], margin: str = "scores", margin_scale: float = 1.0) -> list[dict[str, Any]]:
    """RewardTrainer rows (chosen, rejected, margin) of one ``irm_rankings`` row.

    The pairs are evolkit's own (:func:`evolkit.stages.irm.pairs_from_ranking`, which also makes the published
    ``irm_pairs``): every two variants of different rank, the better one chosen. ``margin``: ``scores`` = that
    function's judge-score margin (total score difference scaled to [0, 1], clipped at 0), ``rank`` = the rank gap,
    ``none`` = 0; then multiplied by ``margin_scale``. Pairs of identical texts are dropped (their loss has no
    gradient: both sides get the same score).
    """
    from evolkit.stages.irm import pairs_from_ranking

    if margin not in MARGINS:
        raise ValueError(f"margin must be one of {', '.join(MARGINS)}, not {margin!r}")
    gap = {}
    if margin == "rank":  # pair id -> rank gap (pair ids are "<ranking id>:<chosen id>><rejected id>")
        gap = {f"{row['id']}:{a['id']}>{b['id']}": float(b["rank"] - a["rank"])
               for a in row["variants"] for b in row["variants"]}
    out = []
    for p in pairs_from_ranking(row, "none" if margin == "rank" else margin):
        if p.chosen == p.rejected:
            continue
        m = gap[p.id] if margin == "rank" else float(p.margin)
        out.append({"chosen": p.chosen, "rejected": p.rejected, "margin": m * margin_scale})
    return out


def reward_dataset(ds: Any, use_margin: bool = True, margin: str = "scores", margin_scale: float = 1.0) -> Any:
    """RewardTrainer rows from an ``irm_pairs`` or ``irm_rankings`` split: chosen, rejected (+ margin).

    The margin column is dropped when ``use_margin`` is off or every margin is zero (same loss, less data).
    """
    from datasets import Dataset

    cols = ds.column_names
    if "variants" in cols:
        rows = [p for r in ds for p in ranking_pairs(r, margin=margin, margin_scale=margin_scale)]
        if not rows:
            raise DataError("irm_rankings: no ranking has two variants of different rank")
        ds = Dataset.from_list(rows)
    elif not {"chosen", "rejected"} <= set(cols):
        raise DataError(
            f"reward dataset needs chosen/rejected columns (irm_pairs) or variants (irm_rankings); has {cols}")
    elif "margin" in cols and margin_scale != 1.0:
        ds = ds.map(lambda r: {"margin": float(r["margin"]) * margin_scale})
    keep = ["chosen", "rejected"]
    if use_margin and "margin" in ds.column_names and any(float(m) != 0.0 for m in ds["margin"]):
        keep.append("margin")
    return ds.select_columns(keep)


# ------------------------------------------------------------------------------------------------------------------ PRM


def separator_ids(tokenizer: Any, separator: str) -> list[int]:
    ids = tokenizer(separator, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"step separator {separator!r} encodes to no token")
    return list(ids)


def tokenize_stepwise(
    tokenizer: Any,
    prompt: str,
    steps: Sequence[str],
    labels: Sequence[bool | int] | None = None,
    separator: str = "\n",
    max_length: int | None = None,
    train_on_last_step_only: bool = False,
) -> dict[str, list[int]]:
    """Token ids of ``prompt <sep> step_1 <sep> ... step_k <sep>`` and the label of each position.

    Each step is tokenized on its own and followed by the separator; the separator's (last) token after step i carries
    ``int(labels[i])`` (1 = correct, 0 = wrong), every other position is -100 (labels stay integers: a bool dtype would
    turn -100 into True). ``step_positions`` lists those token indices (also without labels, for inference). With
    ``max_length`` the sequence keeps its start; steps cut off lose their labels/positions.
    """
    if labels is not None and len(labels) != len(steps):
        raise DataError(f"{len(steps)} steps but {len(labels)} labels")
    sep = separator_ids(tokenizer, separator)
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"]) + sep
    lab = [IGNORE_INDEX] * len(ids)
    positions: list[int] = []
    for i, step in enumerate(steps):
        step_ids = list(tokenizer(step, add_special_tokens=False)["input_ids"]) + sep
        ids += step_ids
        lab += [IGNORE_INDEX] * len(step_ids)
        positions.append(len(ids) - 1)
        if labels is not None and (not train_on_last_step_only or i == len(steps) - 1):
            lab[-1] = int(bool(labels[i]))
    if max_length is not None and len(ids) > max_length:
        ids, lab = ids[:max_length], lab[:max_length]
        positions = [p for p in positions if p < max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": lab, "step_positions": positions}


def prm_dataset(ds: Any, tokenizer: Any, separator: str = "\n", max_length: int | None = None,
                train_on_last_step_only: bool = False, num_proc: int | None = None) -> Any:
    """Tokenized PRM rows (input_ids, attention_mask, labels); rows left without a labelled step are dropped."""
    missing = [c for c in ("prompt", "completions", "labels") if c not in ds.column_names]
    if missing:
        raise DataError(f"prm dataset lacks column(s) {missing}; has {ds.column_names}")

    def fn(row: dict[str, Any]) -> dict[str, Any]:
        out = tokenize_stepwise(tokenizer, row["prompt"], row["completions"], row["labels"], separator, max_length,
                                train_on_last_step_only)
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"], "labels": out["labels"]}

    from datasets import Features, List, Value

    # Explicit integer features: `labels` replaces the published bool column of the same name, and datasets would
    # otherwise keep its bool type and cast -100 to True (every token a "correct step").
    features = Features({"input_ids": List(Value("int64")), "attention_mask": List(Value("int64")),
                         "labels": List(Value("int64"))})
    out = ds.map(fn, remove_columns=ds.column_names, features=features, num_proc=num_proc,
                 desc="Tokenizing PRM steps")
    return out.filter(lambda r: any(x != IGNORE_INDEX for x in r["labels"]), num_proc=num_proc)


# ------------------------------------------------------------------------------------------------------------------- RL


def rl_dataset(ds: Any) -> Any:
    """RL prompt rows: ``prompt`` (what the policy sees), ``instruction`` (what the IRM scores), ``gold_answer``."""
    if "prompt" not in ds.column_names:
        raise DataError(f"rl_prompts dataset lacks a prompt column; has {ds.column_names}")
    if "instruction" not in ds.column_names:
        ds = ds.map(lambda b: {"instruction": [instruction_from_prompt(p) for p in b["prompt"]]}, batched=True)
    if "gold_answer" not in ds.column_names:
        ds = ds.add_column("gold_answer", [None] * len(ds))
    return ds.select_columns(list(RL_COLUMNS))


def rl_sources(ds: Any) -> dict[str, int]:
    """Rows per ``source`` of an ``rl_prompts`` split (seed datasets by name, evolved problems as ``evol``...)."""
    if "source" not in ds.column_names:
        return {"unknown": len(ds)}
    return dict(sorted(Counter(str(s) for s in ds["source"]).items()))
