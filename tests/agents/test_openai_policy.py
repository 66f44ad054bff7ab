"""OpenAIPolicy against a real llama.cpp server (xllamacpp, packaged SmolLM2, 127.0.0.1), plus a
`ScriptedChatServer` (a real HTTP server on 127.0.0.1 with scripted replies) for what llama.cpp cannot do
here: return native `tool_calls` (it drops `tools=` for this model) and fail with 500 on demand."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from espl.agents.errors import GenerationError, RolloutError
from espl.agents.openai_policy import OpenAIPolicy
from espl.agents.rollout import Episode, RolloutStats, rollout
from espl.types import SamplingParams
from tests.agents.test_rollout import CountdownEnv
from tests.conftest import closed_port_url

SHORT = SamplingParams(temperature=0, max_new_tokens=6)


def conv(text):
    return [{"role": "user", "content": text}]


def test_batch_against_llama_cpp(llama_server):
    pol = OpenAIPolicy(llama_server, "smollm2", max_concurrency=3)
    out = pol.generate([conv("What is 2+2?"), conv("Name a color."), conv("Say hi.")], SHORT)
    assert len(out) == 3 and all(c.message["role"] == "assistant" and c.text for c in out)
    assert all(c.finish_reason in ("stop", "length") for c in out)
    assert any(c.finish_reason == "length" for c in out)  # 6 tokens: this model is chatty
    assert 0 < pol.tokens_generated <= 18
    assert all(c.token_ids == () and c.prompt_ids == () for c in out)


def test_bad_request_is_not_retried_and_finished_ones_are_kept(llama_server):
    pol = OpenAIPolicy(llama_server, "smollm2", retries=3, backoff_s=5.0)
    t0 = time.perf_counter()
    with pytest.raises(GenerationError) as err:
        pol.generate([conv("Say hi."), conv("word " * 3000), conv("Say bye.")], SHORT)
    assert time.perf_counter() - t0 < 5.0  # a 400 is final: no backoff sleeps
    e = err.value
    assert e.completions[0] is not None and e.completions[2] is not None and e.completions[1] is None
    assert "context" in e.errors[1] and e.errors[0] is None
    assert "1 of 3 requests" in str(e)


def test_timeout_is_retried_then_reported(llama_server):
    pol = OpenAIPolicy(llama_server, "smollm2", timeout_s=0.05, retries=2, backoff_s=0.01)
    with pytest.raises(GenerationError) as err:
        pol.generate([conv("Write a long story about a dragon.")], SamplingParams(max_new_tokens=400))
    assert "Timeout" in err.value.errors[0] and "after 2 retries" in str(err.value)


def test_server_down_is_retried_then_reported():
    pol = OpenAIPolicy(closed_port_url(), "m", retries=2, backoff_s=0.01, timeout_s=2)
    with pytest.raises(GenerationError) as err:
        pol.generate([conv("hi"), conv("ho")], SHORT)
    assert all(c is None for c in err.value.completions)
    assert "Connection" in err.value.errors[0]


def test_rollout_with_a_server_policy(llama_server):
    pol = OpenAIPolicy(llama_server, "smollm2", max_concurrency=4)
    st = RolloutStats()
    trajs = rollout(CountdownEnv, pol, [Episode(seed=i) for i in range(3)], SHORT, stats=st)
    assert [t.seed for t in trajs] == [0, 1, 2]
    for t in trajs:
        assert t.token_ids == [] and t.mask == [] and t.rendered_prompt is None
        assert t.messages[0]["role"] == "user" and t.messages[-1]["role"] == "assistant"
    assert st.generated_tokens > 0


def test_rollout_keeps_finished_episodes_when_the_server_fails():
    pol = OpenAIPolicy(closed_port_url(), "m", retries=0, timeout_s=2)
    with pytest.raises(RolloutError) as err:
        rollout(CountdownEnv, pol, [Episode(seed=0)], SHORT)
    assert err.value.trajectories == {} and isinstance(err.value.cause, GenerationError)


# ---- the scripted server ---------------------------------------------------------------------------------
class ScriptedChatServer:
    """A real HTTP server on 127.0.0.1 answering /v1/chat/completions from a script of (status, body)."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                status, reply = outer.script.pop(0) if outer.script else (500, {"error": "script exhausted"})
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def chat_reply(content=None, tool_calls=None, finish="stop"):
    msg = {"role": "assistant", "content": content}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}


