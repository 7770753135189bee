"""The RLEIF reward r = r_I x r_A (WizardMath, arXiv 2308.09583, section 3.3).

* r_I, the instruction reward: sigmoid of the IRM's score of the instruction (how good a problem it is);
* r_A, the answer reward: the PRM's judgement of the generated solution's steps, aggregated over steps by ``min``
  (default: a solution is as good as its worst step) or ``prod`` (the probability that every step is right);
* r = r_I * r_A.

The pure functions below carry the arithmetic (tested on fixed numbers); :class:`RLEIFReward` wires them to the
models as ONE callable, in the signature of TRL's GRPO/RLOO reward functions (TRL sums several reward functions, so the
product must be computed inside one). The ``instruction`` column of the ``rl_prompts`` dataset reaches it as a keyword.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .data import instruction_from_prompt

AGGREGATIONS = ("min", "prod")


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def instruction_reward(irm_score: float) -> float:
    """r_I = sigmoid(IRM score)."""
    return sigmoid(float(irm_score))


def answer_reward(step_probs: Sequence[float], aggregation: str = "min", empty: float = 0.0) -> float:
    """r_A from the PRM's per-step probabilities: their ``min`` or ``prod``; ``empty`` when there is no step."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, not {aggregation!r}")
    if len(step_probs) == 0:
        return float(empty)
    if aggregation == "min":
        return float(min(step_probs))
    return float(math.prod(float(p) for p in step_probs))


def rleif_reward(r_i: float, r_a: float) -> float:
    """r = r_I * r_A."""
    return float(r_i) * float(r_a)


# --------------------------------------------------------------------------------------------------------------- models


class IRMScorer:
    """Scores instructions with a trained IRM (sequence classification, one label), as RewardTrainer trained it.

    Texts get the EOS token appended (RewardTrainer does the same) and are padded on the right; the score is the
    model's logit (read by transformers at the last non-pad token).
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16, max_length: int | None = 1024):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.model.eval()

    @classmethod
    def from_pretrained(cls, path: str, device: str | None = None, dtype: Any = None, **kw: Any) -> IRMScorer:
        import torch
        from transformers import AutoModelForSequenceClassification

        from .common import load_tokenizer

        if (Path(path) / "adapter_config.json").exists():
            from peft import AutoPeftModelForSequenceClassification

            model = AutoPeftModelForSequenceClassification.from_pretrained(
                path, num_labels=1, dtype=dtype or torch.float32).merge_and_unload()
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype or torch.float32)
        if device:
            model.to(device)
        return cls(model, load_tokenizer(path), **kw)

    def scores(self, texts: Sequence[str]) -> list[float]:
        """Raw IRM scores."""
        import torch

        eos = self.tokenizer.eos_token or ""
        device = next(self.model.parameters()).device
        out: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            chunk = [t if t.endswith(eos) else t + eos for t in texts[i : i + self.batch_size]]
            enc = self.tokenizer(chunk, padding=True, padding_side="right", truncation=self.max_length is not None,
                                 max_length=self.max_length, return_tensors="pt")
            with torch.no_grad():
                logits = self.model(**{k: v.to(device) for k, v in enc.items()}).logits
            out.extend(logits[:, 0].float().cpu().tolist())
        return out

    def instruction_reward(self, texts: Sequence[str]) -> list[float]:
        """r_I for each instruction."""
        return [instruction_reward(s) for s in self.scores(texts)]


class PRMScorer:
    """Per-step probabilities of a trained PRM (see :mod:`trainers.prm`)."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8, separator: str | None = None,
                 max_length: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.separator, self.max_length = batch_size, separator, max_length
        self.model.eval()

    @classmethod
    def from_pretrained(cls, path: str, device: str | None = None, dtype: Any = None, **kw: Any) -> PRMScorer:
        from .prm import load_prm

        model, tok = load_prm(path, device=device, dtype=dtype)
        return cls(model, tok, **kw)

    def step_probabilities(self, problems: Sequence[str], solutions: Sequence[str]) -> list[list[float]]:
        from .prm import batch_step_probabilities

        return batch_step_probabilities(self.model, self.tokenizer, problems, solutions, self.separator,
                                        self.max_length, self.batch_size)


