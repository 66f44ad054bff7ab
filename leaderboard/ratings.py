"""Ratings: per-env mean reward ± 95 % CI and pass@k, and TrueSkill from per-task head-to-head outcomes.

- **Score**: mean episode reward and a 95 % confidence half-width, 1.96 × standard error (sample std,
  ddof=1): the normal approximation that lm-evaluation-harness and Inspect report. It is a little narrow
  below ~30 episodes; the episode count is shown beside it. Overall score = the mean of the agent's per-env
  scores (each env counts once, however many episodes it has), with the CI from their standard errors.
- **pass@k**: the unbiased estimator of Chen et al. 2021 (HumanEval), 1 - C(n-c, k) / C(n, k) per task
  with n samples of which c succeeded, averaged over tasks with n >= k. An episode succeeds when its
  reward reaches `SUCCESS_REWARD` (rewards are normalised to [0, 1]; 1 = solved).
- **TrueSkill** (as TextArena rates its models, from one-on-one games): on every task (env config + seed)
  that two or more agents ran, each pair of them plays a 1v1 game decided by their mean reward on the task
  (over samples); rewards within `TIE_MARGIN` are a draw. Tasks are played in sorted order and the pairs of
  a task in an order fixed by a hash of (task, pair), so the same results always give the same ratings and
  no agent is systematically first. Per env: that env's tasks only; overall: all of them. Agents are
  ranked by the conservative estimate μ - 3σ (TrueSkill's "exposure"), which rewards both skill and the
  evidence for it; an agent with no opponent keeps the prior (25 ± 8.3).

  Two choices differ from the trainer's TrueSkill, both measured (seeded simulations, 5 agents with
  success rates 0.20-0.40 on 300 pass/fail tasks, 24 boards, pairs of agents ranked in the wrong order):
  - τ = 0: a leaderboard agent is fixed, its skill does not drift between tasks. With the trainer's
    τ = 25/300 every game adds drift, so late tasks outweigh early ones: 49 misordered pairs vs 17 (τ = 0)
    and 14 for raw means.
  - 1v1 games instead of one free-for-all match per task: `trueskill`'s free-for-all chains tied teams in
    their input order, which biases ties by agent name. With agents named in reverse order of skill, a
    free-for-all with the observed draw rate (0.58) misordered 189 pairs (16 with draw probability 0.10);
    1v1 games gave 17 and 16. (`python benchmarks/leaderboard_ratings.py` reproduces these counts.)
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from itertools import combinations
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import trueskill

# one definition of the statistics for `espl eval`, the trainer and the leaderboard (agents/stats.py)
from espl.agents.stats import SUCCESS_REWARD, TIE_MARGIN, Z_95, TrueSkillSettings, mean_ci95, pass_at_ks

# The paper's / trainer's TrueSkill constants but tau: leaderboard agents are fixed (see the module docstring).
TRUESKILL = TrueSkillSettings(tau=0.0)
CONSERVATIVE_SIGMAS = 3


@dataclass(frozen=True)
class EpisodeScore:
    """The part of a stored episode the ratings use."""

    agent: str  # agent content hash
    env_key: str
    seed: int
    sample: int
    reward: float


@dataclass(frozen=True)
class Rating:
    mu: float
    sigma: float
    matches: int = 0  # tasks this agent shared with at least one other agent

    @property
    def conservative(self) -> float:
        return self.mu - CONSERVATIVE_SIGMAS * self.sigma


@dataclass(frozen=True)
class EnvScore:
    mean: float
    ci95: float  # half-width
    episodes: int
    tasks: int
    pass_at_k: dict[int, float] = field(default_factory=dict)

    @property
    def stderr(self) -> float:
        return self.ci95 / Z_95


@dataclass(frozen=True)
class Standing:
    """One leaderboard row: an agent's rating and scores (overall, or for one env)."""

    rank: int
    agent: str
    rating: Rating
    score: EnvScore
    per_env: dict[str, EnvScore]
    per_env_rating: dict[str, Rating]


