"""The statistics every room reports with, defined once: `espl eval`, the leaderboard and the trainer.

- `mean_ci95`: mean and 95 % half-width, 1.96 x standard error (sample std, ddof=1): the normal
  approximation that lm-evaluation-harness and Inspect report (a little narrow below ~30 episodes).
- `pass_at_k`: the unbiased estimator of Chen et al. 2021 (HumanEval), 1 - C(n-c, k) / C(n, k);
  `pass_at_ks` averages it over tasks for the k `report_ks` picks (1, powers of two, the largest k every
  task has samples for). An episode succeeds when its reward reaches `SUCCESS_REWARD`.
- `TrueSkillSettings`: the TrueSkill constants (the E-SPL reference's `trueskill_utils.TrueSkillSystem`
  defaults) and `TIE_MARGIN`, the score difference under which two prompts or agents draw (ESPL_SPEC step
  6). The trainer rates prompts with them; the leaderboard with `tau=0` (agents do not drift; see
  leaderboard/ratings.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

Z_95 = 1.959963984540054  # two-sided 95 % quantile of the standard normal
SUCCESS_REWARD = 1.0  # rewards are normalised to [0, 1]; 1 = solved (a correct answer in every espl env)
TIE_MARGIN = 0.01  # scores within this draw (ESPL_SPEC step 6)


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """(mean, 95 % half-width) by the normal approximation; half-width 0 for a single value, NaN for none."""
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


def report_ks(samples_per_task: Iterable[int]) -> list[int]:
    """The k to report: 1, powers of two, and the largest k every task has enough samples for."""
    n_min = min(samples_per_task, default=0)
    if n_min < 1:
        return []
    ks, k = {1, n_min}, 2
    while k < n_min:
        ks.add(k)
        k *= 2
    return sorted(ks)


def pass_at_ks(rewards_by_task: Mapping[Any, Sequence[float]], success: float = SUCCESS_REWARD) -> dict[int, float]:
    """pass@k averaged over tasks, for every k of `report_ks` (empty without tasks)."""
    tasks = [list(v) for v in rewards_by_task.values()]
    return {k: math.fsum(pass_at_k(len(v), sum(r >= success for r in v), k) for v in tasks) / len(tasks)
            for k in report_ks(len(v) for v in tasks)}


@dataclass(frozen=True)
class TrueSkillSettings:
    """TrueSkill constants (reference `trueskill_utils.TrueSkillSystem` defaults)."""

    mu: float = 25.0
    sigma: float = 25.0 / 3
    beta: float = 25.0 / 6
    tau: float = 25.0 / 300
    draw_probability: float = 0.10

    def env(self, **kwargs: Any) -> Any:
        """A `trueskill.TrueSkill` environment with these constants (`kwargs`: e.g. backend="mpmath")."""
        import trueskill

        return trueskill.TrueSkill(mu=self.mu, sigma=self.sigma, beta=self.beta, tau=self.tau,
                                   draw_probability=self.draw_probability, **kwargs)
