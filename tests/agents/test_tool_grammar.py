"""Grammar-constrained tool calls (agents/tool_grammar.py) with the real packaged SmolLM2 and a real llama.cpp
server: every constrained reply is a call of the env's tools, and the trainer's recomputed log-probs under the
replayed masks equal the sampling-time ones (importance ratio exactly 1 before any update)."""

from __future__ import annotations

import json
from dataclasses import replace

import jsonschema
import pytest

from espl.agents.rollout import Episode, rollout
from espl.agents.tool_grammar import TOOL_GRAMMAR_MODES, call_schema, llguidance_grammar, reply_mode, structural_tag
from espl.envs.bfcl import AST_CATEGORIES, bfcl_available, bfcl_tools, load_items
from espl.envs.tools import message_tool_calls
from espl.types import SamplingParams

from tests.conftest import require

ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
SHOUT = {"type": "function", "function": {"name": "shout", "description": "Upper-case a text.", "parameters": {
    "type": "object", "properties": {"text": {"type": "string"}, "times": {"type": "integer", "nullable": True}},
    "required": ["text"]}}}


def _valid_calls(message, tools) -> bool:
    """The reply is at least one call; every call names one of `tools` and its arguments pass that tool's schema
    (closed: no extra arguments), the check the envs apply."""
    names = [t["function"]["name"] for t in tools]
    calls, errors = message_tool_calls(message, tool_names=names)
    if errors or not calls:
        return False
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    for c in calls:
        name = c["function"]["name"]
        if name not in schemas:
            return False
        args = json.loads(c["function"]["arguments"])
        if not jsonschema.Draft202012Validator({**schemas[name], "additionalProperties": False}).is_valid(args):
            return False
    return True


# ---- the grammar itself ---------------------------------------------------------------------------------------
def test_mode_is_validated_with_the_field_name():
    with pytest.raises(ValueError, match="tool_grammar: must be one of off, required, auto, answer, call_then_answer"):
        SamplingParams(tool_grammar="strict")
    assert TOOL_GRAMMAR_MODES == ("off", "required", "auto", "answer", "call_then_answer")
    # an episode's schedule is resolved per reply; it is no grammar of its own
    assert [reply_mode("call_then_answer", t) for t in range(3)] == ["required", "answer", "answer"]
    assert reply_mode("auto", 4) == "auto"
    with pytest.raises(ValueError, match="episode's schedule"):
        structural_tag([ADD], "call_then_answer")
    with pytest.raises(ValueError, match="tools: a tool-call grammar needs at least one tool"):
        call_schema([])


def test_trainer_config_takes_the_mode():
    from espl.trainer.config import TrainConfig

    assert TrainConfig.from_sources(None, ["rollout.tool_grammar=required"]).rollout.tool_grammar == "required"
    assert TrainConfig().rollout.tool_grammar == "off"
    with pytest.raises(ValueError, match="rollout.tool_grammar"):
        TrainConfig.from_sources(None, ["rollout.tool_grammar=always"])


def test_call_schema_ties_arguments_to_the_name_and_nullable_becomes_null():
    schema = call_schema([ADD, SHOUT])
    v = jsonschema.Draft202012Validator(schema)
    assert v.is_valid({"name": "add", "arguments": {"a": 1, "b": 2}})
    assert v.is_valid({"name": "shout", "arguments": {"text": "hi", "times": None}})
    assert not v.is_valid({"name": "add", "arguments": {"text": "hi"}})  # shout's arguments under add's name
    assert not v.is_valid({"name": "add", "arguments": {"a": 1, "b": 2, "c": 3}})  # no argument the tool lacks
    assert not v.is_valid({"name": "mul", "arguments": {"a": 1, "b": 2}})
    assert not v.is_valid([{"name": "add", "arguments": {"a": 1, "b": 2}}])  # a list only when parallel
    par = jsonschema.Draft202012Validator(call_schema([ADD], parallel=True))
    assert par.is_valid([{"name": "add", "arguments": {"a": 1, "b": 2}}] * 2) and not par.is_valid([])