# ---- scores --------------------------------------------------------------------------------------------
def mean_ci(rewards: Sequence[float]) -> tuple[float, float]:
    """(mean, 95 % half-width): `espl eval`'s own statistic, so the leaderboard and `espl eval --env` agree."""
    if not rewards:
        raise ValueError("mean_ci: no rewards")
    return mean_ci95(rewards)


def env_score(episodes: Sequence[EpisodeScore]) -> EnvScore:
    """Mean ± CI and pass@k of one agent on one env config."""
    mean, ci = mean_ci([e.reward for e in episodes])
    by_task: dict[int, list[float]] = defaultdict(list)
    for e in episodes:
        by_task[e.seed].append(e.reward)
    passes = pass_at_ks(by_task, SUCCESS_REWARD)
    return EnvScore(mean=mean, ci95=ci, episodes=len(episodes), tasks=len(by_task), pass_at_k=passes)


def overall_score(per_env: dict[str, EnvScore]) -> EnvScore:
    """Macro average over envs: each env counts once; CI from the per-env standard errors."""
    scores = list(per_env.values())
    m = len(scores)
    mean = math.fsum(s.mean for s in scores) / m
    se = math.sqrt(math.fsum(s.stderr ** 2 for s in scores)) / m
    passes = {1: math.fsum(s.pass_at_k.get(1, 0.0) for s in scores) / m} if all(1 in s.pass_at_k for s in scores) else {}
    return EnvScore(mean=mean, ci95=Z_95 * se, episodes=sum(s.episodes for s in scores),
                    tasks=sum(s.tasks for s in scores), pass_at_k=passes)


# ---- TrueSkill -----------------------------------------------------------------------------------------
def rank_by_reward(rewards: Sequence[float], margin: float = TIE_MARGIN) -> list[int]:
    """Ranks (0 = best) for rewards, higher is better; a reward within `margin` of the one ranked just above
    it shares that rank (draws), as the trainer ranks prompts."""
    order = sorted(range(len(rewards)), key=lambda i: -rewards[i])
    ranks = [0] * len(rewards)
    for pos, i in enumerate(order):
        if pos and rewards[order[pos - 1]] - rewards[i] <= margin:
            ranks[i] = ranks[order[pos - 1]]
        else:
            ranks[i] = pos
    return ranks


def task_matches(episodes: Iterable[EpisodeScore]) -> list[tuple[tuple[str, int], dict[str, float]]]:
    """Per task (env_key, seed), in sorted order, each agent's mean reward over its samples; only tasks that
    two or more agents ran are matches."""
    sums: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for e in episodes:
        sums[(e.env_key, e.seed)][e.agent].append(e.reward)
    return [
        (task, {a: math.fsum(v) / len(v) for a, v in sorted(by_agent.items())})
        for task, by_agent in sorted(sums.items())
        if len(by_agent) >= 2
    ]


def pair_order(task: tuple[str, int], pair: tuple[str, str]) -> str:
    """Sort key of a task's 1v1 games: a hash, so the order is fixed but favours no agent name."""
    return hashlib.sha256(f"{task[0]}/{task[1]}/{pair[0]}/{pair[1]}".encode()).hexdigest()


