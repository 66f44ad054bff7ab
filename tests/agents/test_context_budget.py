"""Per-row context budgets on the real packaged SmolLM2: a prompt that fills the context ends its own episode
(`context_overflow`) and leaves the other rows of its batch exactly as they are without it."""

from __future__ import annotations

import contextlib

import pytest

from espl.agents.rollout import Episode, rollout
from espl.types import SamplingParams

PARAMS = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=8, seed=5)


@contextlib.contextmanager
def context_of(policy, tokens: int):
    """The session's policy with a smaller context (SmolLM2's 8192 would need very long prompts on a CPU)."""
    saved = policy.max_context
    policy.max_context = tokens
    try:
        yield policy
    finally:
        policy.max_context = saved


def prompts(policy):
    short = policy.renderer.start([{"role": "user", "content": "What is 2 + 3?"}]).ids
    other = policy.renderer.start([{"role": "user", "content": "Name a prime number."}]).ids
    long = policy.renderer.start([{"role": "user", "content": "Count: " + " ".join(map(str, range(60)))}]).ids
    return short, other, long


def test_an_overlong_prompt_does_not_blank_its_batch(smol_policy):
    short, other, long = prompts(smol_policy)
    limit = len(long) - 2  # the long prompt leaves no room; the short ones leave far more than 8 tokens
    assert max(len(short), len(other)) + PARAMS.max_new_tokens < limit
    with context_of(smol_policy, limit) as pol:
        together = pol.generate_tokens([short, long, other], PARAMS, seeds=[1, 2, 3])
        alone = pol.generate_tokens([short, other], PARAMS, seeds=[1, 3])
    assert together[1].finish_reason == "context_overflow" and together[1].token_ids == ()
    assert together[1].prompt_ids == tuple(long)
    for got, want in zip((together[0], together[2]), alone):
        assert got.token_ids and got.finish_reason != "context_overflow"
        assert got.token_ids == want.token_ids  # the neighbour changed nothing


def test_a_row_gets_what_its_prompt_leaves_of_the_context(smol_policy):
    short, _, long = prompts(smol_policy)
    room = 3
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    free = smol_policy.generate_tokens([short], greedy, seeds=[2])[0]
    with context_of(smol_policy, len(long) + room) as pol:
        out = pol.generate_tokens([long, short], greedy, seeds=[1, 2])
    assert 1 <= len(out[0].token_ids) <= room
    if len(out[0].token_ids) == room:
        assert out[0].finish_reason in ("length", "stop")
    # the short row is not limited by its neighbour's prompt (the old budget was context - the longest prompt)
    assert out[1].token_ids == free.token_ids and len(free.token_ids) > room


def test_rollout_ends_only_the_overflowing_episode_and_evaluate_counts_it(smol_policy):
    from espl.agents.evaluate import evaluate

    long_prompt = "Think step by step. " * 40
    eps = [Episode(seed=1, system_prompt="Be brief.", sample_seed=11),
           Episode(seed=2, system_prompt=long_prompt, sample_seed=12),
           Episode(seed=3, system_prompt="Be brief.", sample_seed=13)]
    long_len = len(smol_policy.renderer.start([{"role": "system", "content": long_prompt}]).ids)
    with context_of(smol_policy, long_len) as pol:
        trajs = rollout("espl/Math-v0", pol, eps, PARAMS)
        alone = rollout("espl/Math-v0", pol, [eps[0], eps[2]], PARAMS)
        result = evaluate("espl/Math-v0", pol, episodes=2, params=PARAMS, system_prompt=long_prompt)
    over = trajs[1]
    assert over.reason == "context_overflow" and over.truncated and not over.terminated
    assert over.info["context_overflow"] is True and over.num_turns == 0 and over.reward == 0.0
    assert sum(over.mask) == 0  # nothing was generated: no tokens for the loss
    for got, want in zip((trajs[0], trajs[2]), alone):
        assert got.reason != "context_overflow" and got.info["context_overflow"] is False
        assert got.token_ids == want.token_ids and got.messages == want.messages
    assert result.context_overflows == 2 and result.reasons == {"context_overflow": 2}
    assert result.to_dict()["context_overflows"] == 2


@pytest.mark.parametrize("limit", [None])
def test_no_context_limit_means_no_overflow(smol_policy, limit):
    short, _, long = prompts(smol_policy)
    with context_of(smol_policy, limit) as pol:
        out = pol.generate_tokens([short, long], PARAMS, seeds=[1, 2])
    assert all(c.finish_reason != "context_overflow" and c.token_ids for c in out)
