"""ESPL_SPEC step 4: advantages with a group baseline, zero-advantage group skipping, and the three
per-token RL losses.

Rewards come as an array `[M prompts, B problems, N rollouts]` (the reference's `all_rewards_torch`).
The losses work on flat token tensors: `logprobs` (current policy, with gradient), `old_logprobs`
(sampling time), `advantages` (one per token, the episode's advantage) and `mask` (1 on tokens the
policy generated). Each returns the summed per-token loss; the caller divides if it wants a mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily so `import espl.trainer.loss` stays light
    import torch

Baseline = Literal["group", "marginalize"]
LossName = Literal["reinforce_is", "ppo_clip", "cispo"]


def advantages(rewards: np.ndarray, baseline: Baseline = "group") -> np.ndarray:
    """A = r − baseline, no std normalisation (reference `value_baseline_computation`).

    group: mean over the N rollouts of the same (prompt, problem);
    marginalize: mean over every prompt and rollout of the same problem.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 3:
        raise ValueError(f"rewards: expected shape [prompts, problems, rollouts], got {rewards.shape}")
    if baseline == "group":
        return rewards - rewards.mean(axis=2, keepdims=True)
    if baseline == "marginalize":
        return rewards - rewards.mean(axis=(0, 2), keepdims=True)
    raise ValueError(f"baseline: must be 'group' or 'marginalize', got {baseline!r}")


def kept_groups(rewards: np.ndarray, baseline: Baseline = "group") -> np.ndarray:
    """Bool mask [M, B]: False for (prompt, problem) groups whose advantages are all zero (the reference
    skips them: they carry no gradient and would only dilute a mean).

    Decided on the rewards, not by comparing advantages to 0.0: the mean of equal fractional rewards
    (3 x 0.1) is not exactly 0.1 in floating point, so their advantages are ~1e-17, not 0. group: all N
    rewards of the group are equal; marginalize: all rewards of the problem (every prompt) are equal, or the
    group's rewards all equal the problem's mean (to 1e-12)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    same_in_group = np.all(rewards == rewards[:, :, :1], axis=2)
    if baseline == "group":
        return ~same_in_group
    problem_mean = rewards.mean(axis=(0, 2), keepdims=True)
    at_mean = np.all(np.abs(rewards - problem_mean) <= 1e-12, axis=2)
    return ~(same_in_group & at_mean)


def skip_ratio(keep: np.ndarray) -> float:
    return float(1.0 - keep.mean()) if keep.size else 0.0


@dataclass(frozen=True)
class LossSettings:
    ppo_clip_eps: float = 0.2  # PPO clip range [1 − ε, 1 + ε]
    cispo_clip_low: float = 0.0  # reference: cispo clip_low_threshold
    cispo_clip_high: float = 4.0  # reference: cispo clip_high_threshold


def reinforce_is(lp: "torch.Tensor", old_lp: "torch.Tensor", adv: "torch.Tensor", mask: "torch.Tensor", s: LossSettings) -> "torch.Tensor":
    """Importance-sampled REINFORCE (Tinker `importance_sampling`): −(π_θ / π_sample) · A per token."""
    import torch

    ratio = torch.exp(lp - old_lp)
    return -(ratio * adv * mask).sum()


def ppo_clip(lp: "torch.Tensor", old_lp: "torch.Tensor", adv: "torch.Tensor", mask: "torch.Tensor", s: LossSettings) -> "torch.Tensor":
    """PPO's clipped surrogate: −min(ρA, clip(ρ, 1 − ε, 1 + ε)A) per token."""
    import torch

    ratio = torch.exp(lp - old_lp)
    clipped = torch.clamp(ratio, 1.0 - s.ppo_clip_eps, 1.0 + s.ppo_clip_eps)
    return -(torch.minimum(ratio * adv, clipped * adv) * mask).sum()


def cispo(lp: "torch.Tensor", old_lp: "torch.Tensor", adv: "torch.Tensor", mask: "torch.Tensor", s: LossSettings) -> "torch.Tensor":
    """CISPO: −sg(clip(ρ, low, high)) · A · log π_θ per token (the clipped IS weight carries no gradient)."""
    import torch

    weight = torch.clamp(torch.exp(lp - old_lp), s.cispo_clip_low, s.cispo_clip_high).detach()
    return -(weight * adv * lp * mask).sum()


LOSSES: dict[str, Callable[..., "torch.Tensor"]] = {
    "reinforce_is": reinforce_is,
    "ppo_clip": ppo_clip,
    "cispo": cispo,
}