TOOLS = [{"type": "function", "function": {"name": "calculator", "description": "Evaluate.",
          "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}}]


def test_500_is_retried_with_backoff_then_succeeds():
    srv = ScriptedChatServer([(500, {"error": "boom"}), (503, {"error": "busy"}), (200, chat_reply("42"))])
    try:
        pol = OpenAIPolicy(srv.url, "m", retries=3, backoff_s=0.01)
        out = pol.generate([conv("6*7?")], SHORT)
        assert out[0].text == "42" and len(srv.requests) == 3 and pol.tokens_generated == 7
    finally:
        srv.close()


def test_native_tool_calls_and_the_hermes_fallback():
    call = {"id": "call_9", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "6*7"}'}}
    srv = ScriptedChatServer([(200, chat_reply(None, [call], "tool_calls")), (200, chat_reply("ok"))])
    try:
        out = OpenAIPolicy(srv.url, "m").generate([conv("6*7?")], SHORT, tools=TOOLS)
        assert out[0].message["tool_calls"] == [call] and out[0].finish_reason == "stop"
        assert srv.requests[0]["tools"] == TOOLS
        OpenAIPolicy(srv.url, "m", tool_format="hermes").generate([conv("6*7?")], SHORT, tools=TOOLS)
        req = srv.requests[1]
        assert "tools" not in req and req["messages"][0]["role"] == "system"
        assert "<tool_call>" in req["messages"][0]["content"] and '"calculator"' in req["messages"][0]["content"]
    finally:
        srv.close()


def test_seeds_differ_per_conversation():
    srv = ScriptedChatServer([(200, chat_reply("a")), (200, chat_reply("b"))])
    try:
        OpenAIPolicy(srv.url, "m", max_concurrency=1).generate([conv("x"), conv("x")],
                                                               SamplingParams(seed=4, max_new_tokens=3))
        assert srv.requests[0]["seed"] != srv.requests[1]["seed"]
    finally:
        srv.close()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="base_url"):
        OpenAIPolicy("localhost:8000", "m")
    with pytest.raises(ValueError, match="max_concurrency"):
        OpenAIPolicy("http://127.0.0.1:1/v1", "m", max_concurrency=0)


def test_generate_json_follows_each_schema_on_llama_cpp(llama_server):
    import jsonschema

    schemas = [
        {"type": "object", "properties": {"op": {"enum": ["add", "remove"]}, "text": {"type": "string", "maxLength": 30}},
         "required": ["op", "text"], "additionalProperties": False},
        {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
    ]
    pol = OpenAIPolicy(llama_server, "smollm2", max_concurrency=2)
    replies = pol.generate_json([conv("Propose a rule for equations."), conv("Pick some numbers.")],
                                SamplingParams(temperature=0.7, max_new_tokens=48, seed=2), schemas)
    for reply, schema in zip(replies, schemas):
        jsonschema.validate(json.loads(reply), schema)
    with pytest.raises(ValueError, match="schemas: one per conversation"):
        pol.generate_json([conv("x")], SHORT, schemas)


def test_reason_then_json_object_schema_on_llama_cpp(llama_server):
    """Issue 16: mutator.reflection = "reason_then_json" through `response_format` json_schema on a real
    llama.cpp server: the reply is {"analysis", "operations"} in that order, the analysis within half the call's
    budget (unbounded, SmolLM2 once filled all 160 tokens with analysis and lost the operations: CI stop 20), and
    it parses to its operations."""
    from collections import Counter

    import jsonschema

    from espl.trainer.mutator import (LLMMutator, MutatorSettings, RolloutGroup, analysis_chars, critique_schema,
                                      parse_operations, with_analysis)
    from espl.types import Trajectory

    def traj(reward, text):
        return Trajectory(env_id="espl/Math-v0", task_id="t0", reward=reward, reason="correct" if reward else "wrong_answer",
                          messages=[{"role": "user", "content": "What is 12 * 3?"}, {"role": "assistant", "content": text}])

    group = RolloutGroup("What is 12 * 3?", "36", (traj(1.0, "12 * 3 = 36. Answer: 36"), traj(0.0, "12 * 3 = 32. Answer: 32")))
    mutator = LLMMutator(OpenAIPolicy(llama_server, "smollm2", retries=0),
                         MutatorSettings(reflection="reason_then_json", summary_tokens=16, critique_tokens=400,
                                         revision_tokens=160))
    result = mutator.mutate(("Check the units of every quantity.",), [group], seed=0)
    assert mutator.constrained
    critique = next(reply for prompt, reply in result.calls if "extract generalizable principles" in prompt)
    value = json.loads(critique)
    assert list(value) == ["analysis", "operations"] and len(value["analysis"]) <= analysis_chars(400) == 800
    jsonschema.validate(value, with_analysis(critique_schema(["G0"], 2), analysis_chars(400)))
    assert parse_operations(critique, critique_schema(["G0"], 2), Counter()) == value["operations"]


def test_mutator_falls_back_to_free_text_when_the_server_refuses_json_schema():
    """An endpoint that answers 400 to `response_format` json_schema: the mutator goes on unconstrained
    (said in its log) instead of failing the training step; a server error still raises."""
    from espl.trainer.mutator import LLMMutator, MutatorSettings

    srv = ScriptedChatServer([(400, {"error": {"message": "response_format not supported"}}),
                              (200, chat_reply('[{"operation": "add", "principle": "x"}]'))])
    try:
        mutator = LLMMutator(OpenAIPolicy(srv.url, "m", retries=0), MutatorSettings())
        assert mutator.constrained
        calls = []
        replies = mutator._chat_json(["critique this"], [{"type": "array"}], 32, 0, calls)
        assert replies == ['[{"operation": "add", "principle": "x"}]'] and not mutator.constrained
        assert "response_format" in srv.requests[0] and "response_format" not in srv.requests[1]
    finally:
        srv.close()
    srv = ScriptedChatServer([(500, {"error": "down"})])
    try:  # a server error is this mutation's outcome (trainer/mutator.py MutatorCallFailed), not a schema refusal
        from espl.trainer.mutator import MutatorCallFailed

        mutator = LLMMutator(OpenAIPolicy(srv.url, "m", retries=0), MutatorSettings())
        with pytest.raises(MutatorCallFailed, match="mutator_server_error"):
            mutator._chat_json(["critique this"], [{"type": "array"}], 32, 0, [])
        assert mutator.constrained
    finally:
        srv.close()
