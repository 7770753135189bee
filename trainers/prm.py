"""The Process-supervised Reward Model (PRM, WizardMath step 2) over ``transformers.Trainer``.

TRL removed its PRMTrainer (1.14), so this is a token-classification model trained directly: a row of TRL's stepwise
format (``prompt``, ``completions`` = steps, ``labels`` = step verdicts) becomes
``prompt <sep> step_1 <sep> ... step_k <sep>``; the separator token after step i carries label 1 (correct) or 0 (wrong),
every other token -100 (ignored by the cross-entropy). At inference the probability of label 1 at each separator is
that step's score (:func:`step_probabilities`); the RL stage aggregates them into r_A.

    python -m trainers.prm --config trainers/configs/prm_tiny.yaml --model_name_or_path PATH \\
        --dataset_name ./published --output_dir out/prm
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from . import common
from .data import IGNORE_INDEX, prm_dataset, tokenize_stepwise

PRM_CONFIG_FILE = "prm_config.json"
ID2LABEL = {0: "incorrect", 1: "correct"}


@dataclass
class PRMScriptArguments(common.DatasetArguments):
    dataset_config: str | None = field(default="prm", metadata={"help": "Config of the published dataset."})


@dataclass
class PRMConfig(TrainingArguments):
    """TrainingArguments plus the PRM's data settings.

    bf16 and activation checkpointing follow the device when unset (on with a GPU, off on CPU).
    """

    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "model_init_kwargs"]

    learning_rate: float = field(default=1e-5, metadata={"help": "The initial learning rate for AdamW."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision (default: on when a GPU is used)."})
    step_separator: str = field(default="\n", metadata={"help": "Text appended after each step; its last token is "
                                                               "where the step label sits."})
    max_length: int | None = field(default=1024, metadata={"help": "Truncate sequences (keeping the start)."})
    train_on_last_step_only: bool = field(default=False, metadata={"help": "Only the last step's label is trained."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenizing."})
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the model."})
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for AutoModelForTokenClassification.from_pretrained."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow models with custom code."})

    def __post_init__(self) -> None:
        common.resolve_precision_defaults(self)
        super().__post_init__()


def make_parser(device: str | None = None) -> common.TrainerParser:
    from trl import ModelConfig

    return common.make_parser((PRMScriptArguments, PRMConfig, ModelConfig), device=device)


def parse(args_list: Sequence[str] | None = None) -> tuple[Any, ...]:
    return make_parser().parse(args_list)


def disable_dropout(model: Any) -> None:
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def build_model(name_or_path: str, **kwargs: Any) -> Any:
    """A 2-label token classifier from any causal LM checkpoint (the head is new) or a trained PRM."""
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification.from_pretrained(
        name_or_path, num_labels=2, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()}, **kwargs
    )


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    """Step accuracy at the labelled separator positions."""
    import numpy as np

    logits, labels = eval_pred
    mask = labels != IGNORE_INDEX
    pred = np.argmax(logits, axis=-1)
    n = int(mask.sum())
    acc = float((pred[mask] == labels[mask]).mean()) if n else float("nan")
    return {"step_accuracy": acc, "labelled_steps": n}


def train(script_args: PRMScriptArguments, training_args: PRMConfig, model_args: Any, model: Any = None,
          tokenizer: Any = None) -> common.TrainResult:
    """Train and save to ``training_args.output_dir``. ``model``/``tokenizer`` may be in-memory objects."""
    from transformers import DataCollatorForTokenClassification, Trainer

    models = common.prepare_models(model_args, script_args, model, tokenizer)
    tokenizer = models.tokenizer
    net = models.model
    if isinstance(net, str):
        net = build_model(net, **common.model_init_kwargs(model_args, training_args))
    net.config.pad_token_id = tokenizer.pad_token_id
    if training_args.disable_dropout:
        disable_dropout(net)
    if model_args.use_peft:
        from peft import get_peft_model
        from trl import get_peft_config

        peft_cfg = get_peft_config(model_args)
        if model_args.lora_task_type == "CAUSAL_LM":
            peft_cfg.task_type = "TOKEN_CLS"
        net = get_peft_model(net, peft_cfg)

    def load(split: str, n: int | None = None) -> Any:
        ds = common.load_split(script_args.dataset_name, script_args.dataset_config, split,
                               script_args.dataset_revision, n)
        return prm_dataset(ds, tokenizer, training_args.step_separator, training_args.max_length,
                           training_args.train_on_last_step_only, training_args.dataset_num_proc)

    train_ds = load(script_args.dataset_train_split, script_args.max_train_samples)
    eval_ds = None
    if script_args.dataset_test_split and training_args.eval_strategy != "no":
        eval_ds = load(script_args.dataset_test_split)
    push = common.take_push_settings(training_args)
    trainer = Trainer(
        model=net, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
        data_collator=DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE_INDEX),
        processing_class=tokenizer, compute_metrics=compute_metrics if eval_ds is not None else None,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    out = training_args.output_dir
    trainer.save_model(out)
    if training_args.should_save:
        save_prm_config(out, training_args.step_separator, training_args.max_length)
    return common.finish(trainer, "prm", "trainers.prm", script_args, model_args, training_args, models,
                         common.dataset_record(script_args, train_ds), push, common.final_metrics(trainer),
                         is_main=training_args.should_save,
                         extra_card=f"Step separator: `{json.dumps(training_args.step_separator)}`.")


def save_prm_config(output_dir: str | Path, separator: str, max_length: int | None) -> None:
    Path(output_dir, PRM_CONFIG_FILE).write_text(
        json.dumps({"step_separator": separator, "max_length": max_length, "positive_label": 1}, indent=2) + "\n"
    )


def read_prm_config(path: str | Path) -> dict[str, Any]:
    p = Path(path) / PRM_CONFIG_FILE
    if p.exists():
        return json.loads(p.read_text())
    try:  # a Hub repo
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(str(path), PRM_CONFIG_FILE)).read_text())
    except Exception:
        return {"step_separator": "\n", "max_length": None, "positive_label": 1}


# ------------------------------------------------------------------------------------------------------------ inference


def load_prm(path: str, device: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
    """A trained PRM (full model, or LoRA adapter merged into its base) and its tokenizer, in eval mode."""
    import torch

    kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
    if (Path(path) / "adapter_config.json").exists():
        from peft import AutoPeftModelForTokenClassification

        model = AutoPeftModelForTokenClassification.from_pretrained(path, num_labels=2, **kwargs).merge_and_unload()
    else:
        model = build_model(path, **kwargs)
    tok = common.load_tokenizer(path)
    model.config.prm = read_prm_config(path)
    model.eval()
    if device:
        model.to(device)
    return model, tok


def batch_step_probabilities(
    model: Any,
    tokenizer: Any,
    problems: Sequence[str],
    solutions: Sequence[str | Sequence[str]],
    separator: str | None = None,
    max_length: int | None = None,
    batch_size: int = 8,
) -> list[list[float]]:
    """P(step correct) for every step of every (problem, solution) pair.

    A solution given as text is split into steps with ``evolkit.answers.split_steps``. Steps beyond ``max_length``
    tokens get no probability (the list is shorter than the steps); an empty solution gives [].
    """
    import torch

    from evolkit.answers import split_steps

    cfg = getattr(model.config, "prm", None) or {}
    separator = separator if separator is not None else cfg.get("step_separator", "\n")
    max_length = max_length if max_length is not None else cfg.get("max_length")
    encoded = []
    for problem, sol in zip(problems, solutions, strict=True):
        steps = split_steps(sol) if isinstance(sol, str) else list(sol)
        encoded.append(tokenize_stepwise(tokenizer, problem, steps, None, separator, max_length))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[list[float]] = []
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i : i + batch_size]
        width = max(len(e["input_ids"]) for e in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, e in enumerate(chunk):
            ids[j, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            mask[j, : len(e["input_ids"])] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        probs = logits.softmax(-1)[..., 1].cpu()
        out.extend([probs[j, e["step_positions"]].tolist() for j, e in enumerate(chunk)])
    return out


def step_probabilities(model: Any, tokenizer: Any, problem: str, solution: str | Sequence[str],
                       separator: str | None = None, max_length: int | None = None) -> list[float]:
    """P(step correct) for each step of one solution of ``problem`` (text is split into steps first)."""
    return batch_step_probabilities(model, tokenizer, [problem], [solution], separator, max_length)[0]


def main(args_list: Sequence[str] | None = None) -> Path:
    return common.run(parse, train, args_list)


if __name__ == "__main__":
    common.run_main(main)
