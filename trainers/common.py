"""Shared plumbing of the trainer scripts: arguments, device defaults, models, datasets, saving, pushing.

Every script (``python -m trainers.sft|reward|prm|ppo|grpo|rloo``) is in TRL's script style: dataclass configs (TRL /
transformers configs plus our own script arguments) parsed by TRL's ``TrlParser`` from an optional YAML file
(``--config file.yaml``, whose ``env:`` mapping sets environment variables) and command-line overrides (the command
line wins). Unknown keys, in the YAML file or on the command line, are an error.

Each script module offers the same three entry points:

* ``main(args_list=None) -> Path``: parse ``args_list`` (default: ``sys.argv[1:]``) like the command line, train,
  return the folder the model was saved to (what ``python -m trainers.X`` runs);
* ``parse(args_list=None)``: the parsed dataclasses;
* ``train(script_args, training_args, model_args, model=None, tokenizer=None) -> TrainResult``: train from
  dataclasses (and optionally in-memory objects); the result is the output folder (``os.PathLike``) plus the
  trainer and its final metrics.

The output folder holds what the next step needs: the model and its config, the tokenizer, the model card
(``README.md``) and ``evolkit_trainer.json`` (see :mod:`trainers.card`).

Model names: ``smollm2-135m-instruct`` (evolkit's embedded model, the name its backends use) or a ``.gguf`` file
resolve to a local safetensors folder (:mod:`trainers.model_names`).

On a machine without an accelerator (CPU only), bf16 and activation (gradient) checkpointing default to off: TRL's
configs turn both on by default, and bf16 mixed precision fails on CPU (transformers refuses it without ``use_cpu``)
while checkpointing only slows training down. A YAML file that asks for bf16/fp16 on such a machine is overridden with
a warning, so a GPU config can still be smoke-tested on a laptop.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import TrlParser

from . import card
from .model_names import resolve_model

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
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on (`train+test`: both)."})
    dataset_test_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on (needs eval_strategy != 'no'); none by default."}
    )
    dataset_revision: str | None = field(default=None, metadata={"help": "Git revision of a Hub dataset."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use; defaults to the model's own."}
    )
    model_card: bool = field(default=True, metadata={"help": "Write README.md (model card) into output_dir."})


class TrainerParser(TrlParser):
    """TRL's parser (YAML ``--config`` + command-line overrides, ``env:``), without prefix matching of option names,
    with device-dependent defaults, and turning a config's bf16/fp16 off (with a warning) where there is no GPU."""

    def __init__(self, dataclass_types: Sequence[type], defaults: dict[str, Any] | None = None,
                 device: str | None = None):
        super().__init__(list(dataclass_types), allow_abbrev=False)  # a typo must not match a longer option
        self.device = device or accelerator_type()
        if self.device == "cpu":
            self.set_defaults_with_config(**cpu_defaults())
        if defaults:
            self.set_defaults_with_config(**defaults)

    def set_defaults_with_config(self, **kwargs: Any) -> list[str]:
        if self.device == "cpu":
            for key in ("bf16", "fp16"):
                if kwargs.get(key) is True:
                    warnings.warn(f"`{key}: true` needs a GPU; no accelerator found, training in float32",
                                  stacklevel=3)
                    kwargs[key] = False
        return super().set_defaults_with_config(**kwargs)

    def parse(self, args_list: Sequence[str] | None = None) -> tuple[Any, ...]:
        """``parse_args_and_config`` with user errors as :class:`evolkit.errors.ConfigError` (exit 2, no traceback);
        ``--config NAME.yaml`` also finds a packaged config in ``trainers/configs/`` by file name."""
        import yaml

        from evolkit.errors import ConfigError

        args = list(sys.argv[1:] if args_list is None else args_list)
        where = "no config file"
        if "--config" in args:
            i = args.index("--config")
            if i + 1 >= len(args):
                raise ConfigError("--config needs a file name")
            p = Path(args[i + 1])
            if not p.exists() and p.parent == Path(".") and (CONFIG_DIR / p.name).exists():
                args[i + 1] = str(CONFIG_DIR / p.name)
            where = args[i + 1]
        try:
            return tuple(self.parse_args_and_config(args))
        except FileNotFoundError:
            raise ConfigError(f"{where}: config file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: not valid YAML: {e}") from None
        except ValueError as e:
            msg = str(e)
            if "Unknown arguments from config file" in msg:
                raise ConfigError(f"{where}: unknown key(s) (not an argument of this script): {msg}") from None
            if "not used by the HfArgumentParser" in msg:
                raise ConfigError(f"unknown command-line argument(s): {msg.split(':', 1)[1].strip()}") from None
            raise ConfigError(f"invalid arguments ({where} and command line): {msg}") from None


def make_parser(dataclass_types: Sequence[type], defaults: dict[str, Any] | None = None,
                device: str | None = None) -> TrainerParser:
    """A script's parser (see :class:`TrainerParser`); ``defaults`` are the script's own (YAML and CLI still win)."""
    return TrainerParser(dataclass_types, defaults, device)


# --------------------------------------------------------------------------------------------------------------- models

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


@dataclass
class Models:
    """The model and tokenizer a script trains: names as given and the paths they load from (or in-memory objects)."""

    name: str | None  # as given (model_name_or_path), for the card and the record
    path: str | None  # where it loads from (resolve_model); None for an in-memory model
    model: Any  # what the trainer gets: ``path`` or the in-memory model
    tokenizer: Any


