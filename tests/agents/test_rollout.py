"""rollout() with the real SmolLM2: episodes in order, batched across episodes, token-exact across turns,
reproducible from seeds, truncated replies scored by the env."""

from __future__ import annotations

import re

import pytest

from espl.agents.rollout import Episode, RolloutStats, rollout
from espl.envs.core import MultiTurnEnv, Outcome, Task
from espl.types import SamplingParams


class CountdownEnv(MultiTurnEnv):
    """A real two-attempt env for these tests: name the number; a wrong reply gets feedback and a retry."""

    family = "test"

    def __init__(self, **kw):
        super().__init__(max_turns=2, **kw)

    def make_task(self, index: int) -> Task:
        return Task(id=f"count-{index}", prompt=f"Reply with the number {index * 3 + 1} and nothing else.",
                    answer=index * 3 + 1)

    def evaluate(self, reply, task, turn):
        nums = re.findall(r"-?\d+", reply.get("content", ""))
        if nums and int(nums[-1]) == task.answer:
            return Outcome(1.0, "correct", True)
        if turn == 1:
            return Outcome(0.0, "wrong_answer", False,
                           ({"role": "user", "content": f"No. The number is {task.answer}. Say it."},))
        return Outcome(0.0, "wrong_answer", True)


PARAMS = SamplingParams(temperature=0.9, max_new_tokens=6, seed=3)


@pytest.fixture(scope="module")
def trajs(smol_policy):
    st = RolloutStats()
    eps = [Episode(seed=s, system_prompt=None if s % 2 else "Answer with one number.") for s in range(5)]
    out = rollout(CountdownEnv, smol_policy, eps, PARAMS, max_batch=4, stats=st)
    return eps, out, st


def test_one_trajectory_per_episode_in_order_batched(trajs):
    eps, out, st = trajs
    assert [t.seed for t in out] == [e.seed for e in eps]
    assert [t.task_id for t in out] == [f"count-{e.seed}" for e in eps]
    assert [t.system_prompt for t in out] == [e.system_prompt for e in eps]
    assert st.batch_sizes[0] == 4 and max(st.batch_sizes) == 4
    for t in out:
        assert t.reason in ("correct", "wrong_answer") and t.terminated
        assert 1 <= t.num_turns <= 2
        assert t.messages[-1]["role"] == "assistant"


def test_token_exact_across_turns(trajs, smol_policy):
    _, out, _ = trajs
    r = smol_policy.renderer
    tok = smol_policy.tokenizer
    multi = [t for t in out if t.num_turns == 2]
    assert multi, "expected at least one two-turn episode (the tiny model rarely gets the number first)"
    for t in out:
        assert len(t.token_ids) == len(t.mask) == len(t.logprobs)
        first = r.start([m for m in t.messages[: 2 if t.system_prompt else 1]])
        assert t.rendered_prompt == first.text
        assert tuple(t.token_ids[: len(first.ids)]) == first.ids
        # the masked spans are exactly the sampled replies, in order
        spans, cur = [], []
        for tid, m in zip(t.token_ids, t.mask):
            if m:
                cur.append(tid)
            elif cur:
                spans.append(cur)
                cur = []
        if cur:
            spans.append(cur)
        replies = [m for m in t.messages if m["role"] == "assistant"]
        assert len(spans) == len(replies) == t.num_turns
        for span, rep in zip(spans, replies):
            body = span[:-1] if span[-1] in smol_policy.stop_ids else span
            assert tok.decode(body) == rep["content"]
        assert all(lp == 0.0 for lp, m in zip(t.logprobs, t.mask) if not m)
        assert all(lp <= 0.0 for lp, m in zip(t.logprobs, t.mask) if m)
    for t in multi:
        # turn 2 tokens after the first reply are the env's message alone, in the template's format
        text = tok.decode(t.token_ids)
        assert "<|im_start|>user\nNo. The number is" in text
        assert text.count("<|im_start|>assistant\n") == 2


def test_reproducible_and_truncation_reported(trajs, smol_policy):
    eps, out, _ = trajs
    again = rollout(CountdownEnv, smol_policy, eps, PARAMS, max_batch=4)
    assert [t.token_ids for t in again] == [t.token_ids for t in out]
    assert [t.reward for t in again] == [t.reward for t in out]
    for t in out:
        n_len = t.info["finish_reasons"].count("length")
        assert t.info["truncated_reply"] == n_len
    assert any(t.info["truncated_reply"] for t in out)  # 6 tokens is short for this chatty model


class CountedEnv(CountdownEnv):
    made = 0

    def __init__(self, **kw):
        super().__init__(**kw)
        type(self).made += 1


def test_envs_are_reused_across_rollout_calls(smol_policy):
    from espl.agents.rollout import close_env_pool

    close_env_pool()
    p = SamplingParams(temperature=0, max_new_tokens=2, seed=0)
    first = rollout(CountedEnv, smol_policy, [Episode(seed=s) for s in range(3)], p)
    assert CountedEnv.made == 3
    second = rollout(CountedEnv, smol_policy, [Episode(seed=s) for s in range(3)], p)
    assert CountedEnv.made == 3  # the pooled envs served the second call
    assert [t.token_ids for t in first] == [t.token_ids for t in second]
    close_env_pool()


def test_placement_is_a_field_of_the_episode(smol_policy):
    """Issue 12.5: "user" placement (the E-SPL reference's) comes from the Episode, no env wrapper: the prompt
    goes into the first user message in the reference's words, after the problem; "system" (the default)
    makes it the system message."""
    params = SamplingParams(max_new_tokens=4, seed=0)
    user, system = rollout("espl/Math-v0", smol_policy, [Episode(seed=1, system_prompt="Be brief.", placement="user"),
                                                         Episode(seed=1, system_prompt="Be brief.")], params)
    from espl.envs.core import USER_PLACEMENT_TEMPLATE

    assert not any(m["role"] == "system" for m in user.messages)
    assert system.messages[0] == {"role": "system", "content": "Be brief."}
    assert user.messages[0] == {"role": "user", "content": USER_PLACEMENT_TEMPLATE.format(
        problem=system.messages[1]["content"], principles="Be brief.")}
    assert user.env_id == system.env_id == "espl/Math-v0"
