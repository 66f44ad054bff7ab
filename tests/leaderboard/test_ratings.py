"""Rating math on hand-built episode scores (test data), checked against hand-computed values and against
direct `trueskill` calls."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from espl.agents.stats import pass_at_k
from espl.agents.stats import report_ks as ks_for
from espl.leaderboard.ratings import (
    TRUESKILL, EpisodeScore, env_score, mean_ci, overall_score, pair_order, rate_1v1, rank_by_reward, standings,
    task_matches, trueskill_ratings,
)


def ep(agent, seed, reward, env="espl/Math-v0", sample=0):
    return EpisodeScore(agent=agent, env_key=env, seed=seed, sample=sample, reward=reward)


def test_mean_ci_hand_computed():
    mean, ci = mean_ci([1, 0, 1, 0])
    # s = sqrt(1/3), se = s / 2, 95 % half-width = 1.96 * se
    assert mean == 0.5 and ci == pytest.approx(1.959964 * math.sqrt(1 / 3) / 2, rel=1e-6)
    assert mean_ci([0.25]) == (0.25, 0.0)
    assert mean_ci([1.0] * 5) == (1.0, 0.0)
    with pytest.raises(ValueError):
        mean_ci([])


@pytest.mark.parametrize("n,c,k,expected", [
    (1, 1, 1, 1.0), (1, 0, 1, 0.0), (2, 1, 1, 0.5), (2, 1, 2, 1.0),
    (4, 1, 2, 0.5),            # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (5, 2, 3, 0.9),            # 1 - C(3,3)/C(5,3) = 1 - 1/10
    (10, 0, 5, 0.0), (10, 10, 1, 1.0),
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(2, 1, 3)


def test_ks_reported():
    assert ks_for([1, 1]) == [1]
    assert ks_for([8, 8]) == [1, 2, 4, 8]
    assert ks_for([6, 5]) == [1, 2, 4, 5]


def test_env_score_pass_at_k_over_tasks():
    # task 0: 1 of 2 samples solved; task 1: 0 of 2; task 2: 2 of 2 (partial credit 0.5 is not a success)
    eps = [ep("a", 0, 1.0, sample=0), ep("a", 0, 0.0, sample=1), ep("a", 1, 0.5, sample=0),
           ep("a", 1, 0.0, sample=1), ep("a", 2, 1.0, sample=0), ep("a", 2, 1.0, sample=1)]
    s = env_score(eps)
    assert (s.episodes, s.tasks) == (6, 3)
    assert s.mean == pytest.approx(3.5 / 6)
    assert s.pass_at_k == {1: pytest.approx((0.5 + 0 + 1) / 3), 2: pytest.approx((1 + 0 + 1) / 3)}


def test_overall_is_macro_average():
    math_ = env_score([ep("a", s, r) for s, r in enumerate([1, 1, 0, 0])])
    tools = env_score([ep("a", s, 1.0, env="t") for s in range(20)])
    o = overall_score({"m": math_, "t": tools})
    assert o.mean == pytest.approx(0.75)  # (0.5 + 1.0) / 2, not 22/24
    assert o.ci95 == pytest.approx(math_.ci95 / 2)
    assert o.episodes == 24


def test_rank_by_reward_ties_within_margin():
    assert rank_by_reward([0.5, 1.0, 0.995, 0.0]) == [2, 0, 0, 3]
    assert rank_by_reward([0.0, 0.0, 0.0]) == [0, 0, 0]


def test_task_matches_average_samples_and_skip_solo_tasks():
    eps = [ep("a", 0, 1.0, sample=0), ep("a", 0, 0.0, sample=1), ep("b", 0, 1.0), ep("a", 1, 1.0)]
    assert task_matches(eps) == [(("espl/Math-v0", 0), {"a": 0.5, "b": 1.0})]


def test_trueskill_two_agents_equals_direct_computation():
    eps = [ep("a", 0, 1.0), ep("b", 0, 0.0),                    # a wins
           ep("a", 1, 0.0, sample=0), ep("a", 1, 1.0, sample=1), ep("b", 1, 1.0),  # b 1.0 beats a's mean 0.5
           ep("a", 2, 1.0), ep("b", 2, 0.995),                  # within 0.01: a draw
           ep("a", 3, 1.0)]                                     # b did not run seed 3: no game
    got = trueskill_ratings(reversed(eps))  # input order must not matter
    env = TRUESKILL.env()
    assert env.tau == 0.0  # leaderboard agents are fixed: no skill drift between games
    a = b = env.create_rating()
    for ranks in ([0, 1], [1, 0], [0, 0]):
        (a,), (b,) = env.rate([(a,), (b,)], ranks=ranks)
    for name, want in (("a", a), ("b", b)):
        assert got[name].mu == pytest.approx(want.mu) and got[name].sigma == pytest.approx(want.sigma)
    assert (got["a"].matches, got["b"].matches) == (3, 3)


def test_trueskill_three_agents_play_pairs_in_hashed_order():
    eps = [ep("a", 0, 1.0), ep("b", 0, 0.0), ep("c", 0, 0.0)]
    got = trueskill_ratings(eps)
    env = TRUESKILL.env()
    r = {n: env.create_rating() for n in "abc"}
    pairs = sorted([("a", "b"), ("a", "c"), ("b", "c")], key=lambda p: pair_order(("espl/Math-v0", 0), p))
    outcome = {("a", "b"): [0, 1], ("a", "c"): [0, 1], ("b", "c"): [0, 0]}
    for x, y in pairs:
        (r[x],), (r[y],) = env.rate([(r[x],), (r[y],)], ranks=outcome[(x, y)])
    for n in "abc":
        assert got[n].mu == pytest.approx(r[n].mu) and got[n].sigma == pytest.approx(r[n].sigma)
    assert got["a"].mu > max(got["b"].mu, got["c"].mu)


def _misordered(names_reversed: bool) -> tuple[int, int]:
    """Pairs ranked against the true order by TrueSkill and by raw means, over seeded simulated boards."""
    rating_bad = mean_bad = 0
    for trial in range(6):
        rng = random.Random(trial)
        skill = {(f"z{4 - i}" if names_reversed else f"a{i}"): i for i in range(5)}
        eps = [ep(n, s, float(rng.random() < 0.2 + 0.05 * i)) for n, i in skill.items() for s in range(150)]
        ratings = trueskill_ratings(eps)
        means = {n: sum(e.reward for e in eps if e.agent == n) for n in skill}
        for order, counter in ((sorted(skill, key=lambda n: -ratings[n].mu), "r"), (sorted(skill, key=lambda n: -means[n]), "m")):
            bad = sum(skill[order[i]] < skill[order[j]] for i in range(5) for j in range(i + 1, 5))
            if counter == "r":
                rating_bad += bad
            else:
                mean_bad += bad
    return rating_bad, mean_bad


def test_ratings_do_not_favour_agent_names():
    # trueskill's free-for-all chains tied players in input order: names sorted against skill were ranked
    # almost entirely backwards. 1v1 games in hashed order must order agents about as well as raw means,
    # whichever way the names sort.
    fwd, fwd_means = _misordered(False)
    rev, rev_means = _misordered(True)
    assert fwd_means == rev_means
    assert fwd <= fwd_means + 4 and rev <= rev_means + 4 and abs(fwd - rev) <= 4


def test_agent_without_opponent_keeps_prior():
    got = trueskill_ratings([ep("solo", 0, 1.0), ep("solo", 1, 1.0), ep("x", 5, 1.0)])
    assert got["solo"].mu == 25.0 and got["solo"].sigma == pytest.approx(25 / 3) and got["solo"].matches == 0


def test_standings_order_is_deterministic_and_sensible():
    rng = random.Random(0)
    skill = {"strong": 0.8, "mid": 0.5, "weak": 0.2}
    eps = [ep(a, s, float(rng.random() < p), env=env)
           for env in ("espl/Math-v0", "espl/Search-v0") for s in range(40) for a, p in skill.items()]
    rows = standings(eps)
    assert [r.agent for r in rows] == ["strong", "mid", "weak"]
    assert [r.rank for r in rows] == [1, 2, 3]
    shuffled = eps[:]
    rng.shuffle(shuffled)
    again = standings(shuffled)
    assert [(r.agent, r.rating.mu, r.rating.sigma) for r in again] == [(r.agent, r.rating.mu, r.rating.sigma) for r in rows]
    assert set(rows[0].per_env) == {"espl/Math-v0", "espl/Search-v0"}
    only_math = standings(eps, env_key="espl/Search-v0")
    assert set(only_math[0].per_env) == {"espl/Search-v0"}
    assert only_math[0].rating == only_math[0].per_env_rating["espl/Search-v0"]


def test_lopsided_history_does_not_crash():
    # hundreds of straight wins push ratings to where trueskill's float backend can give up
    eps = [ep(a, s, r) for s in range(600) for a, r in (("w", 1.0), ("l", 0.0))]
    got = trueskill_ratings(eps)
    assert got["w"].mu > got["l"].mu and all(math.isfinite(r.mu) for r in got.values())


def test_closed_form_1v1_equals_trueskill_rate():
    rng = random.Random(0)
    for tau in (0.0, 25 / 300):
        env = replace(TRUESKILL, tau=tau).env()
        checked = 0
        for _ in range(300):
            a = env.create_rating(rng.uniform(5, 45), rng.uniform(0.3, 9))
            b = env.create_rating(rng.uniform(5, 45), rng.uniform(0.3, 9))
            ranks = rng.choice([(0, 1), (1, 0), (0, 0)])
            try:
                (wa,), (wb,) = env.rate([(a,), (b,)], ranks=list(ranks))
            except FloatingPointError:  # trueskill's own float limits; ours falls back to mpmath there
                continue
            ga, gb = rate_1v1(env, a, b, ranks)
            for g, w in ((ga, wa), (gb, wb)):
                assert g.mu == pytest.approx(w.mu, abs=1e-9) and g.sigma == pytest.approx(w.sigma, abs=1e-9)
            checked += 1
        assert checked > 250


def test_one_home_for_the_statistics():
    """The leaderboard, `espl eval` and the trainer share agents/stats.py: the same pass@k, the same CI, and
    TrueSkill constants that differ only in tau (leaderboard agents do not drift)."""
    import importlib

    from espl.agents import stats
    from espl.leaderboard import ratings

    evaluate = importlib.import_module("espl.agents.evaluate")  # the package's `evaluate` is the function
    from espl.trainer.config import TrainConfig
    from espl.trainer.pool import TrueSkillSettings

    assert evaluate.pass_at_k is stats.pass_at_k and evaluate.mean_ci95 is stats.mean_ci95
    assert ratings.mean_ci95 is stats.mean_ci95 and ratings.TIE_MARGIN == stats.TIE_MARGIN
    assert TrueSkillSettings is stats.TrueSkillSettings
    assert replace(ratings.TRUESKILL, tau=stats.TrueSkillSettings().tau) == stats.TrueSkillSettings()
    assert TrainConfig().trueskill.settings() == stats.TrueSkillSettings()
    assert TrainConfig().trueskill.tie_tolerance == stats.TIE_MARGIN