def prepare_models(model_args: Any, script_args: Any, model: Any = None, tokenizer: Any = None) -> Models:
    """Resolve ``model_name_or_path`` and the tokenizer (an in-memory model/tokenizer wins over the names)."""
    from evolkit.errors import ConfigError

    name = model_args.model_name_or_path if model is None else None
    if model is None and not name:
        raise ConfigError("model_name_or_path is required")
    path = resolve_model(name) if model is None else None
    if tokenizer is None:
        tok_name = script_args.tokenizer_name_or_path
        tokenizer = load_tokenizer(resolve_model(tok_name) if tok_name else (path or model.config._name_or_path))
    return Models(name=name, path=path, model=model if model is not None else path, tokenizer=tokenizer)


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


# -------------------------------------------------------------------------------------------------------------- dataset


def load_split(
    name_or_path: str | None,
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


def dataset_record(script_args: Any, ds: Any, trained: Any = None, **extra: Any) -> dict[str, Any]:
    """What ``evolkit_trainer.json`` says about the training data: ``rows`` handed to the trainer and, with
    ``trained`` (the trainer's own dataset), ``trained_rows`` (TRL drops rows that ``max_length`` leaves without a
    target; a warning says how many)."""
    out = {"name": script_args.dataset_name, "config": script_args.dataset_config,
           "split": script_args.dataset_train_split, "revision": script_args.dataset_revision,
           "max_train_samples": script_args.max_train_samples, "rows": len(ds),
           "fingerprint": getattr(ds, "_fingerprint", None)}
    if trained is not None:
        out["trained_rows"] = len(trained)
        if len(trained) < len(ds):
            log.warning("%s [%s]: the trainer dropped %d of %d rows (too long for max_length)",
                        script_args.dataset_name, script_args.dataset_config, len(ds) - len(trained), len(ds))
    return {**out, **extra}


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


# --------------------------------------------------------------------------------------------------------------- finish


@dataclass
class TrainResult:
    """What ``train`` returns: the folder the model was saved to (``os.fspath(result)`` is that path), the trainer
    and its final metrics."""

    output_dir: Path
    trainer: Any = field(repr=False)
    metrics: dict[str, Any]
    hub_repo: str | None = None

    def __fspath__(self) -> str:
        return str(self.output_dir)

    def __str__(self) -> str:
        return str(self.output_dir)


def final_metrics(trainer: Any) -> dict[str, Any]:
    """The last logged training values (loss, runtime...) of a transformers/TRL Trainer, and its step count."""
    out: dict[str, Any] = {}
    for entry in getattr(trainer.state, "log_history", []):
        for k, v in entry.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = v
    out["global_step"] = trainer.state.global_step
    return out


def finish(
    trainer: Any,
    stage: str,
    script: str,
    script_args: Any,
    model_args: Any,
    training_args: Any,
    models: Models,
    data: dict[str, Any],
    push: dict[str, Any] | None,
    metrics: dict[str, Any],
    is_main: bool = True,
    extra_card: str = "",
    extra_record: dict[str, Any] | None = None,
) -> TrainResult:
    """On the main process: ``evolkit_trainer.json``, the model card (unless ``model_card`` is off) and the optional
    push. Returns the :class:`TrainResult`."""
    out = Path(training_args.output_dir)
    repo = None
    if is_main:
        peft = bool(getattr(model_args, "use_peft", False))
        card.write_record(out, {
            "stage": stage, "script": script, "output_dir": str(out.resolve()),
            "model_name_or_path": models.name, "model_path": models.path, "peft": peft,
            "dataset": data, **(extra_record or {}), "metrics": metrics,
            "args": {"script": card.args_dict(script_args), "model": card.args_dict(model_args),
                     "training": card.args_dict(training_args)},
        })
        if getattr(script_args, "model_card", True):
            card.write_model_card(
                out, stage, models.name, script_args.dataset_name, script_args.dataset_config,
                args=(script_args, model_args, training_args), metrics=metrics, n_train_rows=data.get("rows"),
                peft=peft, extra=extra_card, repo_id=push["repo_id"] if push else None,
            )
        if push:
            repo = push_folder(out, **push)
            log.info("pushed %s to the Hub repo %s", out, repo)
    return TrainResult(output_dir=out, trainer=trainer, metrics=metrics, hub_repo=repo)


# ----------------------------------------------------------------------------------------------------------- entry


def setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)


def setup_threads() -> None:
    """On CPU, ``EVOLKIT_TORCH_THREADS`` sets torch's thread count (as for evolkit's transformers backend): on a busy
    machine fewer threads than cores can be much faster, since idle OpenMP threads spin."""
    n = int(os.environ.get("EVOLKIT_TORCH_THREADS", 0) or 0)
    if n > 0 and accelerator_type() == "cpu":
        import torch

        torch.set_num_threads(n)


def run(parse: Callable[[Sequence[str] | None], tuple[Any, ...]], train: Callable[..., TrainResult],
        args_list: Sequence[str] | None = None) -> Path:
    """A script's ``main``: parse, train, free the trainer (and its accelerator memory), return the output folder."""
    setup_logging()
    setup_threads()
    result = train(*parse(args_list))
    out = result.output_dir
    del result
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - best effort
        pass
    return out


def run_main(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> Any:
    """Run a script's ``main`` and print user-fixable errors without a traceback (as the evolkit CLI does)."""
    from evolkit.errors import EvolkitError

    try:
        return main(argv)
    except EvolkitError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
