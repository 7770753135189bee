"""Benchmarks (GSM8k, MATH, MATH500 test sets) and the prompt styles a model is evaluated with.

* :func:`load_benchmark`: the test problems of a benchmark from the shared data folder, a given file / folder, or a Hub
  dataset id (through :mod:`evolkit.datafiles`), with evolkit's gold answer and the WizardMath protocol's gold;
* :func:`prompt_style`: a named prompt style (:data:`PROMPT_STYLES`) or a prompt file, with its stop strings;
* :func:`protocol`: the WizardMath paper's generation protocol (prompt, stop strings, max tokens, greedy), read from
  ``evolkit/prompts/eval_wizardmath_protocol.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError

log = logging.getLogger("evolkit.eval")


@dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str  # gsm8k | math: how gold answers are read and how the WizardMath protocol scores
    path: str  # local default (``{data}`` = the shared data folder)
    max_tokens: int  # default max new tokens
    hub_id: str | None = None  # used when the local file is absent and no --data is given
    hub_config: str | None = None


BENCHMARKS: dict[str, Benchmark] = {
    "gsm8k": Benchmark("gsm8k", "gsm8k", "{data}/gsm8k/test.jsonl", 1024, "openai/gsm8k", "main"),
    "math": Benchmark("math", "math", "{data}/math/test.jsonl", 2048),
    "math500": Benchmark("math500", "math", "{data}/math/math500_test.jsonl", 2048, "HuggingFaceH4/MATH-500"),
}

#: The WizardMath paper's greedy pass@1 (%), CoT prompt (Luo et al. 2023, WizardMath V1.0, Table 1).
PAPER_REFERENCE: dict[str, dict[str, float]] = {
    "WizardMath-7B-V1.0": {"gsm8k": 54.9, "math": 10.7},
    "WizardMath-13B-V1.0": {"gsm8k": 63.9, "math": 14.0},
    "WizardMath-70B-V1.0": {"gsm8k": 81.6, "math": 22.7},
}


@dataclass
class EvalItem:
    id: str
    question: str
    gold: str | None  # evolkit's gold (evolkit.answers.gsm8k_gold / math_gold)
    gold_wm: str | None  # the WizardMath protocol's gold (integer text for GSM8k, boxed content for MATH)
    reference: str  # the reference solution as given
    level: int | None = None
    subject: str | None = None


def benchmark(bench: str) -> Benchmark:
    spec = BENCHMARKS.get(bench)
    if spec is None:
        raise ConfigError(f"unknown benchmark {bench!r} (known: {', '.join(BENCHMARKS)})")
    return spec


def load_benchmark(
    bench: str, data: str | None = None, split: str = "test", hub_config: str | None = None
) -> list[EvalItem]:
    """The test problems of a benchmark from its local default file, a given file/folder, or a Hub dataset id."""
    from .. import wizardmath_checker as wm
    from ..datafiles import expand_path, load_table
    from ..seeds import problem_from_row

    spec = benchmark(bench)
    if data is None and not expand_path(spec.path).exists():
        if spec.hub_id is None:
            raise DataError(
                f"{expand_path(spec.path)}: no such file; give the {bench} test set with --data FILE or a Hub id"
            )
        log.info("%s not found; loading %s from the Hub", expand_path(spec.path), spec.hub_id)
        data, hub_config = spec.hub_id, hub_config or spec.hub_config
    table = load_table(data or spec.path, hub_config=hub_config, split=split, subfolders=(spec.kind,))
    items: list[EvalItem] = []
    seen: set[str] = set()
    for idx, (where, row) in enumerate(table.located()):
        p = problem_from_row(spec.kind, row, idx, split, where)
        if p.id in seen:
            raise DataError(f"{where}: duplicate id {p.id!r}")
        seen.add(p.id)
        ref = p.reference_solution or ""
        gold_wm = (
            (None if (g := wm.gsm8k_gold(ref)) is None else str(g)) if spec.kind == "gsm8k" else wm.math_gold(ref)
        )
        subject = p.type or row.get("subject")
        items.append(EvalItem(p.id, p.question, p.gold_answer, gold_wm, ref, p.level, subject))
    if not items:
        raise DataError(f"{data or spec.path}: no problems")
    return items


# --------------------------------------------------------------------------------------------------------------------
# Prompt styles and the paper's protocol
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """The WizardMath paper's generation protocol (its inference scripts), from ``eval_wizardmath_protocol.json``."""

    prompt: str  # the prompt style (the Alpaca CoT template)
    stop: tuple[str, ...]  # the paper's stop strings
    max_tokens: dict[str, int]  # per benchmark kind
    temperature: float
    top_p: float
    source: dict[str, Any]
    evolkit_stop: tuple[str, ...]  # evolkit's own stop strings for the same template (the default protocol)


