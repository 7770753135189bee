"""The shared core of the RLEIF stage (WizardMath step 3) behind the three scripts ``trainers.ppo`` (the recipe's
algorithm, implemented here), ``trainers.grpo`` and ``trainers.rloo`` (TRL's trainers).

The prompts are the published ``rl_prompts`` config: the seed problems and every kept evolved problem, each with
``prompt`` (the Alpaca template the policy completes), ``instruction`` (what the IRM scores; also the problem the PRM
sees) and ``gold_answer``. The reward is :class:`trainers.rewards.RLEIFReward`, r = r_I x r_A, built from the IRM and
PRM folders that ``trainers.reward`` and ``trainers.prm`` saved (``--irm_model_name_or_path``,
``--prm_model_name_or_path``; ``--answer_aggregation min|prod``). A folder with an ``evolkit_trainer.json`` must
come from the right script (an IRM path holding a PRM is an error); a local folder without one must hold the right
kind of model (a sequence / token classifier).

:func:`train` does what the three algorithms share (data, tokenizer, reward, card, record) and hands the
algorithm-specific part to a ``fit`` function: :func:`fit_trl` for TRL's trainers, ``trainers.ppo.fit`` for PPO.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import card, common
from .data import rl_dataset, rl_sources
from .model_names import resolve_model
from .rewards import AGGREGATIONS, RLEIFReward, build_reward

log = logging.getLogger("evolkit.trainers.rl")

#: ``fit(training_args, model_args, models, dataset, reward) -> (trainer, metrics, is_main_process)``
Fit = Callable[[Any, Any, common.Models, Any, Any], tuple[Any, dict[str, Any], bool]]


@dataclass
class RLScriptArguments(common.DatasetArguments):
    dataset_config: str | None = field(default="rl_prompts", metadata={"help": "Config of the published dataset."})
    irm_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Trained IRM (trainers.reward); unset: r_I = 1."}
    )
    prm_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Trained PRM (trainers.prm); unset: r_A = 1."}
    )
    answer_aggregation: str = field(default="min", metadata={"help": "r_A from step probabilities: min or prod."})
    prm_input: str = field(default="instruction",
                           metadata={"help": "Problem text the PRM sees: instruction or prompt."})
    empty_answer_reward: float = field(default=0.0, metadata={"help": "r_A of a completion with no step."})
    reward_batch_size: int = field(default=8, metadata={"help": "Batch size of the IRM/PRM forward passes."})
    max_prompt_tokens: int | None = field(
        default=None, metadata={"help": "Skip prompts longer than this many tokens (any algo; TRL does not truncate)."}
    )


# --------------------------------------------------------------------------------------------------------------- reward

_KINDS = {"irm": ("ForSequenceClassification", "SEQ_CLS", "trainers.reward"),
          "prm": ("ForTokenClassification", "TOKEN_CLS", "trainers.prm")}


def check_reward_model(path: str, kind: str) -> dict[str, Any] | None:
    """Refuse a local folder that is not a ``kind`` (irm / prm) model; returns its trainer record (or None).

    With ``evolkit_trainer.json`` its ``stage`` must be ``kind``; without, ``config.json``'s architecture (or a LoRA
    adapter's task type) must be a sequence (IRM) / token (PRM) classifier: a plain causal LM would get a random,
    untrained head. Hub ids are not checked here.
    """
    from evolkit.errors import ConfigError

    arch_suffix, task, script = _KINDS[kind]
    folder = Path(path)
    if not folder.is_dir():
        return None
    rec = card.read_record(folder)
    if rec is not None:
        if rec["stage"] != kind:
            raise ConfigError(f"{path}: {kind}_model_name_or_path holds a model trained by {rec.get('script')} "
                              f"(stage {rec['stage']!r}), not by {script}")
        return rec
    adapter, config = folder / "adapter_config.json", folder / "config.json"
    if adapter.is_file():
        got = json.loads(adapter.read_text()).get("task_type")
        if got != task:
            raise ConfigError(f"{path}: a LoRA adapter of task {got!r}; a {kind.upper()} needs {task}")
    elif config.is_file():
        archs = json.loads(config.read_text()).get("architectures") or []
        if not any(a.endswith(arch_suffix) for a in archs):
            raise ConfigError(f"{path}: holds {archs or 'no architecture'}, not a trained {kind.upper()} "
                              f"(*{arch_suffix}; train one with {script})")
    return None


def make_reward(script_args: RLScriptArguments, device: Any, dtype: Any = None) -> RLEIFReward:
    """The RLEIF reward from the IRM / PRM named in ``script_args`` (loaded in ``dtype`` on ``device``)."""
    from evolkit.errors import ConfigError

    if script_args.answer_aggregation not in AGGREGATIONS:
        raise ConfigError(f"answer_aggregation must be one of {AGGREGATIONS}, not {script_args.answer_aggregation!r}")
    if not script_args.irm_model_name_or_path and not script_args.prm_model_name_or_path:
        raise ConfigError("set irm_model_name_or_path and/or prm_model_name_or_path: without them the reward is 1")
    paths = {}
    for kind in ("irm", "prm"):
        name = getattr(script_args, f"{kind}_model_name_or_path")
        if not name:
            log.warning("%s_model_name_or_path is unset: its factor of r = r_I x r_A is 1", kind)
            paths[kind] = None
            continue
        paths[kind] = resolve_model(name)
        check_reward_model(paths[kind], kind)
    return build_reward(paths["irm"], paths["prm"], script_args.answer_aggregation, script_args.prm_input,
                        device=str(device), dtype=dtype, batch_size=script_args.reward_batch_size,
                        empty_answer_reward=script_args.empty_answer_reward)


def _reward_record(script_args: RLScriptArguments) -> dict[str, Any]:
    """The reward's models for ``evolkit_trainer.json``, with the data each was trained on (from its own record)."""
    out: dict[str, Any] = {"aggregation": script_args.answer_aggregation, "prm_input": script_args.prm_input}
    for kind in ("irm", "prm"):
        name = getattr(script_args, f"{kind}_model_name_or_path")
        rec = card.read_record(name) if name and Path(name).is_dir() else None
        out[kind] = {"model_name_or_path": name, "trained_on": rec.get("dataset") if rec else None}
        if rec and rec.get("dataset", {}).get("name") != script_args.dataset_name:
            log.warning("the %s was trained on %s, the prompts come from %s", kind.upper(),
                        rec.get("dataset", {}).get("name"), script_args.dataset_name)
    return out