def _completion_text(c: Any) -> str:
    """TRL passes strings (standard format) or message lists (conversational); take the generated text."""
    if isinstance(c, str):
        return c
    if isinstance(c, list) and c and isinstance(c[-1], dict):
        return str(c[-1].get("content", ""))
    return str(c)


class RLEIFReward:
    """r = r_I x r_A as one callable: ``reward(prompts, completions, instruction=[...], **kwargs) -> list[float]``.

    ``irm``/``prm``: objects with ``scores(texts)`` / ``step_probabilities(problems, solutions)`` (the scorers above,
    or stubs in tests); ``None`` makes that factor 1. The instruction comes from the ``instruction`` keyword (a
    dataset column) or, without it, is read back from the Alpaca prompt. The PRM sees the instruction as the problem
    (``prm_input="instruction"``, as in the ``prm`` dataset) or the full prompt (``"prompt"``). IRM scores are cached
    per instruction (GRPO/RLOO repeat each prompt ``num_generations`` times).
    """

    __name__ = "rleif_reward"  # TRL names reward functions by __name__ in its logs

    def __init__(self, irm: Any = None, prm: Any = None, aggregation: str = "min", prm_input: str = "instruction",
                 empty_answer_reward: float = 0.0, cache_size: int = 100_000):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"answer_aggregation must be one of {AGGREGATIONS}, not {aggregation!r}")
        if prm_input not in ("instruction", "prompt"):
            raise ValueError(f"prm_input must be 'instruction' or 'prompt', not {prm_input!r}")
        self.irm, self.prm = irm, prm
        self.aggregation, self.prm_input, self.empty = aggregation, prm_input, empty_answer_reward
        self._ri_cache: dict[str, float] = {}
        self.cache_size = cache_size
        self.last: dict[str, list[float]] = {}

    def instruction_rewards(self, instructions: Sequence[str]) -> list[float]:
        if self.irm is None:
            return [1.0] * len(instructions)
        todo = sorted({t for t in instructions if t not in self._ri_cache})
        if todo:
            if len(self._ri_cache) + len(todo) > self.cache_size:
                self._ri_cache.clear()
            for t, s in zip(todo, self.irm.scores(todo), strict=True):
                self._ri_cache[t] = instruction_reward(s)
        return [self._ri_cache[t] for t in instructions]

    def answer_rewards(self, problems: Sequence[str], completions: Sequence[str]) -> list[float]:
        if self.prm is None:
            return [1.0] * len(completions)
        probs = self.prm.step_probabilities(list(problems), list(completions))
        return [answer_reward(p, self.aggregation, self.empty) for p in probs]

    def components(self, prompts: Sequence[Any], completions: Sequence[Any],
                   instructions: Sequence[str] | None = None) -> dict[str, list[float]]:
        texts = [_completion_text(c) for c in completions]
        if instructions is None:
            instructions = [instruction_from_prompt(_completion_text(p)) for p in prompts]
        r_i = self.instruction_rewards(instructions)
        problems = instructions if self.prm_input == "instruction" else [_completion_text(p) for p in prompts]
        r_a = self.answer_rewards(problems, texts)
        r = [rleif_reward(a, b) for a, b in zip(r_i, r_a, strict=True)]
        self.last = {"r_I": r_i, "r_A": r_a, "r": r}
        return self.last

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], instruction: Sequence[str] | None = None,
                 log_metric: Callable[[str, float], None] | None = None, **kwargs: Any) -> list[float]:
        c = self.components(prompts, completions, instruction)
        if log_metric is not None and c["r"]:
            log_metric("rleif/r_I", sum(c["r_I"]) / len(c["r_I"]))
            log_metric("rleif/r_A", sum(c["r_A"]) / len(c["r_A"]))
        return c["r"]


def build_reward(irm_path: str | None, prm_path: str | None, aggregation: str = "min", prm_input: str = "instruction",
                 device: str | None = None, dtype: Any = None, batch_size: int = 8,
                 empty_answer_reward: float = 0.0) -> RLEIFReward:
    """The RLEIF reward from saved IRM/PRM folders (or Hub ids); a missing path makes that factor 1."""
    irm = IRMScorer.from_pretrained(irm_path, device=device, dtype=dtype, batch_size=batch_size) if irm_path else None
    prm = PRMScorer.from_pretrained(prm_path, device=device, dtype=dtype, batch_size=batch_size) if prm_path else None
    return RLEIFReward(irm, prm, aggregation, prm_input, empty_answer_reward)
