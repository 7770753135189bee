"""Shared plumbing of the trainer scripts: arguments, device defaults, dataset loading, model cards, pushing.

Every script (``python -m trainers.sft|reward|prm|ppo``) parses dataclasses (TRL / transformers configs plus our own
argument classes) from an optional YAML file (``--config file.yaml``) and command-line overrides (``--key value``; the
command line wins). Unknown keys in the YAML file are an error, not silently dropped.

On a machine without an accelerator (CPU only), bf16 and activation (gradient) checkpointing default to off: TRL's
configs turn both on by default, and bf16 mixed precision fails on CPU (transformers refuses it without ``use_cpu``)
while checkpointing only slows training down. (transformers 5.23 renamed ``gradient_checkpointing`` to
``activation_checkpointing``; the old name still works, with a deprecation warning.) A YAML file that asks for
bf16/fp16 on such a machine is overridden with a warning, so a GPU config can still be smoke-tested on a laptop.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("evolkit.trainers")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# --------------------------------------------------------------------------------------------------------------- device


def accelerator_type() -> str:
    """``cuda``, ``xpu``, ``mps``, ``npu`` or ``cpu``: what training will run on in this process."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu"
    if hasattr(torch, "npu") and torch.npu.is_available():  # pragma: no cover - Ascend only
        return "npu"
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():  # pragma: no cover - macOS only
        return "mps"
    return "cpu"


def cpu_defaults() -> dict[str, Any]:
    """Defaults that replace TRL's GPU-minded ones when there is no accelerator.

    TRL defaults the deprecated alias ``gradient_checkpointing`` to True; unset (None) it resolves to
    ``activation_checkpointing``, itself unset, hence off (and without transformers' deprecation warning).
    """
    return {"bf16": False, "fp16": False, "gradient_checkpointing": None}


def resolve_precision_defaults(args: Any) -> None:
    """For our own TrainingArguments subclasses whose ``bf16`` / checkpointing default to None (= decide here):
    bf16 and activation checkpointing on an accelerator, both off on CPU."""
    on_gpu = accelerator_type() != "cpu"
    if args.bf16 is None:
        args.bf16 = on_gpu and not args.fp16
    if args.activation_checkpointing is None and args.gradient_checkpointing is None:
        args.activation_checkpointing = on_gpu


# ------------------------------------------------------------------------------------------------------------ arguments