# ---------------------------------------------------------------------------------------------------------------- train


def load_prompts(script_args: RLScriptArguments, tokenizer: Any) -> tuple[Any, dict[str, int]]:
    """The ``rl_prompts`` split (minus prompts over ``max_prompt_tokens``) and its rows per source."""
    from evolkit.errors import ConfigError

    raw = common.load_split(script_args.dataset_name, script_args.dataset_config, script_args.dataset_train_split,
                            script_args.dataset_revision, script_args.max_train_samples)
    sources = rl_sources(raw)
    ds = rl_dataset(raw)
    log.info("rl prompts: %d rows (%s)", len(ds), ", ".join(f"{k}: {v}" for k, v in sources.items()))
    if script_args.max_prompt_tokens:
        n0, limit = len(ds), script_args.max_prompt_tokens
        ds = ds.filter(lambda b: [len(x) <= limit for x in tokenizer(b["prompt"])["input_ids"]], batched=True)
        if len(ds) < n0:
            log.warning("skipped %d of %d prompts longer than max_prompt_tokens=%d", n0 - len(ds), n0, limit)
        if len(ds) == 0:
            raise ConfigError(f"no prompt has at most max_prompt_tokens={limit} tokens")
    return ds, sources


def train(algo: str, fit: Fit, script_args: RLScriptArguments, training_args: Any, model_args: Any,
          model: Any = None, tokenizer: Any = None, reward: Any = None) -> common.TrainResult:
    """Run the RL stage with ``fit``; saves to ``training_args.output_dir``.

    ``model`` may be an in-memory policy; ``reward`` any callable with RLEIFReward's interface (default: built from
    the IRM/PRM paths, in the policy's dtype).
    """
    import torch

    models = common.prepare_models(model_args, script_args, model, tokenizer)
    ds, sources = load_prompts(script_args, models.tokenizer)
    if reward is None:
        dtype = model_args.dtype if model_args.dtype not in (None, "auto") else "float32"
        reward = make_reward(script_args, training_args.device, getattr(torch, dtype))
    push = common.take_push_settings(training_args)
    trainer, metrics, is_main = fit(training_args, model_args, models, ds, reward)
    extra = (f"Reward: r = r_I x r_A with IRM `{script_args.irm_model_name_or_path}`, PRM "
             f"`{script_args.prm_model_name_or_path}`, r_A = {script_args.answer_aggregation} of step probabilities; "
             f"algorithm `{algo}`.")
    data = common.dataset_record(script_args, ds, sources=sources)
    return common.finish(trainer, "rl", f"trainers.{algo}", script_args, model_args, training_args, models, data,
                         push, metrics, is_main=is_main, extra_card=extra,
                         extra_record={"algo": algo, "reward": _reward_record(script_args)})


def fit_trl(trainer_cls: type) -> Fit:
    """``fit`` for TRL's GRPOTrainer / RLOOTrainer: the reward is one callable (TRL sums several reward functions, so
    the product r_I x r_A lives inside one)."""

    def fit(args: Any, model_args: Any, models: common.Models, ds: Any, reward: Any) -> tuple[Any, dict, bool]:
        from trl import get_peft_config

        peft_config = get_peft_config(model_args)
        model = models.model
        if isinstance(model, str):
            args.model_init_kwargs = common.model_init_kwargs(model_args, args)
        elif args.beta != 0.0 and peft_config is None:
            # The KL reference is reloaded from model.config._name_or_path: save an in-memory policy first.
            common.ensure_saved(model, Path(args.output_dir) / "_initial_policy", models.tokenizer)
        trainer = trainer_cls(model=model, reward_funcs=reward, args=args, train_dataset=ds,
                              processing_class=models.tokenizer, peft_config=peft_config)
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
        trainer.save_model(args.output_dir)
        return trainer, common.final_metrics(trainer), args.should_save

    return fit
