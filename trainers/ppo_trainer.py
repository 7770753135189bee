"""PPO for the RLEIF stage, over transformers and accelerate (TRL removed its PPOTrainer in 1.13).

A policy with a scalar value head on its last hidden state, a frozen copy of the starting policy as the KL reference,
per-token rewards -kl_coef * KL plus the score on the last token, GAE, and several epochs of minibatches per rollout
batch with the clipped policy and value losses (the arithmetic is in :mod:`trainers.ppo_core`). Batch sizes follow
TRL's former PPO: a rollout batch is ``per_device_train_batch_size * gradient_accumulation_steps * num_mini_batches``
prompts per process; one optimizer step per minibatch of ``per_device_train_batch_size * gradient_accumulation_steps``.
``max_steps`` > 0 counts rollout batches; otherwise ``total_episodes`` (default ``num_train_epochs`` x prompts).
``save_strategy: steps`` saves the policy and value head every ``save_steps`` rollout batches (no optimizer state:
PPO runs do not resume). The script is :mod:`trainers.ppo`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainingArguments

from . import common
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
from .rewards import RLEIFReward

log = logging.getLogger("evolkit.trainers.ppo")

VALUE_HEAD_FILE = "value_head.safetensors"


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
        def enc(batch: dict[str, list[Any]]) -> dict[str, Any]:
            return {"input_ids": tokenizer(batch["prompt"], add_special_tokens=True)["input_ids"]}

        ds = train_dataset.map(enc, batched=True, desc="Tokenizing prompts")
        n0 = len(ds)
        limit = args.max_prompt_length
        ds = ds.filter(lambda b: [len(x) <= limit for x in b["input_ids"]], batched=True)
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
