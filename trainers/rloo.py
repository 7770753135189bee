"""The RLEIF stage (WizardMath step 3) with TRL's RLOOTrainer on r = r_I x r_A.

The prompts, the reward (one callable: TRL sums several reward functions) and the outputs are the shared RL core's
(:mod:`trainers.rl`); the options are TRL's ``RLOOConfig`` (``num_generations``, ``max_completion_length``,
``beta``, ``use_vllm``...).

    python -m trainers.rloo --config trainers/configs/rloo_tiny.yaml --model_name_or_path out/sft \\
        --irm_model_name_or_path out/irm --prm_model_name_or_path out/prm --dataset_name ./published \\
        --output_dir out/rloo
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import common, rl


def make_parser(device: str | None = None) -> common.TrainerParser:
    from trl import RLOOConfig, ModelConfig

    return common.make_parser((rl.RLScriptArguments, RLOOConfig, ModelConfig), device=device)


def parse(args_list: Sequence[str] | None = None) -> tuple[Any, ...]:
    return make_parser().parse(args_list)


def train(script_args: rl.RLScriptArguments, training_args: Any, model_args: Any, model: Any = None,
          tokenizer: Any = None, reward: Any = None) -> common.TrainResult:
    from trl import RLOOTrainer

    return rl.train("rloo", rl.fit_trl(RLOOTrainer), script_args, training_args, model_args, model, tokenizer,
                    reward)


def main(args_list: Sequence[str] | None = None) -> Path:
    return common.run(parse, train, args_list)


if __name__ == "__main__":
    common.run_main(main)
