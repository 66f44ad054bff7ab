"""The real SmolLM2 rolled out on the tool envs (espl/ToolMath-v0, espl/Search-v0): the tools reach the model
through the Hermes fallback (SmolLM2's template ignores `tools=`), every reply is scored, and the tool turns
that happen are recorded consistently. Few episodes, few tokens: this checks the plumbing, not the skill
(the measured base success rate is in docs/tools.md)."""

from __future__ import annotations

import pytest

from espl.agents.rollout import Episode, RolloutStats, rollout
from espl.types import SamplingParams

pytestmark = pytest.mark.slow

PARAMS = SamplingParams(temperature=0.7, max_new_tokens=48, seed=11)
ENVS = {
    "espl/ToolMath-v0": ({"python_tool": "off", "max_turns": 2}, ["calculator"]),
    "espl/Search-v0": ({"max_turns": 2}, ["search", "open"]),
}
REASONS = {"correct", "wrong_answer", "no_answer", "max_turns"}


@pytest.fixture(scope="module", params=sorted(ENVS))
def run(request, smol_policy):
    env_id = request.param
    kwargs, names = ENVS[env_id]
    stats = RolloutStats()
    eps = [Episode(seed=s, system_prompt=None if s % 2 else "Use the tools.") for s in range(3)]
    trajs = rollout(env_id, smol_policy, eps, PARAMS, env_kwargs=kwargs, stats=stats)
    return env_id, names, eps, trajs, stats


def test_tools_reach_the_model_through_the_hermes_fallback(run, smol_policy):
    env_id, names, eps, trajs, _ = run
    assert smol_policy.renderer.uses_tool_fallback  # SmolLM2's template drops tools=
    for t, ep in zip(trajs, eps):
        prompt = t.rendered_prompt
        assert prompt is not None and "<tools>" in prompt and "<tool_call>" in prompt
        for name in names:
            assert f'"name": "{name}"' in prompt
        if ep.system_prompt:  # the episode's system prompt comes first, the tool text after it
            assert prompt.index(ep.system_prompt) < prompt.index("<tools>")


def test_every_episode_is_scored_and_tool_turns_are_consistent(run):
    env_id, _, eps, trajs, _ = run
    assert [t.seed for t in trajs] == [e.seed for e in eps]
    for t in trajs:
        assert t.env_id == env_id and t.reason in REASONS and (t.terminated or t.truncated)
        assert 0.0 <= t.reward <= 1.0
        roles = [m["role"] for m in t.messages]
        assert roles[-1] == "assistant" and roles.count("assistant") == t.num_turns
        tool_msgs = [m for m in t.messages if m["role"] == "tool"]
        # every tool call the env counted got exactly one tool message back, right after its assistant turn
        assert len(tool_msgs) == t.info["tool_calls"]
        for i, m in enumerate(t.messages):
            if m["role"] == "tool":
                prev = next(p for p in reversed(t.messages[:i]) if p["role"] != "tool")
                assert prev["role"] == "assistant"
                if prev.get("tool_calls"):  # calls parsed from text are attached with their ids
                    assert m["tool_call_id"] in {c["id"] for c in prev["tool_calls"]} or m["name"] == "invalid_tool_call"
        assert t.info["tool_errors"] <= t.info["tool_calls"]


def test_trajectories_stay_token_exact(run, smol_policy):
    _, _, _, trajs, stats = run
    generated = 0
    for t in trajs:
        assert len(t.token_ids) == len(t.mask) == len(t.logprobs)
        generated += sum(t.mask)
        # the policy's tokens, decoded, are the assistant replies (the env's tool messages carry no loss)
        text = smol_policy.tokenizer.decode([tok for tok, m in zip(t.token_ids, t.mask) if m])
        for m in t.messages:
            if m["role"] == "assistant" and m["content"].strip():
                assert m["content"].strip()[:20] in text
    assert generated == stats.generated_tokens
