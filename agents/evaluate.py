"""Evaluate a policy on an env: what `espl eval --env` runs, reusable from Python.

    result = evaluate("espl/Math-v0", HFPolicy("smollm2-135m"), episodes=64, params=SamplingParams(seed=0))
    print(result.mean_reward, result.ci95, result.pass_at_k, result.reasons)

- Tasks are the env's seeds `seed .. seed+episodes-1` of `split` (default "test"); each is run `samples`
  times (pass@k for k <= samples, unbiased estimator of Chen et al. 2021). An episode succeeds when its
  reward reaches `success_reward` (1.0: a correct answer in every espl env).
- mean reward ± the 95 % half-width (normal approximation over episodes), counts per `info["reason"]`,
  generated tokens per second of wall time.
- If the policy fails midway (server down after its retries), the finished episodes are kept: the result
  has them, and `error` says what happened.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from espl.agents.errors import RolloutError
from espl.agents.policy import Policy
from espl.agents.rollout import Episode, EnvSource, RolloutStats, rollout
from espl.types import SamplingParams, Trajectory

Z_95 = 1.959963984540054


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """(mean, 95 % half-width) by the normal approximation; half-width 0 for a single value."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n == 1:
        return mean, 0.0
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, Z_95 * math.sqrt(var / n)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): P(at least one of k samples drawn from n, c correct, is correct)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _ks(samples: int) -> list[int]:
    ks, k = {1, samples}, 2
    while k < samples:
        ks.add(k)
        k *= 2
    return sorted(ks)


@dataclass
class EvalResult:
    """The summary of one evaluation (`to_dict()` is what `espl eval --json` prints)."""

    env: str
    model: str
    episodes: int  # episodes finished
    requested: int  # episodes asked for (tasks x samples)
    tasks: int
    samples: int
    mean_reward: float
    ci95: float
    success_rate: float
    pass_at_k: dict[int, float]
    reasons: dict[str, int]
    generated_tokens: int
    seconds: float
    tokens_per_s: float
    system_prompt: str | None
    split: str | None
    seed: int
    params: dict[str, Any]
    error: str | None = None
    trajectories: list[Trajectory] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "trajectories"}
        d["pass_at_k"] = {str(k): v for k, v in self.pass_at_k.items()}
        return d


def summarize(env: str, model: str, trajs: Sequence[Trajectory], *, requested: int, samples: int,
              stats: RolloutStats, system_prompt: str | None, split: str | None, seed: int,
              params: SamplingParams, success_reward: float = 1.0, error: str | None = None) -> EvalResult:
    rewards = [t.reward for t in trajs]
    mean, ci = mean_ci95(rewards)
    by_task: dict[Any, list[float]] = defaultdict(list)
    for t in trajs:
        by_task[t.seed].append(t.reward)
    passes: dict[int, float] = {}
    if by_task:
        n_min = min(len(v) for v in by_task.values())
        for k in _ks(n_min):
            passes[k] = math.fsum(pass_at_k(len(v), sum(r >= success_reward for r in v), k)
                                  for v in by_task.values()) / len(by_task)
    return EvalResult(
        env=env, model=model, episodes=len(trajs), requested=requested, tasks=len(by_task), samples=samples,
        mean_reward=mean, ci95=ci,
        success_rate=(sum(r >= success_reward for r in rewards) / len(rewards)) if rewards else math.nan,
        pass_at_k=passes, reasons=dict(sorted(Counter(t.reason for t in trajs).items())),
        generated_tokens=stats.generated_tokens, seconds=stats.total_s,
        tokens_per_s=stats.generated_tokens / stats.total_s if stats.total_s > 0 else 0.0,
        system_prompt=system_prompt, split=split, seed=seed,
        params={"temperature": params.temperature, "top_p": params.top_p, "max_new_tokens": params.max_new_tokens,
                "seed": params.seed, "stop": list(params.stop)},
        error=error, trajectories=list(trajs),
    )


def evaluate(
    env: EnvSource,
    policy: Policy,
    *,
    episodes: int = 32,
    params: SamplingParams | None = None,
    system_prompt: str | None = None,
    samples: int = 1,
    seed: int = 0,
    split: str | None = "test",
    env_kwargs: dict[str, Any] | None = None,
    max_batch: int | None = None,
    success_reward: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
    rollout_fn: Callable[..., list[Trajectory]] | None = None,
) -> EvalResult:
    """Run `episodes` tasks x `samples` of `env` with `policy` and summarise (see the module docstring).

    `split=None` leaves the env's own default split (for envs without splits). `rollout_fn` replaces the
    local `rollout` (same signature), e.g. `RayRollout(...).rollout` to run the episodes on a Ray cluster.
    """
    if episodes < 1:
        raise ValueError(f"episodes: must be >= 1, got {episodes}")
    if samples < 1:
        raise ValueError(f"samples: must be >= 1, got {samples}")
    if seed < 0:
        raise ValueError(f"seed: must be >= 0 (task seeds are seed .. seed+episodes-1), got {seed}")
    params = params or SamplingParams(seed=seed)
    kwargs = dict(env_kwargs or {})
    if split is not None:
        kwargs.setdefault("split", split)
    eps = [Episode(seed=seed + i, system_prompt=system_prompt) for i in range(episodes) for _ in range(samples)]
    stats = RolloutStats()
    env_name = env if isinstance(env, str) else getattr(env, "__name__", repr(env))
    model = getattr(policy, "name", type(policy).__name__)
    t0 = time.perf_counter()
    error = None
    try:
        trajs = (rollout_fn or rollout)(env, policy, eps, params, env_kwargs=kwargs, max_batch=max_batch,
                                        progress=progress, stats=stats)
    except RolloutError as exc:
        trajs = [exc.trajectories[i] for i in sorted(exc.trajectories)]
        error = str(exc)
    stats.total_s = stats.total_s or (time.perf_counter() - t0)
    return summarize(env_name, model, trajs, requested=len(eps), samples=samples, stats=stats,
                     system_prompt=system_prompt, split=kwargs.get("split"), seed=seed, params=params,
                     success_reward=success_reward, error=error)
