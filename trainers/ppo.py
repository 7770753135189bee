"""The RLEIF reinforcement-learning stage (WizardMath step 3): PPO (default), GRPO or RLOO on r = r_I x r_A.

The prompts are the published ``rl_prompts`` config: ``prompt`` (the Alpaca template the policy completes),
``instruction`` (what the IRM scores; also the problem the PRM sees) and ``gold_answer``. The reward is
:class:`trainers.rewards.RLEIFReward` built from the trained IRM and PRM (``--irm_model_name_or_path``,
``--prm_model_name_or_path``; ``--answer_aggregation min|prod``).

``--algo ppo`` (as in the recipe). TRL removed PPOTrainer (1.13), so PPO is implemented here over transformers and
accelerate (:class:`PPOTrainer`): a policy with a scalar value head on its last hidden state, a frozen copy of the
starting policy as the KL reference, per-token rewards -kl_coef * KL plus the score on the last token, GAE, and
several epochs of minibatches per rollout batch with the clipped policy and value losses. Batch sizes follow TRL's
old PPO: a rollout batch is ``per_device_train_batch_size * gradient_accumulation_steps * num_mini_batches`` prompts
per process; one optimizer step per minibatch of ``per_device_train_batch_size * gradient_accumulation_steps``.
``max_steps`` > 0 counts rollout batches; otherwise ``total_episodes`` (default ``num_train_epochs`` x prompts).
``save_strategy: steps`` saves the policy and value head every ``save_steps`` rollout batches (no optimizer state:
PPO runs do not resume). The IRM and PRM are loaded in the policy's ``dtype``.

``--algo grpo`` / ``--algo rloo``: TRL's GRPOTrainer / RLOOTrainer with the same reward as one callable (TRL sums
several reward functions, so the product lives inside one); their configs (GRPOConfig/RLOOConfig) replace PPOConfig,
including vLLM generation (``use_vllm``).

    python -m trainers.ppo --config trainers/configs/ppo_tiny.yaml --model_name_or_path SFT_DIR \\
        --irm_model_name_or_path IRM_DIR --prm_model_name_or_path PRM_DIR --dataset_name ./published \\
        --output_dir out/ppo
    python -m trainers.ppo --algo grpo --config trainers/configs/grpo_tiny.yaml ...
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainingArguments

from . import common
from .data import rl_dataset
from .ppo_core import (
    entropy_from_logits,
    gae,
    kl_penalty,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    policy_loss,
    response_mask,
    token_rewards,
    value_loss,
)
from .rewards import AGGREGATIONS, RLEIFReward, build_reward

log = logging.getLogger("evolkit.trainers.ppo")

ALGOS = ("ppo", "grpo", "rloo")
VALUE_HEAD_FILE = "value_head.safetensors"


@dataclass
class RLScriptArguments(common.DatasetArguments):
    dataset_config: str | None = field(default="rl_prompts", metadata={"help": "Config of the published dataset."})
    algo: str = field(default="ppo", metadata={"help": "ppo (own implementation), grpo or rloo (TRL trainers)."})
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


@dataclass
class PPOConfig(TrainingArguments):
    """TrainingArguments plus PPO's settings. bf16 / activation checkpointing follow the device when unset."""

    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "model_init_kwargs"]

    learning_rate: float = field(default=3e-6, metadata={"help": "The initial learning rate for AdamW."})
    logging_steps: float = field(default=1, metadata={"help": "Log every X rollout batches."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision (default: on when a GPU is used)."})
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for AutoModelForCausalLM.from_pretrained."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow models with custom code."})
    # rollouts
    max_prompt_length: int = field(default=512, metadata={"help": "Prompts longer than this (tokens) are skipped."})
    response_length: int = field(default=512, metadata={"help": "Maximum new tokens per response."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (logprobs use the same)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0 = off). Log-probs ignore top_p/top_k."})
    total_episodes: int | None = field(default=None, metadata={"help": "Responses to train on (all processes)."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtracted from the score of a response that never emits EOS."}
    )
    # PPO
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    num_mini_batches: int = field(default=1, metadata={"help": "Optimizer steps per pass over a rollout batch."})
    kl_coef: float = field(default=0.05, metadata={"help": "Weight of the per-token KL penalty to the reference."})
    kl_estimator: str = field(default="k1", metadata={"help": "k1 (log-ratio) or k3."})
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clip range."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip range."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    gamma: float = field(default=1.0, metadata={"help": "Discount."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten the per-token rewards (keeps the mean)."})

    def __post_init__(self) -> None:
        common.resolve_precision_defaults(self)
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (PPO samples, and divides the logits by it)")
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be k1 or k3, not {self.kl_estimator!r}")

    @property
    def mini_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def rollout_batch_size(self) -> int:
        return self.mini_batch_size * self.num_mini_batches


def _peek_algo(argv: Sequence[str]) -> str:
    argv = list(argv)
    for i, a in enumerate(argv):
        if a == "--algo" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--algo="):
            return a.split("=", 1)[1]
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 < len(argv):
            algo = common._load_yaml(argv[i + 1]).get("algo")
            if algo:
                return str(algo)
    return "ppo"


def config_class(algo: str) -> type:
    from evolkit.errors import ConfigError

    if algo == "ppo":
        return PPOConfig
    if algo == "grpo":
        from trl import GRPOConfig

        return GRPOConfig
    if algo == "rloo":
        from trl import RLOOConfig

        return RLOOConfig
    raise ConfigError(f"--algo must be one of {', '.join(ALGOS)}, not {algo!r}")


def parse(argv: Sequence[str] | None = None) -> tuple[Any, Any, Any]:
    import sys

    from trl import ModelConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    return common.parse_args((RLScriptArguments, config_class(_peek_algo(argv)), ModelConfig), argv)


# ------------------------------------------------------------------------------------------------------------------ PPO


class PolicyWithValueHead(nn.Module):
    """A causal LM and a linear value head on its last hidden state (shared trunk)."""

    def __init__(self, policy: Any):
        super().__init__()
        self.policy = policy
        hidden = policy.config.get_text_config().hidden_size
        self.v_head = nn.Linear(hidden, 1)
        nn.init.normal_(self.v_head.weight, std=1.0 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.v_head.bias)
        self.v_head.to(next(policy.parameters()).dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          output_hidden_states=True, use_cache=False)
        h = out.hidden_states[-1]
        values = self.v_head(h.to(self.v_head.weight.dtype)).squeeze(-1)
        return out.logits, values


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def _disable_dropout(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


class PPOTrainer:
    """PPO for the RLEIF stage (see the module docstring). ``reward`` maps (prompts, texts, instructions) to scores."""

    def __init__(self, args: PPOConfig, policy: Any, tokenizer: Any, train_dataset: Any, reward: RLEIFReward,
                 ref_policy: Any = None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.args = args
        mp = "bf16" if args.bf16 else "fp16" if args.fp16 else "no"
        trackers = [r for r in (args.report_to or []) if r not in ("none", "all")]
        self.accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                                       mixed_precision=mp, log_with=trackers or None)
        set_seed(args.seed)
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.reward = reward
        self.ref_policy = ref_policy if ref_policy is not None else copy.deepcopy(policy)
        for m in (policy, self.ref_policy):
            _disable_dropout(m)
        self.ref_policy.requires_grad_(False).eval()
        if args.activation_checkpointing:
            policy.activation_checkpointing_enable(
                activation_checkpointing_kwargs=args.activation_checkpointing_kwargs or {"use_reentrant": False})
            policy.config.use_cache = False
        self.model = PolicyWithValueHead(policy)
        self.stop_ids = sorted({i for i in self._eos_ids(policy) if i is not None})

        # prompts: tokenized once; too long ones skipped
        def enc(row: dict[str, Any]) -> dict[str, Any]:
            return {"input_ids": tokenizer(row["prompt"], add_special_tokens=True)["input_ids"]}

        ds = train_dataset.map(enc)
        n0 = len(ds)
        ds = ds.filter(lambda r: len(r["input_ids"]) <= args.max_prompt_length)
        if len(ds) < n0:
            log.warning("skipped %d prompts longer than max_prompt_length=%d", n0 - len(ds), args.max_prompt_length)
        self.train_dataset = ds
        world = self.accelerator.num_processes
        B = args.rollout_batch_size
        if len(ds) < B * world:
            from evolkit.errors import ConfigError

            raise ConfigError(f"{len(ds)} prompts, fewer than one rollout batch ({B} per process x {world})")
        if args.max_steps and args.max_steps > 0:
            self.num_updates = args.max_steps
        else:
            episodes = args.total_episodes or int(args.num_train_epochs * len(ds))
            self.num_updates = max(1, episodes // (B * world))
        self.optimizer_steps = self.num_updates * args.num_ppo_epochs * args.num_mini_batches

        from torch.utils.data import DataLoader
        from transformers import get_scheduler

        g = torch.Generator().manual_seed(args.seed)
        self.dataloader = DataLoader(ds, batch_size=B, shuffle=True, drop_last=True, collate_fn=self._collate,
                                     generator=g)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon, weight_decay=args.weight_decay,
        )
        self.scheduler = get_scheduler(
            args.lr_scheduler_type, self.optimizer, num_warmup_steps=args.get_warmup_steps(self.optimizer_steps),
            num_training_steps=self.optimizer_steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs or {},
        )
        # The scheduler is stepped by hand after each real optimizer step (accelerate's prepared scheduler steps once
        # per process, which would shorten the schedule in multi-GPU runs).
        self.model, self.optimizer, self.dataloader = self.accelerator.prepare(
            self.model, self.optimizer, self.dataloader
        )
        self.ref_policy.to(self.accelerator.device)
        self.log_history: list[dict[str, float]] = []
        self.episode = 0
        if trackers:
            self.accelerator.init_trackers(args.run_name or "evolkit-ppo", config={})

    @staticmethod
    def _eos_ids(policy: Any) -> list[int]:
        ids: list[int] = []
        for src in (getattr(policy, "generation_config", None), policy.config):
            e = getattr(src, "eos_token_id", None) if src is not None else None
            ids += e if isinstance(e, list) else [e]
        return ids

    def _collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        enc = self.tokenizer.pad({"input_ids": [r["input_ids"] for r in rows]}, padding=True, padding_side="left",
                                 return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "prompt": [r["prompt"] for r in rows], "instruction": [r["instruction"] for r in rows]}

    def _batches(self) -> Iterator[dict[str, Any]]:
        while True:
            yield from self.dataloader

    def _stop_ids(self) -> list[int]:
        ids = list(self.stop_ids)
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    @torch.no_grad()
    def rollout(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Generate responses, score them, and compute old logprobs, reference logprobs, values, advantages."""
        args, acc = self.args, self.accelerator
        unwrapped = acc.unwrap_model(self.model)
        query, qmask = batch["input_ids"], batch["attention_mask"]
        P = query.size(1)
        stop = self._stop_ids()
        # A fresh generation config: a checkpoint's own defaults (top_k=50, repetition penalty...) would sample from
        # another distribution than the one the log-probs below are computed from.
        from transformers import GenerationConfig

        gen_config = GenerationConfig(max_new_tokens=args.response_length, do_sample=True, temperature=args.temperature,
                                      top_p=args.top_p, top_k=args.top_k, pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=stop, use_cache=True)
        mb = args.per_device_train_batch_size
        seqs = []
        for i in range(0, query.size(0), mb):
            out = unwrapped.policy.generate(input_ids=query[i : i + mb], attention_mask=qmask[i : i + mb],
                                            generation_config=gen_config)
            seqs.append(out[:, P:])
        width = max(s.size(1) for s in seqs)
        pad = self.tokenizer.pad_token_id
        responses = torch.cat([nn.functional.pad(s, (0, width - s.size(1)), value=pad) for s in seqs])
        rmask = response_mask(responses, stop)
        if width == 0:
            raise RuntimeError("the policy generated no token")
        has_eos = torch.isin(responses, torch.as_tensor(stop, device=responses.device)).any(1)
        responses = torch.where(rmask.bool(), responses, torch.full_like(responses, pad))
        qr = torch.cat([query, responses], 1)
        attn = torch.cat([qmask, rmask], 1)
        pos = _position_ids(attn)
        logps, ref_logps, values, ents = [], [], [], []
        for i in range(0, qr.size(0), mb):
            sl = slice(i, i + mb)
            logits, v = self.model(qr[sl], attn[sl], pos[sl])
            logits = logits[:, P - 1 : -1] / args.temperature
            logps.append(logprobs_from_logits(logits, responses[sl]))
            ents.append(entropy_from_logits(logits))
            values.append(v[:, P - 1 : -1].float())
            ref_logits = self.ref_policy(input_ids=qr[sl], attention_mask=attn[sl], position_ids=pos[sl],
                                         use_cache=False).logits[:, P - 1 : -1] / args.temperature
            ref_logps.append(logprobs_from_logits(ref_logits, responses[sl]))
            del logits, ref_logits
        logp, ref_logp, value, ent = (torch.cat(x) for x in (logps, ref_logps, values, ents))
        mask = rmask.float()
        texts = [
            self.tokenizer.decode(r[m.bool()], skip_special_tokens=True) for r, m in zip(responses, rmask, strict=True)
        ]
        comp = self.reward.components(batch["prompt"], texts, batch["instruction"])
        scores = torch.tensor(comp["r"], dtype=torch.float32, device=logp.device)
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * (~has_eos).float()
        kl = kl_penalty(logp, ref_logp, args.kl_estimator) * mask
        rewards = token_rewards(scores, kl, mask, args.kl_coef)
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
        adv, returns = gae(rewards, value, mask, args.gamma, args.lam)
        adv = masked_whiten(adv, mask) * mask
        return {
            "qr": qr, "attn": attn, "pos": pos, "responses": responses, "mask": mask, "logp": logp,
            "values": value * mask, "adv": adv, "returns": returns, "P": P,
            "stats": {
                "objective/scores": scores.mean(), "objective/r_I": torch.tensor(comp["r_I"]).float().mean(),
                "objective/r_A": torch.tensor(comp["r_A"]).float().mean(), "objective/kl": kl.sum(1).mean(),
                "objective/rlhf_reward": (scores - args.kl_coef * kl.sum(1)).mean(),
                "objective/entropy": masked_mean(ent, mask), "val/mean": masked_mean(value, mask),
                "response/length": mask.sum(1).mean(), "response/eos_fraction": has_eos.float().mean(),
            },
            "texts": texts,
        }

    def update(self, ro: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Several epochs of minibatch updates on one rollout batch (clipped policy + value losses)."""
        args, acc = self.args, self.accelerator
        B = ro["qr"].size(0)
        P = ro["P"]
        mb, mini = args.per_device_train_batch_size, args.mini_batch_size
        sums: dict[str, float] = {}
        count = 0
        first_logratio = None
        self.model.train()
        for _ in range(args.num_ppo_epochs):
            perm = torch.randperm(B, device=ro["qr"].device)
            for start in range(0, B, mini):
                mini_idx = perm[start : start + mini]
                for m0 in range(0, mini, mb):
                    idx = mini_idx[m0 : m0 + mb]
                    with acc.accumulate(self.model):
                        logits, v = self.model(ro["qr"][idx], ro["attn"][idx], ro["pos"][idx])
                        logits = logits[:, P - 1 : -1] / args.temperature
                        new_logp = logprobs_from_logits(logits, ro["responses"][idx])
                        vpred = v[:, P - 1 : -1].float()
                        m = ro["mask"][idx]
                        if first_logratio is None:  # before any update: must be ~0 (same weights, same inputs)
                            first_logratio = ((new_logp - ro["logp"][idx]).abs() * m).max().item()
                        pg, pg_stats = policy_loss(new_logp, ro["logp"][idx], ro["adv"][idx], m, args.cliprange)
                        vf, vf_stats = value_loss(vpred, ro["values"][idx], ro["returns"][idx], m,
                                                  args.cliprange_value)
                        loss = pg + args.vf_coef * vf
                        acc.backward(loss)
                        if acc.sync_gradients and args.max_grad_norm:
                            acc.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                        self.optimizer.step()
                        if acc.sync_gradients:
                            self.scheduler.step()
                        self.optimizer.zero_grad()
                    with torch.no_grad():
                        step = {
                            "loss/policy": pg.item(), "loss/value": vf.item(), "loss/total": loss.item(),
                            "policy/clipfrac": pg_stats["clipfrac"].item(),
                            "policy/approxkl": pg_stats["approxkl"].item(), "val/ratio": pg_stats["ratio"].item(),
                            "val/clipfrac": vf_stats["clipfrac"].item(),
                            "policy/entropy": masked_mean(entropy_from_logits(logits.detach()), m).item(),
                        }
                    for k, val in step.items():
                        sums[k] = sums.get(k, 0.0) + val
                    count += 1
        self.model.eval()
        out = {k: torch.tensor(v / max(count, 1), device=acc.device) for k, v in sums.items()}
        # |log pi_new - log pi_old| on the first micro-batch, before the first step: a sanity check that the training
        # forward pass reproduces the rollout's log-probs (padding, positions, dropout, temperature)
        out["policy/initial_logratio_absmax"] = torch.tensor(first_logratio or 0.0, device=acc.device)
        return out

    def train(self) -> list[dict[str, float]]:
        args, acc = self.args, self.accelerator
        batches = self._batches()
        t0 = time.time()
        self.model.eval()
        for update in range(1, self.num_updates + 1):
            ro = self.rollout(next(batches))
            upd = self.update(ro)
            self.episode += ro["qr"].size(0) * acc.num_processes
            stats = {**ro["stats"], **upd}
            row = {k: acc.gather_for_metrics(v.detach().float().reshape(1)).mean().item() for k, v in stats.items()}
            row.update(update=update, episode=self.episode, lr=self.scheduler.get_last_lr()[0],
                       seconds=round(time.time() - t0, 2))
            self.log_history.append(row)
            if acc.is_main_process and (update % max(1, int(args.logging_steps)) == 0 or update == self.num_updates):
                log.info("ppo %s", json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}))
            if acc.trackers:
                acc.log(row, step=update)
            for k, v in row.items():
                if not math.isfinite(v):
                    raise FloatingPointError(f"PPO update {update}: {k} = {v}")
            if (args.save_strategy == "steps" and args.save_steps and update % int(args.save_steps) == 0
                    and update < self.num_updates):
                self.save_model(str(Path(args.output_dir) / f"checkpoint-{update}"))
        if acc.trackers:
            acc.end_training()
        return self.log_history

    def save_model(self, output_dir: str) -> None:
        """The policy (loadable with AutoModelForCausalLM), its tokenizer, the value head and the PPO log."""
        from safetensors.torch import save_file

        acc = self.accelerator
        acc.wait_for_everyone()
        state = acc.get_state_dict(self.model)
        if not acc.is_main_process:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        unwrapped = acc.unwrap_model(self.model)
        policy_state = {k[len("policy."):]: v for k, v in state.items() if k.startswith("policy.")}
        unwrapped.policy.config.use_cache = True
        unwrapped.policy.save_pretrained(out, state_dict=policy_state)
        self.tokenizer.save_pretrained(out)
        head = {k[len("v_head."):]: v.detach().cpu().contiguous() for k, v in state.items() if k.startswith("v_head.")}
        save_file(head, str(out / VALUE_HEAD_FILE))
        (out / "ppo_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.log_history))


# --------------------------------------------------------------------------------------------------------------- wiring


def _reward(script_args: RLScriptArguments, device: Any, dtype: Any = None) -> RLEIFReward:
    from evolkit.errors import ConfigError

    if script_args.answer_aggregation not in AGGREGATIONS:
        raise ConfigError(f"answer_aggregation must be one of {AGGREGATIONS}, not {script_args.answer_aggregation!r}")
    if not script_args.irm_model_name_or_path and not script_args.prm_model_name_or_path:
        raise ConfigError("set irm_model_name_or_path and/or prm_model_name_or_path: without them the reward is 1")
    for name in ("irm_model_name_or_path", "prm_model_name_or_path"):
        if not getattr(script_args, name):
            log.warning("%s is unset: its factor of r = r_I x r_A is 1", name)
    return build_reward(script_args.irm_model_name_or_path, script_args.prm_model_name_or_path,
                        script_args.answer_aggregation, script_args.prm_input, device=str(device), dtype=dtype,
                        batch_size=script_args.reward_batch_size, empty_answer_reward=script_args.empty_answer_reward)


def train(script_args: RLScriptArguments, training_args: Any, model_args: Any, model: Any = None,
          tokenizer: Any = None, reward: Any = None) -> Any:
    """Run the RL stage with ``script_args.algo``; saves to ``training_args.output_dir`` and returns the trainer.

    ``model`` may be an in-memory policy; ``reward`` any callable with RLEIFReward's interface (default: built from
    the IRM/PRM paths).
    """
    from evolkit.errors import ConfigError

    if script_args.algo not in ALGOS:
        raise ConfigError(f"algo must be one of {ALGOS}, not {script_args.algo!r}")
    expected = config_class(script_args.algo)
    if not isinstance(training_args, expected):
        raise ConfigError(f"algo {script_args.algo} needs a {expected.__name__}, got {type(training_args).__name__}")
    name = model_args.model_name_or_path if model is None else None
    if model is None and not name:
        raise ConfigError("model_name_or_path is required (the SFT model)")
    ds = rl_dataset(common.load_split(script_args.dataset_name, script_args.dataset_config,
                                      script_args.dataset_train_split, script_args.dataset_revision,
                                      script_args.max_train_samples))
    if tokenizer is None:
        tokenizer = common.load_tokenizer(script_args.tokenizer_name_or_path or name or model.config._name_or_path)
    if script_args.max_prompt_tokens:
        n0, limit = len(ds), script_args.max_prompt_tokens
        ds = ds.filter(lambda r: len(tokenizer(r["prompt"])["input_ids"]) <= limit)
        if len(ds) < n0:
            log.warning("skipped %d of %d prompts longer than max_prompt_tokens=%d", n0 - len(ds), n0, limit)
        if len(ds) == 0:
            raise ConfigError(f"no prompt has at most max_prompt_tokens={limit} tokens")
    if reward is None:
        dtype = model_args.dtype if model_args.dtype not in (None, "auto") else "float32"
        reward = _reward(script_args, training_args.device, getattr(torch, dtype))
    push = common.take_push_settings(training_args)
    out = training_args.output_dir
    if script_args.algo == "ppo":
        trainer = _train_ppo(training_args, model_args, name, model, tokenizer, ds, reward)
        metrics = dict(trainer.log_history[-1]) if trainer.log_history else {}
        is_main = trainer.accelerator.is_main_process
    else:
        trainer = _train_trl(script_args.algo, training_args, model_args, name, model, tokenizer, ds, reward)
        metrics = common.final_metrics(trainer)
        is_main = training_args.should_save
    extra = (f"Reward: r = r_I x r_A with IRM `{script_args.irm_model_name_or_path}`, PRM "
             f"`{script_args.prm_model_name_or_path}`, r_A = {script_args.answer_aggregation} of step probabilities; "
             f"algorithm `{script_args.algo}`.")
    common.finish(out, "ppo", script_args, model_args, training_args, push, metrics=metrics, n_train_rows=len(ds),
                  extra=extra, is_main=is_main)
    return trainer


def _train_ppo(args: PPOConfig, model_args: Any, name: str | None, model: Any, tokenizer: Any, ds: Any,
               reward: Any) -> PPOTrainer:
    from transformers import AutoModelForCausalLM

    from evolkit.errors import ConfigError

    if model_args.use_peft:
        raise ConfigError("--algo ppo trains the full policy; use_peft is supported with grpo/rloo")
    if model is None:
        kw = common.model_init_kwargs(model_args, args)
        model = AutoModelForCausalLM.from_pretrained(name, **kw)
        ref = AutoModelForCausalLM.from_pretrained(name, **kw)
    else:
        ref = copy.deepcopy(model)
    trainer = PPOTrainer(args, model, tokenizer, ds, reward, ref_policy=ref)
    trainer.train()
    trainer.save_model(args.output_dir)
    return trainer


def _train_trl(algo: str, args: Any, model_args: Any, name: str | None, model: Any, tokenizer: Any, ds: Any,
               reward: Any) -> Any:
    from trl import GRPOTrainer, RLOOTrainer, get_peft_config

    peft_config = get_peft_config(model_args)
    if model is None:
        args.model_init_kwargs = common.model_init_kwargs(model_args, args)
        model = name
    elif args.beta != 0.0 and peft_config is None:
        # The KL reference is reloaded from model.config._name_or_path: save an in-memory policy first.
        common.ensure_saved(model, Path(args.output_dir) / "_initial_policy", tokenizer)
    cls = GRPOTrainer if algo == "grpo" else RLOOTrainer
    trainer = cls(model=model, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tokenizer,
                  peft_config=peft_config)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    return trainer


def main(argv: Sequence[str] | None = None) -> Any:
    common.setup_logging()
    common.setup_threads()
    return train(*parse(argv))


if __name__ == "__main__":
    common.run_main(main)