@dataclass
class DatasetArguments:
    """Where the training data comes from: a dataset that ``evolkit publish`` wrote (Hub id or local folder)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id or local folder (README.md with `configs:` + data/...)."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Config of the published dataset."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on (needs eval_strategy != 'no'); none by default."}
    )
    dataset_revision: str | None = field(default=None, metadata={"help": "Git revision of a Hub dataset."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use; defaults to the model's own."}
    )
    model_card: bool = field(default=True, metadata={"help": "Write README.md (model card) into output_dir."})


def _load_yaml(path: str) -> dict[str, Any]:
    import yaml

    from evolkit.errors import ConfigError

    p = Path(path)
    if not p.exists() and not p.is_absolute() and (CONFIG_DIR / p.name).exists() and p.parent == Path("."):
        p = CONFIG_DIR / p.name  # `--config sft_tiny.yaml` finds the packaged config
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a YAML mapping of argument names to values")
    return data


def _cli_sets(argv: Sequence[str], key: str) -> bool:
    """Whether the command line sets ``--key`` (to anything but false)."""
    for i, a in enumerate(argv):
        if a == f"--{key}":
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            return nxt is None or nxt.startswith("--") or nxt.lower() not in ("false", "0", "no")
        if a.startswith(f"--{key}="):
            return a.split("=", 1)[1].lower() not in ("false", "0", "no")
    return False


def parse_args(
    dataclass_types: Iterable[type],
    argv: Sequence[str] | None = None,
    defaults: dict[str, Any] | None = None,
    device: str | None = None,
) -> tuple[Any, ...]:
    """Parse ``--config FILE`` (YAML) and ``--key value`` overrides into instances of ``dataclass_types``.

    Precedence: command line > YAML file > ``defaults`` (the script's own) > CPU defaults > the dataclass defaults.
    A YAML key ``env: {NAME: value}`` sets environment variables first (as in TRL's scripts).
    """
    from trl import TrlParser

    from evolkit.errors import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    config: dict[str, Any] = {}
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a file name")
        config_path = argv[i + 1]
        del argv[i : i + 2]
        config = _load_yaml(config_path)
    env = config.pop("env", None) or {}
    if not isinstance(env, dict):
        raise ConfigError(f"{config_path}: `env` must be a mapping")
    for k, v in env.items():
        os.environ[str(k)] = str(v)

    parser = TrlParser(list(dataclass_types), allow_abbrev=False)  # a typo must not match a longer option
    device = device or accelerator_type()
    if device == "cpu":
        parser.set_defaults_with_config(**cpu_defaults())
        for key in ("bf16", "fp16"):
            if config.get(key) is True:
                warnings.warn(f"{config_path}: `{key}: true` needs a GPU; no accelerator found, training in float32",
                              stacklevel=2)
                config[key] = False
            if _cli_sets(argv, key):
                raise ConfigError(f"--{key} needs a GPU (no accelerator found); drop it to train in float32 on CPU")
    if defaults:
        parser.set_defaults_with_config(**defaults)
    unknown = parser.set_defaults_with_config(**config)
    if unknown:
        keys = sorted({unknown[i][2:] for i in range(0, len(unknown), 2)})
        raise ConfigError(f"{config_path}: unknown key(s) {', '.join(keys)} (not an argument of this script)")
    try:
        return tuple(parser.parse_args_into_dataclasses(args=argv))
    except ValueError as e:
        if "not used by the HfArgumentParser" in str(e):
            raise ConfigError(f"unknown command-line argument(s): {str(e).split(':', 1)[1].strip()}") from None
        raise


# -------------------------------------------------------------------------------------------------------------- dataset


def load_split(
    name_or_path: str,
    config: str | None,
    split: str,
    revision: str | None = None,
    max_samples: int | None = None,
    columns: Sequence[str] | None = None,
) -> Any:
    """One split of a published dataset (a Hub id or a local folder in the Hub's layout) as a ``datasets.Dataset``."""
    from datasets import load_dataset

    from evolkit.errors import ConfigError, DataError

    if not name_or_path:
        raise ConfigError("dataset_name is required (a Hub dataset id or a local folder written by evolkit publish)")
    kwargs: dict[str, Any] = {}
    if revision:
        kwargs["revision"] = revision
    try:
        ds = load_dataset(name_or_path, config, split=split, **kwargs)
    except ValueError as e:
        if "config" in str(e).lower() or "split" in str(e).lower():
            raise ConfigError(f"{name_or_path}: cannot load config {config!r}, split {split!r}: {e}") from None
        raise
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    if columns is not None:
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise DataError(
                f"{name_or_path} [{config}/{split}]: missing column(s) {missing}; has {ds.column_names}"
            )
    if len(ds) == 0:
        raise DataError(f"{name_or_path} [{config}/{split}]: no rows")
    return ds


def load_tokenizer(name_or_path: str, padding_side: str | None = None) -> Any:
    """A tokenizer with a pad token (the EOS token when the tokenizer has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if padding_side:
        tok.padding_side = padding_side
    return tok


def model_init_kwargs(model_args: Any, training_args: Any = None) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments from TRL's ``ModelConfig`` (plus a config's own ``model_init_kwargs``)."""
    kw: dict[str, Any] = {"revision": model_args.model_revision, "dtype": model_args.dtype}
    if model_args.attn_implementation:
        kw["attn_implementation"] = model_args.attn_implementation
    extra = getattr(training_args, "model_init_kwargs", None) if training_args is not None else None
    if isinstance(extra, str):
        extra = json.loads(extra)
    if extra:
        kw.update(extra)
    if getattr(training_args, "trust_remote_code", False):
        kw.setdefault("trust_remote_code", True)
    return kw


def ensure_saved(model: Any, directory: str | os.PathLike[str], tokenizer: Any = None) -> str:
    """Path a model can be reloaded from; a model built in memory is saved to ``directory`` first.

    TRL's GRPO/RLOO trainers build the KL reference by reloading ``model.config._name_or_path``: for a model that was
    made with ``from_config`` (or changed after loading) that path is empty or stale, so save it and point there.
    """
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d)
    if tokenizer is not None:
        tokenizer.save_pretrained(d)
    model.config._name_or_path = str(d)
    return str(d)


# ----------------------------------------------------------------------------------------------------------- model card

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_id_or_none(name: str | None) -> str | None:
    """``name`` when it looks like a Hub repo id and is not a local path (card metadata must hold Hub ids only)."""
    if not name or os.path.exists(name) or not _HUB_ID.match(name) or name.count("/") > 1:
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
    "ppo": (
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
    "ppo": """```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{model}")   # the policy; value_head.safetensors holds the PPO critic head
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
    "lora_alpha", "lora_dropout", "algo", "answer_aggregation", "irm_model_name_or_path", "prm_model_name_or_path",
)


def _versions() -> dict[str, str]:
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
    stage_tag = {"sft": "sft", "irm": "reward-model", "prm": "process-reward-model", "ppo": "reinforcement-learning"}
    tags = ["evolkit", "wizardmath", "rleif", "math", stage_tag.get(stage, stage)]
    if peft:
        tags.append("lora")
    data = ModelCardData(
        base_model=base_id,
        datasets=[data_id] if data_id else None,
        library_name="peft" if peft else "transformers",
        tags=tags,
        pipeline_tag={"sft": "text-generation", "ppo": "text-generation", "irm": "text-classification",
                      "prm": "token-classification"}.get(stage),
    )
    flat = _flatten_args(args)
    shown = [k for k in _CARD_ARGS if flat.get(k) is not None and (peft or not k.startswith("lora_"))]
    hp = "\n".join(f"| `{k}` | `{getattr(flat[k], 'value', flat[k])}` |" for k in shown)
    res = ""
    if metrics:
        res = "\n".join(f"| `{k}` | {v:.6g} |" if isinstance(v, float) else f"| `{k}` | {v} |"
                        for k, v in sorted(metrics.items()))
    versions = "\n".join(f"- {k} {v}" for k, v in _versions().items())
    name = repo_id or out.name
    lora = ", LoRA adapter" if peft else ""
    source = f"`{dataset_name}`" + (f" (config `{dataset_config}`)" if dataset_config else "")
    rows = f", {n_train_rows} training rows" if n_train_rows is not None else ""
    body = f"""---
{data.to_yaml()}
---

# {name}

{STAGE_TEXT.get(stage, stage)}

Trained with evolkit `trainers/` (stage `{stage}`{lora}), the WizardMath recipe (arXiv 2308.09583).

## Training data

{source}{rows}.

Base model: `{base_model}`.

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

{versions}

## Citation

{CITATION}
"""
    card = ModelCard(body)
    path = out / "README.md"
    card.save(path)
    return path


# ----------------------------------------------------------------------------------------------------------------- push


def take_push_settings(training_args: Any) -> dict[str, Any] | None:
    """Turn off the Trainer's own pushing (it would push checkpoints and its own card) and return what we push later."""
    if not getattr(training_args, "push_to_hub", False):
        return None
    settings = {
        "repo_id": training_args.hub_model_id or Path(training_args.output_dir).name,
        "token": getattr(training_args, "hub_token", None),
        "private": getattr(training_args, "hub_private_repo", None),
        "revision": getattr(training_args, "hub_revision", None),
    }
    training_args.push_to_hub = False
    return settings


def push_folder(folder: str | os.PathLike[str], repo_id: str, token: str | None = None, private: bool | None = None,
                revision: str | None = None, commit_message: str = "evolkit trainer upload") -> str:
    """Upload a saved model folder (no checkpoints) to a Hub model repo; returns the full repo id."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    if "/" not in repo_id:
        repo_id = f"{api.whoami()['name']}/{repo_id}"
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision, commit_message=commit_message,
        ignore_patterns=["checkpoint-*", "checkpoint-*/**", "runs/**", "*.tmp", "_initial_policy/**"],
    )
    return repo_id


def finish(
    output_dir: str,
    stage: str,
    script_args: Any,
    model_args: Any,
    training_args: Any,
    push: dict[str, Any] | None,
    metrics: dict[str, Any] | None = None,
    n_train_rows: int | None = None,
    extra: str = "",
    is_main: bool = True,
) -> str | None:
    """Model card + optional push, on the main process only. Returns the pushed repo id (or None)."""
    if not is_main:
        return None
    if getattr(script_args, "model_card", True):
        write_model_card(
            output_dir, stage, getattr(model_args, "model_name_or_path", None), script_args.dataset_name,
            script_args.dataset_config, args=(script_args, model_args, training_args), metrics=metrics,
            n_train_rows=n_train_rows, peft=bool(getattr(model_args, "use_peft", False)), extra=extra,
            repo_id=push["repo_id"] if push else None,
        )
    if push:
        repo = push_folder(output_dir, **push)
        log.info("pushed %s to the Hub repo %s", output_dir, repo)
        return repo
    return None


def final_metrics(trainer: Any) -> dict[str, Any]:
    """The last logged training values (loss, runtime...) of a transformers/TRL Trainer."""
    out: dict[str, Any] = {}
    for entry in getattr(trainer.state, "log_history", []):
        for k, v in entry.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = v
    return out


def setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)


def setup_threads() -> None:
    """On CPU, ``EVOLKIT_TORCH_THREADS`` sets torch's thread count (as for evolkit's transformers backend): on a busy
    machine fewer threads than cores can be much faster, since idle OpenMP threads spin."""
    n = int(os.environ.get("EVOLKIT_TORCH_THREADS", 0) or 0)
    if n > 0 and accelerator_type() == "cpu":
        import torch

        torch.set_num_threads(n)


def run_main(main: Any, argv: Sequence[str] | None = None) -> Any:
    """Run a script's ``main`` and print user-fixable errors without a traceback (as the evolkit CLI does)."""
    from evolkit.errors import EvolkitError

    try:
        return main(argv)
    except EvolkitError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
