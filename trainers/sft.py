"""Supervised fine-tuning on the published ``sft`` config (WizardMath step 1), with TRL's SFTTrainer.

The rows are TRL prompt/completion pairs: ``prompt`` is the WizardMath Alpaca template with the instruction filled in,
``completion`` is " " + the step-by-step response; the loss covers the completion only (``completion_only_loss``).
Full fine-tuning or LoRA (``--use_peft``; add ``--merge_adapter`` to save merged full weights).

    python -m trainers.sft --config trainers/configs/sft_tiny.yaml --dataset_name ./published --output_dir out/sft
    accelerate launch --config_file trainers/configs/deepspeed_zero3.yaml -m trainers.sft \\
        --config trainers/configs/sft_7b_zero3.yaml --dataset_name you/evolkit-math
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import common
from .data import sft_dataset


@dataclass
class SFTScriptArguments(common.DatasetArguments):
    dataset_config: str | None = field(default="sft", metadata={"help": "Config of the published dataset."})
    merge_adapter: bool = field(
        default=False, metadata={"help": "With --use_peft: save the LoRA-merged full model instead of the adapter."}
    )


#: Script defaults that differ from TRL's (the YAML file and the command line still win).
DEFAULTS = {"completion_only_loss": True}


def make_parser(device: str | None = None) -> common.TrainerParser:
    from trl import ModelConfig, SFTConfig

    return common.make_parser((SFTScriptArguments, SFTConfig, ModelConfig), defaults=DEFAULTS, device=device)


def parse(args_list: Sequence[str] | None = None) -> tuple[Any, ...]:
    return make_parser().parse(args_list)


def train(script_args: SFTScriptArguments, training_args: Any, model_args: Any, model: Any = None,
          tokenizer: Any = None) -> common.TrainResult:
    """Train and save to ``training_args.output_dir``. ``model``/``tokenizer`` may be in-memory objects."""
    from trl import SFTTrainer, get_peft_config

    train_ds = sft_dataset(common.load_split(
        script_args.dataset_name, script_args.dataset_config, script_args.dataset_train_split,
        script_args.dataset_revision, script_args.max_train_samples,
    ))
    eval_ds = None
    if script_args.dataset_test_split and training_args.eval_strategy != "no":
        eval_ds = sft_dataset(common.load_split(script_args.dataset_name, script_args.dataset_config,
                                                script_args.dataset_test_split, script_args.dataset_revision))
    models = common.prepare_models(model_args, script_args, model, tokenizer)
    if isinstance(models.model, str):
        training_args.model_init_kwargs = common.model_init_kwargs(model_args, training_args)
    push = common.take_push_settings(training_args)
    trainer = SFTTrainer(
        model=models.model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=models.tokenizer, peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    out = training_args.output_dir
    merged = bool(model_args.use_peft and script_args.merge_adapter)
    if merged:
        full = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        if training_args.should_save:
            full.save_pretrained(out)
            models.tokenizer.save_pretrained(out)
        model_args.use_peft = False  # the card and the record describe full weights now
    else:
        trainer.save_model(out)
    return common.finish(trainer, "sft", "trainers.sft", script_args, model_args, training_args, models,
                         common.dataset_record(script_args, train_ds, trainer.train_dataset), push,
                         common.final_metrics(trainer),
                         is_main=training_args.should_save, extra_record={"merged_adapter": merged})


def main(args_list: Sequence[str] | None = None) -> Path:
    return common.run(parse, train, args_list)


if __name__ == "__main__":
    common.run_main(main)
