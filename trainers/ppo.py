"""The RLEIF stage (WizardMath step 3) with PPO, as in the recipe: the SFT policy optimised for r = r_I x r_A.

The policy trains with a value head against a frozen copy of itself (:class:`trainers.ppo_trainer.PPOTrainer`);
the prompts, the reward and the outputs are the shared RL core's (:mod:`trainers.rl`).

    python -m trainers.ppo --config trainers/configs/ppo_tiny.yaml --model_name_or_path out/sft \\
        --irm_model_name_or_path out/irm --prm_model_name_or_path out/prm --dataset_name ./published \\
        --output_dir out/ppo
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import common, rl
from .ppo_trainer import VALUE_HEAD_FILE, PPOConfig, PPOTrainer

__all__ = ["VALUE_HEAD_FILE", "PPOConfig", "PPOTrainer", "fit", "main", "make_parser", "parse", "train"]


def make_parser(device: str | None = None) -> common.TrainerParser:
    from trl import ModelConfig

    return common.make_parser((rl.RLScriptArguments, PPOConfig, ModelConfig), device=device)


def parse(args_list: Sequence[str] | None = None) -> tuple[Any, ...]:
    return make_parser().parse(args_list)


def fit(args: PPOConfig, model_args: Any, models: common.Models, ds: Any, reward: Any) -> tuple[Any, dict, bool]:
    from transformers import AutoModelForCausalLM

    from evolkit.errors import ConfigError

    if model_args.use_peft:
        raise ConfigError("trainers.ppo trains the full policy; use_peft works with trainers.grpo / trainers.rloo")
    if isinstance(models.model, str):
        kw = common.model_init_kwargs(model_args, args)
        policy = AutoModelForCausalLM.from_pretrained(models.model, **kw)
        ref = AutoModelForCausalLM.from_pretrained(models.model, **kw)
    else:
        policy, ref = models.model, copy.deepcopy(models.model)
    trainer = PPOTrainer(args, policy, models.tokenizer, ds, reward, ref_policy=ref)
    trainer.train()
    trainer.save_model(args.output_dir)
    metrics = dict(trainer.log_history[-1]) if trainer.log_history else {}
    return trainer, metrics, trainer.accelerator.is_main_process


def train(script_args: rl.RLScriptArguments, training_args: PPOConfig, model_args: Any, model: Any = None,
          tokenizer: Any = None, reward: Any = None) -> common.TrainResult:
    return rl.train("ppo", fit, script_args, training_args, model_args, model, tokenizer, reward)


def main(args_list: Sequence[str] | None = None) -> Path:
    return common.run(parse, train, args_list)


if __name__ == "__main__":
    common.run_main(main)
