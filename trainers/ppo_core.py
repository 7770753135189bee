"""PPO arithmetic (pure torch functions, unit-tested on hand-computed values).

Shapes: ``[batch, response_tokens]`` unless stated; ``mask`` is 1 on real response tokens (up to and including the
first EOS) and 0 on the padding after it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (``shift_mean=False`` keeps the mean: only rescales)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out


def first_true_indices(bools: torch.Tensor) -> torch.Tensor:
    """Index of the first True in each row (the row length when there is none)."""
    n = bools.size(-1)
    idx = torch.arange(n, device=bools.device).expand_as(bools)
    return torch.where(bools, idx, torch.full_like(idx, n)).min(-1).values


def response_mask(responses: torch.Tensor, stop_ids: list[int] | torch.Tensor) -> torch.Tensor:
    """1 up to and including the first stop token of each response, 0 after it."""
    stop = torch.as_tensor(stop_ids, device=responses.device)
    is_stop = torch.isin(responses, stop)
    first = first_true_indices(is_stop)
    pos = torch.arange(responses.size(1), device=responses.device).expand_as(responses)
    return (pos <= first.unsqueeze(1)).long()


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) per position; ``logits`` ``[B, T, V]``, ``labels`` ``[B, T]``."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, 2, labels.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: logsumexp(l) - sum(softmax(l) * l)."""
    logits = logits.float()
    p = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL(policy || reference) estimate from sampled tokens.

    ``k1``: log p - log q (unbiased, can be negative); ``k3``: exp(log q - log p) - (log q - log p) - 1 (unbiased,
    always >= 0, lower variance).
    """
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        r = ref_logprobs - logprobs
        return torch.exp(r) - r - 1.0
    raise ValueError(f"kl_estimator must be k1 or k3, not {estimator!r}")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards: -kl_coef * KL at every real token, plus the sequence score at its last real token."""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1) - 1).clamp_min(0).long()
    rewards[torch.arange(rewards.size(0), device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation. Returns (advantages, returns = advantages + values), 0 on padding.

    A_t = delta_t + gamma * lam * A_{t+1}, delta_t = r_t + gamma * V_{t+1} - V_t, with V = 0 after the last real token
    (the episode ends there).
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    T = rewards.size(1)
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                cliprange: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate: mean over real tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))."""
    logratio = logprobs - old_logprobs
    ratio = torch.exp(logratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(loss1, loss2), mask)
    stats = {
        "clipfrac": masked_mean((loss2 > loss1).float(), mask),
        "approxkl": 0.5 * masked_mean(logratio**2, mask),
        "ratio": masked_mean(ratio, mask),
    }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: 0.5 * mean of max((V - R)^2, (V_clipped - R)^2), V_clipped within +-eps_v of the old V."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    l1 = (values - returns) ** 2
    l2 = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(l1, l2), mask)
    return loss, {"clipfrac": masked_mean((l2 > l1).float(), mask)}