def rate_1v1(env: trueskill.TrueSkill, a: trueskill.Rating, b: trueskill.Rating, ranks: Sequence[int]
             ) -> tuple[trueskill.Rating, trueskill.Rating]:
    """One 1v1 game, the same update as `env.rate([(a,), (b,)], ranks)` in closed form.

    For two one-player teams TrueSkill's factor graph has no loop, and its update is the closed form of
    Herbrich et al. 2007 (eqs. for v and w, which `trueskill` exposes as `v_win/w_win/v_draw/w_draw`).
    ~20x faster than building the graph per game (a board of 10 agents on 1,000 tasks is 90,000 games).
    """
    if ranks[0] > ranks[1]:
        lose, win = rate_1v1(env, b, a, (0, 1))
        return win, lose
    var_a, var_b = a.sigma ** 2 + env.tau ** 2, b.sigma ** 2 + env.tau ** 2
    c = math.sqrt(2 * env.beta ** 2 + var_a + var_b)
    t = (a.mu - b.mu) / c
    margin = trueskill.calc_draw_margin(env.draw_probability, 2, env) / c
    if ranks[0] == ranks[1]:
        v, w = env.v_draw(t, margin), env.w_draw(t, margin)
    else:
        v, w = env.v_win(t, margin), env.w_win(t, margin)
    return (env.create_rating(a.mu + var_a / c * v, math.sqrt(var_a * (1 - var_a / c ** 2 * w))),
            env.create_rating(b.mu - var_b / c * v, math.sqrt(var_b * (1 - var_b / c ** 2 * w))))


def trueskill_ratings(episodes: Iterable[EpisodeScore], agents: Iterable[str] = ()) -> dict[str, Rating]:
    """TrueSkill after every pair of agents that shares a task played it as a 1v1 game, in a fixed order."""
    env = TRUESKILL.env()
    episodes = list(episodes)
    ratings = {a: env.create_rating() for a in sorted(set(agents) | {e.agent for e in episodes})}
    played: dict[str, int] = defaultdict(int)
    for task, scores in task_matches(episodes):
        for a, b in sorted(combinations(sorted(scores), 2), key=lambda pair: pair_order(task, pair)):
            ranks = rank_by_reward([scores[a], scores[b]])
            try:
                ratings[a], ratings[b] = rate_1v1(env, ratings[a], ratings[b], ranks)
            except FloatingPointError:
                # the float update gives up on very lopsided games; trueskill's mpmath backend (mpmath is a
                # sympy dependency, installed with math-verify) computes it at high precision
                mp = TRUESKILL.env(backend="mpmath")
                (ra,), (rb,) = mp.rate([(ratings[a],), (ratings[b],)], ranks=ranks)
                ratings[a], ratings[b] = env.create_rating(float(ra.mu), float(ra.sigma)), \
                    env.create_rating(float(rb.mu), float(rb.sigma))
        for a in scores:
            played[a] += 1
    return {a: Rating(mu=float(r.mu), sigma=float(r.sigma), matches=played[a]) for a, r in ratings.items()}


# ---- the table -----------------------------------------------------------------------------------------
def standings(episodes: Sequence[EpisodeScore], env_key: str | None = None) -> list[Standing]:
    """Leaderboard rows, best first: overall, or for one env config when `env_key` is given.

    Order: conservative rating (μ - 3σ), then mean score, then agent hash, so it is total and stable.
    """
    if env_key is not None:
        episodes = [e for e in episodes if e.env_key == env_key]
    by_agent_env: dict[str, dict[str, list[EpisodeScore]]] = defaultdict(lambda: defaultdict(list))
    for e in episodes:
        by_agent_env[e.agent][e.env_key].append(e)
    env_keys = sorted({e.env_key for e in episodes})
    per_env_ratings = {k: trueskill_ratings([e for e in episodes if e.env_key == k]) for k in env_keys}
    overall = per_env_ratings[env_key] if env_key is not None else trueskill_ratings(episodes)

    rows = []
    for agent, envs in by_agent_env.items():
        per_env = {k: env_score(v) for k, v in sorted(envs.items())}
        rows.append((agent, overall[agent], overall_score(per_env), per_env,
                     {k: per_env_ratings[k][agent] for k in per_env}))
    rows.sort(key=lambda r: (-r[1].conservative, -r[2].mean, r[0]))
    return [Standing(rank=i + 1, agent=a, rating=rt, score=sc, per_env=pe, per_env_rating=pr)
            for i, (a, rt, sc, pe, pr) in enumerate(rows)]
