"""The statistics every room reports with, defined once: `espl eval`, the leaderboard and the trainer.

- `mean_ci95`: mean and 95 % half-width, 1.96 x standard error (sample std, ddof=1): the normal
  approximation that lm-evaluation-harness and Inspect report (a little narrow below ~30 episodes).
- `pass_at_k`: the unbiased estimator of Chen et al. 2021 (HumanEval), 1 - C(n-c, k) / C(n, k);
  `pass_at_ks` averages it over tasks for the k `report_ks` picks (1, powers of two, the largest k every
  task has samples for). An episode succeeds when its reward reaches `SUCCESS_REWARD`.
- `wilson`: the Wilson score interval of a success rate (sound near 0 and 1, where small-model rates sit).
- `paired`: a before/after (or A/B) comparison of 0/1 outcomes on the same items and sampling seeds: the
  discordant counts, the exact McNemar p-value (two-sided binomial test of b vs c at 1/2, as
  `statsmodels.stats.contingency_tables.mcnemar(exact=True)`), and the 95 % interval of the difference in
  success rate (Wald interval for paired proportions: d +- z sqrt(b + c - (b - c)^2 / n) / n).
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


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of `successes` out of `n` (z = 1.96: 95 %); NaN for n = 0. Clamped to [0, 1]:
    float error gives -1e-17 at 0 of n."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (b: only the first succeeded, c: only the
    second): 2 P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), capped at 1; 1.0 when there is no discordance."""
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact: counts must be >= 0, got b={b} c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = math.fsum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Paired:
    """Outcomes of A and B on the same n items: both / only A / only B / neither succeeded."""

    n: int
    both: int
    only_a: int
    only_b: int
    neither: int

    @property
    def rate_a(self) -> float:
        return (self.both + self.only_a) / self.n if self.n else math.nan

    @property
    def rate_b(self) -> float:
        return (self.both + self.only_b) / self.n if self.n else math.nan

    @property
    def diff(self) -> float:
        """rate_b - rate_a (B is "after")."""
        return (self.only_b - self.only_a) / self.n if self.n else math.nan

    @property
    def ci95(self) -> tuple[float, float]:
        if not self.n:
            return math.nan, math.nan
        b, c, n = self.only_a, self.only_b, self.n
        half = Z_95 * math.sqrt(max(b + c - (c - b) ** 2 / n, 0.0)) / n
        return self.diff - half, self.diff + half

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.only_a, self.only_b)

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.ci95
        return {"n": self.n, "both": self.both, "only_a": self.only_a, "only_b": self.only_b,
                "neither": self.neither, "rate_a": self.rate_a, "rate_b": self.rate_b, "diff": self.diff,
                "ci95": [lo, hi], "mcnemar_p": self.p_value}


def paired(a: Mapping[Any, float], b: Mapping[Any, float], success: float = SUCCESS_REWARD) -> Paired:
    """Compare two runs item by item (keys: item ids, or (task, sample) pairs; values: rewards). Only the
    items both runs have are compared, so a run cut short is compared on what it finished."""
    keys = [k for k in a if k in b]
    sa = [a[k] >= success for k in keys]
    sb = [b[k] >= success for k in keys]
    return Paired(n=len(keys), both=sum(x and y for x, y in zip(sa, sb)),
                  only_a=sum(x and not y for x, y in zip(sa, sb)), only_b=sum(y and not x for x, y in zip(sa, sb)),
                  neither=sum(not x and not y for x, y in zip(sa, sb)))


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
