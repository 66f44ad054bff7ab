"""Pool, selection, TrueSkill match, child ratings, advantages, skipping and the three losses, with values
computed by hand (or, for TrueSkill, by calling the `trueskill` package directly)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import trueskill

from espl.trainer.loss import LOSSES, LossSettings, advantages, kept_groups, skip_ratio
from espl.trainer.pool import (
    PromptPool,
    TrueSkillSettings,
    crossover_rating,
    mutation_rating,
    prompt_text,
    rate_match,
    render_principles,
    scores_to_ranks,
    select_prompts,
)


def make_pool(n: int, max_size: int = 100) -> PromptPool:
    pool = PromptPool(max_size)
    for i in range(n):
        pool.add([f"rule {i}"] if i else [], 25.0, 25.0 / 3, parents=[i - 1] if i else [], op="mutation" if i else "root", birth_step=i - 1)
    return pool


# ---- pool ----


def test_fifo_evicts_oldest_and_ids_are_never_reused():
    pool = make_pool(5, max_size=3)
    assert [r.id for r in pool.records] == [2, 3, 4]
    assert [r.id for r in pool.evicted] == [0, 1]
    assert pool.add(["x"], 1, 1).id == 5
    restored = PromptPool.from_dict(pool.to_dict())
    assert restored.to_dict() == pool.to_dict()


def test_render_principles_reference_format():
    assert render_principles([]) is None
    assert render_principles(["a", "b"]) == "[G0]. a\n[G1]. b"
    assert prompt_text(["a"], "user") == "[G0]. a"  # the env wraps it in the reference's user turn
    assert prompt_text(["a"], "system") == "[G0]. a"


# ---- selection ----


@pytest.mark.parametrize("strategy", ["uniform", "ucb", "lucb", "softmax"])
def test_selection_includes_newest_and_stays_in_k_newest(strategy):
    pool = make_pool(12)
    for r in pool.records:  # give the oldest the best ratings so ucb/lucb would prefer them
        r.mu = 40.0 - r.id
    for seed in range(20):
        chosen = select_prompts(pool, 3, 5, strategy, random.Random(seed))
        ids = [r.id for r in chosen]
        assert len(ids) == 3
        assert 11 in ids  # the newest
        assert all(7 <= i <= 11 for i in ids)  # the 5 newest
        assert len(set(ids)) == 3


@pytest.mark.parametrize("strategy", ["uniform", "ucb", "lucb", "softmax"])
def test_selection_repeats_newest_when_pool_is_small(strategy):
    pool = make_pool(1)
    assert [r.id for r in select_prompts(pool, 3, 5, strategy, random.Random(0))] == [0, 0, 0]
    pool = make_pool(2)
    ids = [r.id for r in select_prompts(pool, 3, 5, strategy, random.Random(0))]
    assert sorted(set(ids)) == [0, 1] and ids.count(1) >= 1 and len(ids) == 3


def test_ucb_and_lucb_pick_by_bounds():
    pool = make_pool(5)
    # explore = mu + 2 sigma, exploit = mu - 2 sigma
    settings = {0: (30, 1), 1: (20, 8), 2: (28, 0.5), 3: (10, 1), 4: (5, 1)}
    for r in pool.records:
        r.mu, r.sigma = settings[r.id]
    ucb = [r.id for r in select_prompts(pool, 2, 5, "ucb", random.Random(0))]
    assert ucb == [1, 4]  # explore: 1 -> 36, 0 -> 32; the last slot goes to the newest (4)
    lucb = [r.id for r in select_prompts(pool, 3, 5, "lucb", random.Random(0))]
    assert lucb == [0, 1, 4]  # champion by exploit (0: 28), challengers by explore (1: 36, then 2: 29 -> newest)


def test_unknown_strategy_is_a_clear_error():
    with pytest.raises(ValueError, match="selection"):
        select_prompts(make_pool(2), 2, 5, "greedy", random.Random(0))


# ---- TrueSkill ----


def test_ranks_chain_ties_within_tolerance():
    assert scores_to_ranks([0.5, 0.495, 0.3, 0.3], 0.01) == [0, 0, 1, 1]
    assert scores_to_ranks([0.9, 0.5, 0.1], 0.01) == [0, 1, 2]


def test_rate_match_equals_direct_trueskill():
    pool = make_pool(3)
    pool.records[1].mu, pool.records[1].sigma = 27.0, 5.0
    players = list(pool.records)
    scores = [0.25, 0.75, 0.25]  # player 1 wins, 0 and 2 tie
    settings = TrueSkillSettings()
    env = trueskill.TrueSkill(mu=25, sigma=25 / 3, beta=25 / 6, tau=25 / 300, draw_probability=0.10)
    expected = env.rate([(env.create_rating(27.0, 5.0),), (env.create_rating(25, 25 / 3),), (env.create_rating(25, 25 / 3),)], ranks=[0, 1, 1])
    ranked = rate_match(players, scores, settings, 0.01, step=3)
    assert [r.id for r in ranked] == [1, 0, 2]
    for rec, (exp,) in zip(ranked, expected):
        assert rec.mu == pytest.approx(exp.mu, abs=1e-12) and rec.sigma == pytest.approx(exp.sigma, abs=1e-12)
    assert pool.records[1].scores == [(3, 0.75)]
    assert pool.records[1].rating_history[-1] == (3, pool.records[1].mu, pool.records[1].sigma)


def test_single_distinct_player_plays_no_match():
    pool = make_pool(1)
    r = pool.records[0]
    rate_match([r, r], [1.0, 0.0], TrueSkillSettings(), 0.01, 0)
    assert (r.mu, r.sigma) == (25.0, 25.0 / 3)


def test_child_ratings():
    pool = make_pool(2)
    a, b = pool.records
    a.mu, a.sigma = 30.0, 3.0
    b.mu, b.sigma = 20.0, 4.0
    assert mutation_rating(a, 1.0) == (30.0, math.sqrt(9 + 1))
    # precisions 1/9 and 1/16: mu = (30/9 + 20/16) / (1/9 + 1/16) = 26.4; sigma = sqrt(1 / (25/144) + 1)
    mu, sigma = crossover_rating([a, b], 1.0)
    assert mu == pytest.approx(26.4)
    assert sigma == pytest.approx(math.sqrt(144 / 25 + 1))


# ---- advantages and skipping ----

REWARDS = np.array([[[1, 0], [1, 1]], [[0, 0], [1, 0]]], dtype=float)  # [M=2, B=2, N=2]


def test_group_baseline_and_skipping():
    adv = advantages(REWARDS, "group")
    assert adv.tolist() == [[[0.5, -0.5], [0, 0]], [[0, 0], [0.5, -0.5]]]
    keep = kept_groups(REWARDS, "group")
    assert keep.tolist() == [[True, False], [False, True]]
    assert skip_ratio(keep) == 0.5


def test_equal_fractional_rewards_are_skipped():
    """Issue 13.10: three rewards of 0.1 have mean 0.10000000000000002; their advantages are ~-1.4e-17, not 0,
    so comparing advantages to 0.0 kept (and trained on) a group that carries no signal."""
    rewards = np.array([[[0.1, 0.1, 0.1], [0.1, 0.7, 0.3]]])
    adv = advantages(rewards, "group")
    assert not np.all(adv[0, 0] == 0.0)  # the old test, on advantages, would keep it
    assert kept_groups(rewards, "group").tolist() == [[False, True]]
    # marginalize: a group at its problem's mean carries nothing; a uniform group off the mean does
    two = np.array([[[0.3, 0.3]], [[0.3, 0.3]]])
    assert kept_groups(two, "marginalize").tolist() == [[False], [False]]
    off = np.array([[[0.5, 0.5]], [[0.0, 1.0]]])
    assert kept_groups(off, "marginalize").tolist() == [[False], [True]]


def test_marginalized_baseline():
    adv = advantages(REWARDS, "marginalize")
    # problem 0: mean over both prompts and rollouts = 1/4; problem 1: 3/4
    assert adv.tolist() == [[[0.75, -0.25], [0.25, 0.25]], [[-0.25, -0.25], [0.25, -0.75]]]
    assert kept_groups(REWARDS, "marginalize").all()


def test_bad_baseline_and_shape():
    with pytest.raises(ValueError, match="baseline"):
        advantages(REWARDS, "std")
    with pytest.raises(ValueError, match="shape"):
        advantages(np.zeros((2, 2)), "group")


# ---- losses ----


def _tokens(lp, old, adv, mask):
    return (torch.tensor(lp, requires_grad=True), torch.tensor(old), torch.tensor(adv), torch.tensor(mask))


def test_reinforce_is():
    lp, old, adv, mask = _tokens([math.log(0.5), math.log(0.25), 0.0], [math.log(0.25)] * 3, [1.0, -1.0, 5.0], [1.0, 1.0, 0.0])
    loss = LOSSES["reinforce_is"](lp, old, adv, mask, LossSettings())
    assert float(loss.detach()) == pytest.approx(-(2 * 1 + 1 * -1))  # ratios 2 and 1; the masked token adds nothing
    loss.backward()
    assert lp.grad.tolist() == pytest.approx([-2.0, 1.0, 0.0])  # d/dlp of -ratio*A = -ratio*A


def test_ppo_clip():
    lp, old, adv, mask = _tokens([math.log(0.5), math.log(0.5), math.log(0.25)], [math.log(0.25)] * 3, [1.0, -1.0, -1.0], [1.0, 1.0, 1.0])
    loss = LOSSES["ppo_clip"](lp, old, adv, mask, LossSettings(ppo_clip_eps=0.2))
    # token 0: ratio 2, A=1 -> min(2, 1.2) = 1.2 (clipped, no gradient); token 1: ratio 2, A=-1 -> min(-2, -1.2) = -2;
    # token 2: ratio 1, A=-1 -> -1
    assert float(loss.detach()) == pytest.approx(-(1.2 - 2 - 1))
    loss.backward()
    assert lp.grad.tolist() == pytest.approx([0.0, 2.0, 1.0])


def test_cispo():
    lp, old, adv, mask = _tokens([math.log(0.5), 0.0, math.log(0.25)], [math.log(0.25), math.log(0.2), math.log(0.25)], [1.0, 1.0, -1.0], [1.0, 1.0, 1.0])
    loss = LOSSES["cispo"](lp, old, adv, mask, LossSettings())
    # weights: ratio 2 -> 2; ratio 5 -> clipped to 4; ratio 1 -> 1 (all without gradient)
    expected = -(2 * 1 * math.log(0.5) + 4 * 1 * 0.0 + 1 * -1 * math.log(0.25))
    assert float(loss.detach()) == pytest.approx(expected)
    loss.backward()
    assert lp.grad.tolist() == pytest.approx([-2.0, -4.0, 1.0])
