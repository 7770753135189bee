"""The Instruction Reward Model (IRM, WizardMath step 2) with TRL's RewardTrainer.

Trains on pairwise preferences between instructions: the published ``irm_pairs`` config, or ``irm_rankings`` expanded
here into the same pairs (``--dataset_config irm_rankings``, by ``evolkit.stages.irm.pairs_from_ranking``; margins
from the judge's scores, the rank gap or none: ``--ranking_margin scores|rank|none``). With margins the loss is
-log sigmoid(s_c - s_r - margin).
The saved model is a sequence-classification model (one label) whose score s of an instruction gives
r_I = sigmoid(s) in the RL stage (``trainers.rewards.IRMScorer``).

    python -m trainers.reward --config trainers/configs/reward_tiny.yaml --model_name_or_path PATH \\
        --dataset_name ./published --output_dir out/irm
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import common
from .data import reward_dataset


@dataclass
class RewardScriptArguments(common.DatasetArguments):
    dataset_config: str | None = field(
        default="irm_pairs", metadata={"help": "irm_pairs (as published) or irm_rankings (expanded to pairs here)."}
    )
    use_margin: bool = field(default=True, metadata={"help": "Use the pairs' margins in the loss."})
    ranking_margin: str = field(
        default="scores", metadata={"help": "irm_rankings only: margin from judge `scores`, `rank` gap, or `none`."}
    )
    margin_scale: float = field(default=1.0, metadata={"help": "Multiply every margin by this."})


def make_parser(device: str | None = None) -> common.TrainerParser:
    from trl import ModelConfig, RewardConfig

    return common.make_parser((RewardScriptArguments, RewardConfig, ModelConfig), device=device)


def parse(args_list: Sequence[str] | None = None) -> tuple[Any, ...]:
    return make_parser().parse(args_list)


def _peft_config(model_args: Any) -> Any:
    from trl import get_peft_config

    cfg = get_peft_config(model_args)
    if cfg is not None and model_args.lora_task_type == "CAUSAL_LM":
        cfg.task_type = "SEQ_CLS"  # the IRM is a sequence classifier; its score head is trained in full
    return cfg


def load_data(script_args: RewardScriptArguments, split: str, max_samples: int | None = None) -> Any:
    from evolkit.errors import ConfigError

    from .data import MARGINS

    if script_args.ranking_margin not in MARGINS:
        raise ConfigError(f"ranking_margin must be one of {', '.join(MARGINS)}, not {script_args.ranking_margin!r}")
    ds = common.load_split(script_args.dataset_name, script_args.dataset_config, split, script_args.dataset_revision,
                           max_samples)
    return reward_dataset(ds, use_margin=script_args.use_margin, margin=script_args.ranking_margin,
                          margin_scale=script_args.margin_scale)


def train(script_args: RewardScriptArguments, training_args: Any, model_args: Any, model: Any = None,
          tokenizer: Any = None) -> common.TrainResult:
    """Train and save to ``training_args.output_dir``. ``model``/``tokenizer`` may be in-memory objects."""
    from trl import RewardTrainer

    train_ds = load_data(script_args, script_args.dataset_train_split, script_args.max_train_samples)
    eval_ds = None
    if script_args.dataset_test_split and training_args.eval_strategy != "no":
        eval_ds = load_data(script_args, script_args.dataset_test_split)
    models = common.prepare_models(model_args, script_args, model, tokenizer)
    if isinstance(models.model, str):
        training_args.model_init_kwargs = common.model_init_kwargs(model_args, training_args)
    push = common.take_push_settings(training_args)
    trainer = RewardTrainer(model=models.model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                            processing_class=models.tokenizer, peft_config=_peft_config(model_args))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    margins = "margin" in train_ds.column_names
    extra = ("Pairs: " + ("with margins" if margins else "without margins")
             + f" (from `{script_args.dataset_config}`).")
    data = common.dataset_record(script_args, train_ds, trainer.train_dataset, margins=margins)
    return common.finish(trainer, "irm", "trainers.reward", script_args, model_args, training_args, models, data,
                         push, common.final_metrics(trainer), is_main=training_args.should_save, extra_card=extra)


def main(args_list: Sequence[str] | None = None) -> Path:
    return common.run(parse, train, args_list)


if __name__ == "__main__":
    common.run_main(main)