def test_xgrammar_matcher_accepts_calls_and_rejects_what_the_env_would(smol_policy):
    g = smol_policy.tool_grammar_engine()

    def accepts(text: str, mode: str, parallel: bool = False, tools=(ADD, SHOUT)) -> bool:
        m = g.matcher(list(tools), mode, parallel)
        return m.accept_string(text)

    call = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    assert accepts(call, "required") and accepts("The answer is 3. " + call, "auto")
    assert accepts("The answer is 3.", "auto") and not accepts("The answer is 3.", "required")
    assert not accepts('<tool_call>\n{"name": "mul", "arguments": {"a": 1}}\n</tool_call>', "required")
    assert not accepts('<tool_call>\n{"name": "add", "arguments": {"a": "one", "b": 2}}', "auto")
    assert not accepts('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2, "c": 3}}', "required")
    listed = '<tool_call>\n[{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "shout", "arguments": {"text": "x"}}]'
    assert accepts(listed, "required", parallel=True) and not accepts(listed, "required")
    assert not accepts(call + "\nmore text", "required")  # exactly one block
    # "auto": the untagged forms the envs read are constrained too (Qwen's bare calls carried a "required" key)
    bare = '{"name": "add", "arguments": {"a": 1, "b": 2}}'
    assert accepts(bare, "auto") and accepts("```json\n" + bare + "\n```", "auto") and accepts(call, "auto")
    assert not accepts('{"name": "add", "arguments": {"a": 1, "b": 2, "required": ["a"]}}', "auto")
    assert not accepts(bare + ', {"return": "3"}', "auto")  # nothing after the call (it invented the result)
    assert not accepts("\n" + bare, "auto") and not accepts("```python\nprint(3)", "auto")  # text opens otherwise
    assert accepts("Answer: 3", "auto") and accepts("3 {not a call}", "auto")
    # "answer": text only, never a call in any form
    assert accepts("Answer: 3", "answer") and accepts("3 {not a call}", "answer")
    assert not accepts(call, "answer") and not accepts(bare, "answer") and not accepts("```json\n" + bare, "answer")
    assert not accepts("The answer is 3. " + call, "answer")


def test_every_bfcl_tool_set_compiles(smol_policy):
    """What the grammar receives from envs/bfcl.py (BFCL's 'dict', 'float', 'tuple', 'any' converted): the tool
    sets of the first 25 items of every single-turn category compile, and the structural tag is plain JSON."""
    require(bfcl_available(), "bfcl-eval data (scripts/setup.sh)")
    g = smol_policy.tool_grammar_engine()
    for cat in AST_CATEGORIES:
        for item in load_items(cat)[:25]:
            tools = bfcl_tools(item["function"])
            json.dumps(structural_tag(tools, "auto", parallel=True))
            g.matcher(tools, "required", "parallel" in cat)


# ---- HFPolicy: decoding under the grammar, and the trainer's log-probs under the same masks --------------------
def _check_logprobs(policy, trajs, temperature: float) -> float:
    """Sampling-time log-probs == the trainer's recomputation (masks replayed); returns the largest gap an
    unconstrained recomputation would have had on the constrained tokens (how much the masks matter)."""
    import torch

    with torch.no_grad():
        lp = policy.trajectory_logprobs(trajs, [1.0] * len(trajs), temperature)
    m = lp.mask.bool()
    torch.testing.assert_close(lp.logprobs[m], lp.old_logprobs[m], atol=1e-4, rtol=0)
    plain = [type(t)(**{**t.to_dict(), "tool_grammar": None}) for t in trajs]
    with torch.no_grad():
        free = policy.trajectory_logprobs(plain, [1.0] * len(plain), temperature)
    return float((free.logprobs[m] - lp.old_logprobs[m]).abs().max())


