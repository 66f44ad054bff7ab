"""How well leaderboard ratings order agents of known skill, and how long they take.

    python benchmarks/leaderboard_ratings.py [--boards 24] [--tasks 300]

Seeded simulated boards: 5 agents with success rates 0.20, 0.25, ..., 0.40 on pass/fail tasks. For each
rating method it counts pairs of agents ranked against their true order (lower is better), once with
agent names sorted like their skill and once against it: a method that depends on names shows different
counts. Methods: raw means; the leaderboard's 1v1 games (τ = 0, hashed pair order); the same with the
trainer's τ = 25/300; and one free-for-all match per task (what `trueskill.rate` does with all agents of a
task at once) at two draw settings. Then the time of `standings` for 10 agents × 1,000 tasks.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from unittest import mock

import trueskill

from espl.leaderboard import ratings as R


def free_for_all(eps: list[R.EpisodeScore], draw_probability: float) -> dict[str, float]:
    env = dataclasses.replace(R.TRUESKILL, draw_probability=draw_probability).env()
    ratings = {a: env.create_rating() for a in sorted({e.agent for e in eps})}
    for _task, scores in R.task_matches(eps):
        names = sorted(scores)
        new = env.rate([(ratings[n],) for n in names], ranks=R.rank_by_reward([scores[n] for n in names]))
        for n, (r,) in zip(names, new):
            ratings[n] = r
    return {a: r.mu for a, r in ratings.items()}


def one_on_one(eps: list[R.EpisodeScore], tau: float) -> dict[str, float]:
    with mock.patch.object(R, "TRUESKILL", dataclasses.replace(R.TRUESKILL, tau=tau)):
        return {a: r.mu for a, r in R.trueskill_ratings(eps).items()}


def means(eps: list[R.EpisodeScore]) -> dict[str, float]:
    out: dict[str, float] = {}
    for e in eps:
        out[e.agent] = out.get(e.agent, 0.0) + e.reward
    return out


METHODS = {
    "raw means": means,
    "1v1, tau 0 (leaderboard)": lambda eps: one_on_one(eps, 0.0),
    "1v1, tau 25/300 (trainer)": lambda eps: one_on_one(eps, 25 / 300),
    "free-for-all, draw 0.10": lambda eps: free_for_all(eps, 0.10),
    "free-for-all, draw 0.58 (observed)": lambda eps: free_for_all(eps, 0.58),
}


def misordered(method, boards: int, tasks: int, reverse_names: bool) -> int:
    bad = 0
    for board in range(boards):
        rng = random.Random(100 + board)
        skill = {(f"z{4 - i}" if reverse_names else f"a{i}"): i for i in range(5)}
        eps = [R.EpisodeScore(n, "env", s, 0, float(rng.random() < 0.2 + 0.05 * i))
               for n, i in skill.items() for s in range(tasks)]
        score = method(eps)
        order = sorted(skill, key=lambda n: -score[n])
        bad += sum(skill[order[i]] < skill[order[j]] for i in range(5) for j in range(i + 1, 5))
    return bad


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boards", type=int, default=24)
    ap.add_argument("--tasks", type=int, default=300)
    args = ap.parse_args()
    print(f"misordered pairs over {args.boards} boards x {args.tasks} tasks (5 agents, 10 pairs a board)")
    print(f"{'method':38s} {'names like skill':>16s} {'names against':>14s}")
    for name, method in METHODS.items():
        fwd = misordered(method, args.boards, args.tasks, False)
        rev = misordered(method, args.boards, args.tasks, True)
        print(f"{name:38s} {fwd:16d} {rev:14d}")
    rng = random.Random(0)
    eps = [R.EpisodeScore(f"a{a}", env, s, 0, float(rng.random() < 0.1 * a))
           for a in range(10) for env in ("m", "t") for s in range(500)]
    t0 = time.perf_counter()
    R.standings(eps)
    print(f"standings, 10 agents x 1000 tasks (2 envs): {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
