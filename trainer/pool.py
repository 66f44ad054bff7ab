"""The prompt pool of E-SPL: system prompts (ordered principle lists) with TrueSkill ratings and lineage.

ESPL_SPEC.md, "Objects" and steps 2, 5, 6e, 7, 8:
- a prompt is an ordered list of principles, rendered `[G0]. ...` one per line; the root prompt is empty;
- the pool is FIFO (`max_pool_size`, reference 100); every prompt keeps its rating (μ, σ), its parents,
  the operation that made it, its birth step and its score history;
- `select_prompts` picks M of the K newest (the newest always included) by one of four strategies;
- `rate_match` plays one free-for-all TrueSkill match (the `trueskill` package) ranked by score;
- `mutation_rating` / `crossover_rating` give a child's starting rating.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal, Sequence

from espl.agents.stats import TrueSkillSettings  # the one definition of the TrueSkill constants

Operation = Literal["root", "mutation", "crossover", "fixed"]
Selection = Literal["uniform", "ucb", "lucb", "softmax"]
Placement = Literal["system", "user"]


@dataclass
class PromptRecord:
    """One system prompt in the pool. Mutable only in its rating and score history."""

    id: int
    principles: tuple[str, ...]
    mu: float
    sigma: float
    parents: tuple[int, ...] = ()
    op: Operation = "root"
    birth_step: int = -1
    scores: list[tuple[int, float]] = field(default_factory=list)  # (step, mean reward that step)
    rating_history: list[tuple[int, float, float]] = field(default_factory=list)  # (step, mu, sigma)

    @property
    def explore(self) -> float:
        """Upper confidence score μ + 2σ (reference `get_rating("explore")`)."""
        return self.mu + 2.0 * self.sigma

    @property
    def exploit(self) -> float:
        """Conservative score μ − 2σ (reference `get_rating("exploit")`)."""
        return self.mu - 2.0 * self.sigma

    def to_dict(self) -> dict:
        data = asdict(self)
        data["principles"] = list(self.principles)
        data["parents"] = list(self.parents)
        data["scores"] = [list(s) for s in self.scores]
        data["rating_history"] = [list(r) for r in self.rating_history]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "PromptRecord":
        return cls(
            id=int(data["id"]),
            principles=tuple(data["principles"]),
            mu=float(data["mu"]),
            sigma=float(data["sigma"]),
            parents=tuple(int(p) for p in data.get("parents", ())),
            op=data.get("op", "root"),
            birth_step=int(data.get("birth_step", -1)),
            scores=[(int(s), float(v)) for s, v in data.get("scores", [])],
            rating_history=[(int(s), float(m), float(g)) for s, m, g in data.get("rating_history", [])],
        )


def render_principles(principles: Sequence[str]) -> str | None:
    """The system prompt text for a principle list: `[G0]. rule` per line (reference format); None if empty."""
    if not principles:
        return None
    return "\n".join(f"[G{i}]. {p}" for i, p in enumerate(principles))


def prompt_text(principles: Sequence[str], placement: Placement) -> str | None:
    """The text the env gets as `options["system_prompt"]`: the rendered principles for either placement.
    With "user" the env wraps them in the reference's user turn (problem first; envs/core.py
    `USER_PLACEMENT_TEMPLATE`), so the trainer passes the principles alone. (espl-gym before issue 16 put a
    header and the principles above the problem here; runs made then rendered that older text.)"""
    del placement  # the env owns how principles and the problem are combined
    return render_principles(principles)


class PromptPool:
    """FIFO population of prompts (ESPL_SPEC step 8). Ids grow monotonically and are never reused."""

    def __init__(self, max_size: int = 100, records: Sequence[PromptRecord] = (), next_id: int = 0):
        if max_size < 1:
            raise ValueError(f"max_pool_size: must be >= 1, got {max_size}")
        self.max_size = max_size
        self.records: list[PromptRecord] = list(records)
        self.next_id = next_id
        self.evicted: list[PromptRecord] = []  # kept so pool.json still shows every prompt ever made

    def __len__(self) -> int:
        return len(self.records)

    def add(
        self,
        principles: Sequence[str],
        mu: float,
        sigma: float,
        parents: Sequence[int] = (),
        op: Operation = "root",
        birth_step: int = -1,
    ) -> PromptRecord:
        record = PromptRecord(self.next_id, tuple(principles), mu, sigma, tuple(parents), op, birth_step)
        record.rating_history.append((birth_step, mu, sigma))
        self.next_id += 1
        self.records.append(record)
        while len(self.records) > self.max_size:
            self.evicted.append(self.records.pop(0))
        return record

    def get(self, prompt_id: int) -> PromptRecord:
        for record in self.records:
            if record.id == prompt_id:
                return record
        raise KeyError(f"prompt {prompt_id} is not in the pool")

    @property
    def newest(self) -> PromptRecord:
        return self.records[-1]

    def best(self, key: Literal["mu", "exploit", "explore"] = "exploit") -> PromptRecord:
        """The best-rated prompt; ties go to the newer one."""
        return max(reversed(self.records), key=lambda r: getattr(r, key))

    def ranked(self, key: Literal["mu", "exploit", "explore"] = "exploit", top: int | None = None) -> list[PromptRecord]:
        """The live prompts, best first by `key` (ties: the newer first); `espl prompts` shows these."""
        return sorted(reversed(self.records), key=lambda r: getattr(r, key), reverse=True)[:top]

    def lineage(self, record: PromptRecord) -> list[PromptRecord]:
        """`record`'s ancestors by first parent, nearest first (evicted ones included, as pool.json keeps
        them); stops at the root or at a parent no longer recorded."""
        everyone = {r.id: r for r in [*self.evicted, *self.records]}
        chain: list[PromptRecord] = []
        cur, seen = record, {record.id}
        while cur.parents and cur.parents[0] in everyone and cur.parents[0] not in seen:
            cur = everyone[cur.parents[0]]
            seen.add(cur.id)
            chain.append(cur)
        return chain

    def to_dict(self) -> dict:
        return {
            "max_size": self.max_size,
            "next_id": self.next_id,
            "prompts": [r.to_dict() for r in self.records],
            "evicted": [r.to_dict() for r in self.evicted],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "PromptPool":
        pool = cls(
            max_size=int(data["max_size"]),
            records=[PromptRecord.from_dict(r) for r in data["prompts"]],
            next_id=int(data["next_id"]),
        )
        pool.evicted = [PromptRecord.from_dict(r) for r in data.get("evicted", [])]
        return pool


# ---- step 2: selection ------------------------------------------------------------------------------------
# Each strategy takes the K newest records (oldest first), M and an RNG, and returns M records (repeats
# allowed only when there are fewer candidates than M). The newest is always included (for M > 1 in
# ucb/softmax, as in the reference, where the top pick is never displaced when M == 1).


def _pad(selected: list[PromptRecord], candidates: list[PromptRecord], m: int) -> list[PromptRecord]:
    while len(selected) < m:
        selected.append(candidates[-1])  # reference: repeat the newest when the pool is small
    return selected


def _select_uniform(candidates: list[PromptRecord], m: int, rng: random.Random) -> list[PromptRecord]:
    newest, rest = candidates[-1], candidates[:-1]
    if len(candidates) <= m:
        return _pad(list(reversed(candidates)), candidates, m)
    return [newest] + rng.sample(rest, m - 1)


def _select_ucb(candidates: list[PromptRecord], m: int, rng: random.Random) -> list[PromptRecord]:
    ranked = sorted(candidates, key=lambda r: r.explore, reverse=True)[:m]
    newest = candidates[-1]
    if m > 1 and newest not in ranked:
        ranked[-1] = newest
    return _pad(ranked, candidates, m)


def _select_lucb(candidates: list[PromptRecord], m: int, rng: random.Random) -> list[PromptRecord]:
    champion = max(candidates, key=lambda r: r.exploit)  # max keeps the first (older) on ties, as sort does
    challengers = sorted((r for r in candidates if r is not champion), key=lambda r: r.explore, reverse=True)
    challengers = challengers[: m - 1]
    newest = candidates[-1]
    if newest is not champion and newest not in challengers and m > 1:
        if len(challengers) >= m - 1:
            challengers[-1] = newest
        else:
            challengers.append(newest)
    return _pad([champion] + challengers, candidates, m)


def _select_softmax(candidates: list[PromptRecord], m: int, rng: random.Random) -> list[PromptRecord]:
    scores = [r.explore for r in candidates]
    temperature = max(max(scores), 1.0)  # reference: temperature = max explore score, floored at 1
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    pool = list(range(len(candidates)))
    selected: list[PromptRecord] = []
    for _ in range(min(m, len(candidates))):  # sampling without replacement, proportional to weight
        total = sum(weights[i] for i in pool)
        x, acc = rng.random() * total, 0.0
        for i in pool:
            acc += weights[i]
            if x <= acc:
                break
        pool.remove(i)
        selected.append(candidates[i])
    newest = candidates[-1]
    if m > 1 and newest not in selected:
        selected[-1] = newest
    return _pad(selected, candidates, m)


SELECTION: dict[str, Callable[[list[PromptRecord], int, random.Random], list[PromptRecord]]] = {
    "uniform": _select_uniform,
    "ucb": _select_ucb,
    "lucb": _select_lucb,
    "softmax": _select_softmax,
}


def select_prompts(pool: PromptPool, m: int, k: int, strategy: Selection, rng: random.Random) -> list[PromptRecord]:
    """M prompts from the K newest of the pool (ESPL_SPEC step 2)."""
    if strategy not in SELECTION:
        raise ValueError(f"selection: must be one of {sorted(SELECTION)}, got {strategy!r}")
    if m < 1 or k < 1:
        raise ValueError(f"prompts_per_step and choose_from_newest must be >= 1, got {m}, {k}")
    if not pool.records:
        raise ValueError("the prompt pool is empty")
    return SELECTION[strategy](pool.records[-k:], m, rng)


# ---- step 5: one free-for-all TrueSkill match ----------------------------------------------------------


def scores_to_ranks(scores: Sequence[float], tolerance: float) -> list[int]:
    """Ranks (0 = best) for scores sorted best first; a score within `tolerance` of the previous one ties
    with it (reference `scores_to_ties`: the comparison chains along the sorted list)."""
    ranks, rank = [], 0
    for i, score in enumerate(scores):
        if i > 0 and scores[i - 1] - score > tolerance:
            rank += 1
        ranks.append(rank)
    return ranks


def rate_match(
    players: Sequence[PromptRecord], scores: Sequence[float], settings: TrueSkillSettings, tolerance: float, step: int
) -> list[PromptRecord]:
    """Update the ratings of the distinct `players` from their `scores` (one score per player, same order).

    Returns the distinct players ranked best first (ties keep selection order). A single distinct player
    plays no match. Each player's score is appended to its history.
    """
    seen: dict[int, tuple[PromptRecord, float]] = {}
    for player, score in zip(players, scores):
        seen.setdefault(player.id, (player, float(score)))
    for player, score in seen.values():
        player.scores.append((step, score))
    ranked = sorted(seen.values(), key=lambda ps: ps[1], reverse=True)  # stable: ties keep selection order
    if len(ranked) >= 2:
        env = settings.env()
        ranks = scores_to_ranks([s for _, s in ranked], tolerance)
        groups = [(env.create_rating(p.mu, p.sigma),) for p, _ in ranked]
        for (player, _), (new,) in zip(ranked, env.rate(groups, ranks=ranks)):
            player.mu, player.sigma = float(new.mu), float(new.sigma)
            player.rating_history.append((step, player.mu, player.sigma))
    return [p for p, _ in ranked]


# ---- steps 6e and 7: a child's starting rating -----------------------------------------------------------


def mutation_rating(parent: PromptRecord, mutation_sigma: float) -> tuple[float, float]:
    """Child of a mutation: the parent's μ, σ' = sqrt(σ² + mutation_sigma²) (reference default 1)."""
    return parent.mu, math.sqrt(parent.sigma**2 + mutation_sigma**2)


def crossover_rating(parents: Sequence[PromptRecord], crossover_sigma: float) -> tuple[float, float]:
    """Child of a crossover: precision-weighted μ of the parents, σ' = sqrt(1 / Σ precision + crossover_sigma²)."""
    precisions = [1.0 / p.sigma**2 for p in parents]
    total = sum(precisions)
    mu = sum(w * p.mu for w, p in zip(precisions, parents)) / total
    return mu, math.sqrt(1.0 / total + crossover_sigma**2)