@pytest.mark.slow
def test_required_calls_on_bfcl_are_valid_and_logprobs_match(smol_policy):
    """Mixed BFCL (simple, multiple, parallel, ... round-robin), sampled at T=0.7 under 'required': every reply that
    ended (not cut by the token budget) is a valid call of its item's tools, and log-probs match the replay."""
    require(bfcl_available(), "bfcl-eval data (scripts/setup.sh)")
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=96, seed=3, tool_grammar="required")
    # seeds 0-5 of the mixed env: simple, multiple, parallel, parallel_multiple, irrelevance, live_simple
    trajs = rollout("espl/BFCL-v0", smol_policy, [Episode(seed=i) for i in range(6)], params,
                    env_kwargs={"split": "test"})
    ended = [t for t in trajs if t.info["finish_reasons"] == ["stop"]]
    assert len(ended) >= 4, [t.info["finish_reasons"] for t in trajs]
    for t in ended:
        item = next(it for it in load_items(t.info["bfcl_category"]) if it["id"] == t.info["bfcl_id"])
        tools = bfcl_tools(item["function"])
        assert t.messages[-1]["content"].startswith("<tool_call>\n"), t.messages[-1]
        assert _valid_calls(t.messages[-1], tools), t.messages[-1]
    for t in trajs:
        assert t.tool_grammar is not None and t.tool_grammar["mode"] == "required"
        (s, e, mode), = t.tool_grammar["spans"]
        assert mode == "required"
        assert t.mask[s:e] == [1] * (e - s) and sum(t.mask) == e - s
    assert any(t.tool_grammar["parallel"] for t in trajs) and not all(t.tool_grammar["parallel"] for t in trajs)
    assert _check_logprobs(smol_policy, trajs, 0.7) > 1e-2  # the masks change the log-probs: the replay matters
    assert smol_policy.grammar_failures == 0


@pytest.mark.slow
def test_auto_multi_turn_toolmath_is_token_exact_and_logprobs_match(smol_policy):
    """espl/ToolMath-v0 under 'auto': several turns per episode, each reply constrained from its own start (one
    span per turn); the recomputation over the whole episode matches, and the same seeds sample the same tokens."""
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=48, seed=11, tool_grammar="auto")
    eps = [Episode(seed=i, system_prompt="Use the calculator tool, then answer.") for i in range(4)]
    trajs = rollout("espl/ToolMath-v0", smol_policy, eps, params)
    assert all(t.tool_grammar is not None and len(t.tool_grammar["spans"]) == t.num_turns for t in trajs)
    for t in trajs:
        for (s, e, mode), later in zip(t.tool_grammar["spans"], t.tool_grammar["spans"][1:] + [[len(t.token_ids)]]):
            assert mode == "auto"
            assert t.mask[s:e] == [1] * (e - s) and t.mask[e:later[0]] == [0] * (later[0] - e)
    _check_logprobs(smol_policy, trajs, 0.7)
    again = rollout("espl/ToolMath-v0", smol_policy, eps, params)
    assert [t.token_ids for t in again] == [t.token_ids for t in trajs]


@pytest.mark.slow
def test_call_then_answer_calls_first_then_answers_and_logprobs_match(smol_policy):
    """espl/ToolMath-v0 under 'call_then_answer': each episode's first reply is one call (as 'required'), every
    later reply free text that calls nothing (as 'answer'); each span records its reply's mode and the
    trainer's replay of those modes gives the sampling-time log-probs."""
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=40, seed=2, tool_grammar="call_then_answer")
    eps = [Episode(seed=i, system_prompt="Use the calculator tool, then answer.") for i in range(4)]
    trajs = rollout("espl/ToolMath-v0", smol_policy, eps, params)
    for t in trajs:
        spans = t.tool_grammar["spans"]
        assert [sp[2] for sp in spans] == ["required"] + ["answer"] * (len(spans) - 1)
        replies = [m for m in t.messages if m["role"] == "assistant"]
        assert replies[0]["content"].startswith("<tool_call>\n")
        assert all("<tool_call>" not in m["content"] and m["content"][:1] not in "{[`" for m in replies[1:])
    assert any(len(t.tool_grammar["spans"]) >= 2 for t in trajs)  # some episodes got to answer
    assert all(t.num_turns <= 2 for t in trajs)  # a reply that cannot call ends the episode
    assert _check_logprobs(smol_policy, trajs, 0.7) > 1e-2
    assert smol_policy.grammar_failures == 0


def test_off_leaves_generation_as_it_was(smol_policy):
    params = SamplingParams(temperature=0.7, max_new_tokens=24, seed=5)
    a = rollout("espl/ToolMath-v0", smol_policy, [Episode(seed=1)], params)[0]
    b = rollout("espl/ToolMath-v0", smol_policy, [Episode(seed=1)], replace(params, tool_grammar="off"))[0]
    assert a.token_ids == b.token_ids and a.tool_grammar is None