def protocol() -> Protocol:
    from .. import prompts

    spec = prompts.load_json("eval_wizardmath_protocol")
    return Protocol("wizardmath", tuple(spec["stop_sequences"]), dict(spec["max_tokens"]), float(spec["temperature"]),
                    float(spec["top_p"]), spec["source"], tuple(spec["evolkit_stop_sequences"]))


@dataclass(frozen=True)
class PromptStyle:
    name: str
    template: str  # the full prompt text with a ``{question}`` slot
    raw: bool  # True: plain-text completion; False: one user message through the chat template
    stop: tuple[str, ...] = ()

    def render(self, question: str) -> str:
        # str.replace, never str.format: MATH problems are full of braces.
        return self.template.replace("{question}", question)

    @property
    def sha(self) -> str:
        return hashlib.sha256(json.dumps([self.template, self.raw, list(self.stop)]).encode()).hexdigest()[:16]


def _fewshot(spec: dict[str, Any], q_key: str, t_key: str) -> str:
    """The lm-eval-harness few-shot prompt: ``query(ex) + target(ex)`` joined by the delimiter, then the query."""
    query = spec["query_template"]
    delim = spec.get("fewshot_delimiter", "\n\n")
    if "target_template" in spec:
        target_tpl = spec["target_template"]
    else:
        target_tpl = spec.get("target_delimiter", " ") + "{" + t_key + "}"
    shots = []
    for ex in spec["exemplars"]:
        q = query.replace("{" + q_key + "}", ex[q_key])
        shots.append(q + target_tpl.replace("{" + t_key + "}", ex[t_key]))
    return delim.join(shots) + delim + query.replace("{" + q_key + "}", "{question}")


PROMPT_STYLES = ("wizardmath", "wizardmath-default", "gsm8k-8shot", "minerva", "chat")


def prompt_style(name: str, chat: bool = False) -> PromptStyle:
    """A named style (see :data:`PROMPT_STYLES`) or a text file with ``{question}`` (raw unless ``chat``).

    The two WizardMath styles carry evolkit's stop strings; :func:`protocol` has the paper's."""
    from .. import prompts

    if name in ("wizardmath", "wizardmath-default"):
        style = "cot" if name == "wizardmath" else "default"
        tpl = prompts.wizardmath_template(style).replace("{instruction}", "{question}")
        return PromptStyle(name, tpl, True, protocol().evolkit_stop)
    if name == "gsm8k-8shot":
        spec = prompts.load_json("eval_gsm8k_cot_8shot")
        return PromptStyle(name, _fewshot(spec, "question", "target"), True, tuple(spec["stop_sequences"]))
    if name == "minerva":
        spec = prompts.load_json("eval_minerva_math_4shot")
        return PromptStyle(name, _fewshot(spec, "problem", "solution"), True, tuple(spec["stop_sequences"]))
    if name == "chat":
        return PromptStyle(name, prompts.load_text("eval_chat_user"), False, ())
    p = Path(name).expanduser()
    if not p.is_file():
        raise ConfigError(f"--prompt {name!r}: neither a style ({', '.join(PROMPT_STYLES)}) nor a file")
    text = p.read_text(encoding="utf-8").strip("\n")
    if "{question}" not in text:
        raise ConfigError(f"{p}: a prompt file needs a {{question}} slot")
    return PromptStyle(str(p), text, not chat, ())