# ---- OpenAI-compatible servers: a real llama.cpp server on 127.0.0.1 -------------------------------------------
@pytest.mark.slow
def test_llamacpp_grammar_and_response_format_give_valid_calls(llama_server):
    from espl.agents.openai_policy import OpenAIPolicy

    conv = [{"role": "user", "content": "What is 17 + 25? Use the add tool."}]
    params = SamplingParams(temperature=0.7, max_new_tokens=64, seed=0, tool_grammar="required")
    llama = OpenAIPolicy(llama_server, model="smollm2-135m", tool_format="hermes")
    llama.grammar_dialect = "llguidance"  # what llamacpp_policy sets for the server it owns
    for c in llama.generate([conv] * 3, params, tools=[ADD, SHOUT], seeds=[0, 1, 2]):
        assert c.text.startswith("<tool_call>\n") and _valid_calls(c.message, [ADD, SHOUT]), c.text
    auto = llama.generate([[{"role": "user", "content": "Say hello."}]], SamplingParams(
        temperature=0, max_new_tokens=24, tool_grammar="auto"), tools=[ADD])[0]
    assert "<tool_call>" not in auto.text or _valid_calls(auto.message, [ADD])

    generic = OpenAIPolicy(llama_server, model="smollm2-135m", tool_format="hermes")  # response_format only
    for c in generic.generate([conv] * 2, params, tools=[ADD, SHOUT], seeds=[0, 1]):
        assert _valid_calls(c.message, [ADD, SHOUT]), c.text  # a bare JSON call, read as the envs read it
    with pytest.raises(ValueError, match="tool_grammar: 'auto' needs a server that takes a grammar"):
        generic.generate([conv], SamplingParams(tool_grammar="auto"), tools=[ADD])
    # call_then_answer: a conversation that already holds a reply gets the "answer" grammar (no call)
    calls = llama.generate([conv], replace(params, tool_grammar="call_then_answer"), tools=[ADD, SHOUT], seeds=[4])[0]
    assert calls.text.startswith("<tool_call>\n") and _valid_calls(calls.message, [ADD, SHOUT]), calls.text
    later = conv + [calls.message, {"role": "tool", "content": "42"}]
    answer = llama.generate([later], replace(params, tool_grammar="call_then_answer"), tools=[ADD, SHOUT], seeds=[4])[0]
    assert answer.text and "<tool_call>" not in answer.text and answer.text[:1] not in "{[`", answer.text


def test_llguidance_grammar_text_is_what_llamacpp_reads():
    g = llguidance_grammar([ADD], "auto")
    assert g.startswith("%llguidance {}\nstart: block | call | fenced | TEXT block?") and '"const": "add"' in g
    assert llguidance_grammar([ADD], "required").splitlines()[1] == "start: block"
    assert llguidance_grammar([ADD], "answer").splitlines()[1:] == ["start: TEXT", "TEXT: /[^{\\[<`\\s](?s:.*)/ & ~/(?s:.*<tool_call>.*)/"]


@pytest.mark.slow
def test_chunked_logprobs_equal_unchunked_with_gradients(smol_policy):
    """trajectory_logprobs over chunks of 7 positions (LM head + log-softmax under checkpointing) gives the
    values and the gradients of the all-at-once path, grammar-masked positions included."""
    import torch

    params = SamplingParams(temperature=0.7, max_new_tokens=40, seed=2, tool_grammar="auto")
    trajs = rollout("espl/ToolMath-v0", smol_policy, [Episode(seed=i) for i in range(3)], params)
    weight = smol_policy._lm.get_output_embeddings().weight
    layer = smol_policy._lm.get_decoder().layers[-1].mlp.down_proj.weight
    results = []
    saved = smol_policy.logprob_chunk
    try:
        for chunk in (None, 7):
            smol_policy.logprob_chunk = chunk
            lp = smol_policy.trajectory_logprobs(trajs, [1.0, -0.5, 2.0], 0.7)
            loss = (lp.logprobs * lp.mask * lp.advantages).sum()
            weight.grad = layer.grad = None
            loss.backward()
            results.append((lp.logprobs.detach(), weight.grad.clone(), layer.grad.clone()))
    finally:
        smol_policy.logprob_chunk = saved
        weight.grad = layer.grad = None
    assert results[0][0].shape[1] > 7 * 3  # several chunks
    for a, b in zip(results[0], results[1]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
