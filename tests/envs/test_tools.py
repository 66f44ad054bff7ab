"""Tool schemas, tool-call parsing and the ToolEnv step logic, with scripted *agent* replies (the env is tested)."""

from __future__ import annotations

import enum
import json
import subprocess
import sys
from typing import Any, Literal

import pytest

from espl.envs.core import Task
from espl.envs.tool_env import ToolEnv
from espl.envs.tools import (
    call_arguments, hermes_tools_prompt, message_tool_calls, parse_tool_calls, strip_tool_calls, tool_schema,
)


def add(a: int, b: int = 1) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number (default 1).
    """
    return a + b


def shout(text: str, times: float) -> str:
    """Repeat a text in capitals.

    Args:
        text: What to repeat.
        times: How many times (a number; rounded down).
    """
    if times < 0:
        raise ValueError("times must be >= 0")
    return " ".join([text.upper()] * int(times))


def call_text(name, args, fence=False):
    body = json.dumps({"name": name, "arguments": args})
    if fence:
        body = f"```json\n{body}\n```"
    return f"<tool_call>\n{body}\n</tool_call>"


# ---- schemas --------------------------------------------------------------------------------------------
def test_schema_from_signature_and_docstring():
    s = tool_schema(add)
    assert s["type"] == "function"
    fn = s["function"]
    assert fn["name"] == "add" and fn["description"] == "Add two integers."
    assert fn["parameters"]["properties"]["a"] == {"type": "integer", "description": "The first number."}
    assert fn["parameters"]["required"] == ["a"]  # b has a default
    assert tool_schema(shout)["function"]["parameters"]["properties"]["times"]["type"] == "number"


def test_schema_of_bad_functions_names_the_fix():
    def bare(x: int) -> int:
        return x

    def untyped(x):
        """Do it.

        Args:
            x: the thing
        """

    def undocumented_arg(x: int, y: int) -> int:
        """Do it.

        Args:
            x: the thing
        """

    def custom_type(x: object) -> None:
        """Do it.

        Args:
            x: the thing
        """

    with pytest.raises(ValueError, match="'bare': has no docstring"):
        tool_schema(bare)
    with pytest.raises(ValueError, match="'untyped': argument 'x' has no type hint"):
        tool_schema(untyped)
    with pytest.raises(ValueError, match="no `Args:` entry for 'y'"):
        tool_schema(undocumented_arg)
    with pytest.raises(ValueError, match="'custom_type': argument 'x': unsupported type hint"):
        tool_schema(custom_type)


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Box:
    def resize(self, width: float, height: float | None = None) -> dict[str, float]:
        """Resize the box.

        Args:
            width: The new width,
                in metres.
            height (float): The new height; kept when omitted.

        Returns:
            The new size.
        """
        return {"width": width}


def kitchen_sink(
    query: str,
    k: int,
    scores: list[float],
    mode: Literal["fast", "exact"] = "fast",
    colour: Colour = Colour.RED,
    tags: dict[str, int] | None = None,
    pair: tuple[int, str] = (1, "a"),
    flag: bool = False,
    anything: Any = None,
    either: int | str = 0,
    level: str = "low",
) -> Any:
    """Do many things at once.

    A second paragraph of description.

    Args:
        query: What to look for.
        k: How many.
        scores: Some scores.
        mode: Fast or exact.
        colour: A colour.
        tags: Tag counts.
        pair: A pair.
        flag: A flag.
        anything: Whatever.
        either: An int or a string.
        level: How much (choices: ["low", "high"])

    Raises:
        ValueError: never.
    """


@pytest.mark.parametrize("fn", [add, shout, kitchen_sink, Box().resize])
def test_schema_agrees_with_transformers_get_json_schema(fn):
    from transformers.utils import get_json_schema

    assert tool_schema(fn) == get_json_schema(fn)


def test_schema_needs_neither_transformers_nor_torch():
    code = ("import sys; from espl.envs.tools import tool_schema\n"
            "def f(x: int) -> int:\n    '''F.\n\n    Args:\n        x: an x\n    '''\n    return x\n"
            "tool_schema(f); bad = {'torch', 'transformers'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- parsing ------------------------------------------------------------------------------------------
def test_parse_one_call_to_openai_format():
    calls, errors = parse_tool_calls('I will add.\n<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}'
                                     '</tool_call>')
    assert errors == []
    assert calls == [{"id": "call_0", "type": "function",
                      "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]
    assert call_arguments(calls[0]) == {"a": 2, "b": 3}


def test_parse_several_calls_fences_whitespace_and_unclosed_last_block():
    text = (call_text("add", {"a": 1}) + "\n\n" + call_text("shout", {"text": "hi", "times": 2}, fence=True)
            + '\n<tool_call>  {"name": "add", "arguments": {"a": 5}}  ')  # generation stopped before </tool_call>
    calls, errors = parse_tool_calls(text, id_prefix="t_")
    assert errors == []
    assert [c["function"]["name"] for c in calls] == ["add", "shout", "add"]
    assert [c["id"] for c in calls] == ["t_0", "t_1", "t_2"]
    assert call_arguments(calls[2]) == {"a": 5}


def test_parse_list_of_calls_in_one_block_and_string_arguments():
    # SmolLM2's tuned format: a JSON list in one block; OpenAI's: arguments as JSON text
    text = ('<tool_call>[{"name": "add", "arguments": {"a": 1}}, '
            '{"name": "add", "arguments": "{\\"a\\": 7}"}]</tool_call>')
    calls, errors = parse_tool_calls(text)
    assert errors == [] and [call_arguments(c) for c in calls] == [{"a": 1}, {"a": 7}]
    assert parse_tool_calls("<tool_call>[]</tool_call>") == ([], [])


def test_parse_malformed_blocks_give_errors_not_exceptions():
    text = ('<tool_call>{"name": "add", "arguments": {"a": 1,}}</tool_call>'
            '<tool_call>{"arguments": {"a": 1}}</tool_call>'
            '<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>'
            '<tool_call></tool_call>'
            + call_text("add", {"a": 4}))
    calls, errors = parse_tool_calls(text)
    assert [call_arguments(c) for c in calls] == [{"a": 4}]
    assert len(errors) == 4
    assert errors[0].startswith("tool call 1: invalid JSON")
    assert '"name"' in errors[1] and "JSON object" in errors[2] and "empty" in errors[3]


def test_parse_tolerates_prose_after_the_json():
    calls, errors = parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 3}} now I wait</tool_call>')
    assert errors == [] and call_arguments(calls[0]) == {"a": 3}


def test_text_without_calls_is_not_an_error():
    assert parse_tool_calls("The answer is 42.\nAnswer: 42") == ([], [])
    assert parse_tool_calls("") == ([], [])


@pytest.mark.parametrize("text, names", [
    # what Qwen2.5-Coder-0.5B wrote on ToolMath-v0: an untagged call, then an invented result
    ('{"name": "add", "arguments": {"a": 19, "b": 38}}, {"return": "57"}', ["add"]),
    ('```json\n{"name": "add", "arguments": {"a": 1}}\n```', ["add"]),
    ('[{"name": "add", "arguments": {"a": 1}}, {"name": "shout", "arguments": {"text": "x", "times": 1}}]', ["add", "shout"]),
    ('{"name": "add", "arguments": {"a": 1}}\n{"name": "shout", "arguments": {"text": "x", "times": 1}}', ["add", "shout"]),
])
def test_bare_json_calls_of_known_tools(text, names):
    calls, errors = parse_tool_calls(text, tool_names=["add", "shout"])
    assert errors == [] and [c["function"]["name"] for c in calls] == names
    assert [c["id"] for c in calls] == [f"call_{i}" for i in range(len(names))]
    assert parse_tool_calls(text) == ([], [])  # without tool names: tags only


@pytest.mark.parametrize("text", [
    '{"name": "delete_everything", "arguments": {}}',  # not a tool of this env
    '{"answer": 42}',
    'Answer: {"name": "add", "arguments": {"a": 1}}',  # prose first: a final answer that quotes a call
    '{"name": "add", "arguments": {"a": 1}',  # broken JSON
    "",
])
def test_bare_json_that_is_not_a_known_call_is_a_final_answer(text):
    assert parse_tool_calls(text, tool_names=["add", "shout"]) == ([], [])


def test_tool_env_runs_bare_json_calls():
    env = AddEnv(max_turns=4)
    env.reset(seed=5)
    obs, reward, term, trunc, info = env.step('{"name": "add", "arguments": {"a": 5, "b": 6}}')
    assert obs == [{"role": "tool", "tool_call_id": "call_1_0", "name": "add", "content": "11"}] and not term


def test_native_tool_calls_are_taken_as_they_are():
    native = [{"id": "abc", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]
    msg = {"role": "assistant", "content": call_text("shout", {"text": "x", "times": 1}), "tool_calls": native}
    assert message_tool_calls(msg) == (native, [])
    calls, errors = message_tool_calls({"role": "assistant", "content": "", "tool_calls": [{"oops": 1}]})
    assert calls == [] and "function.name" in errors[0]


def test_hermes_prompt_lists_every_tool_and_the_format_we_parse():
    tools = [tool_schema(add), tool_schema(shout)]
    text = hermes_tools_prompt(tools)
    assert "<tools>" in text and "</tools>" in text and "<tool_call>" in text
    for t in tools:
        assert json.dumps(t) in text
    assert strip_tool_calls("before " + call_text("add", {"a": 1}) + " after") == "before  after"


# ---- ToolEnv --------------------------------------------------------------------------------------------
class AddEnv(ToolEnv):
    """Scripted-test env: the answer is a + b; tools: add, shout."""

    def tool_functions(self):
        return [add, shout]

    def make_task(self, index):
        return Task(id=f"add-{index}", prompt=f"What is {index} + {index + 1}?", answer=2 * index + 1)

    def grade_answer(self, text, task):
        ok = text.strip().endswith(str(task.answer))
        return float(ok), ("correct" if ok else "wrong_answer"), {}


def test_tool_env_full_episode():
    env = AddEnv(max_turns=4)
    assert [t["function"]["name"] for t in env.tools] == ["add", "shout"]
    obs, info = env.reset(seed=5)
    assert obs == [{"role": "user", "content": "What is 5 + 6?"}]
    obs, reward, term, trunc, info = env.step("Let me add. " + call_text("add", {"a": 5, "b": 6}))
    assert obs == [{"role": "tool", "tool_call_id": "call_1_0", "name": "add", "content": "11"}]
    assert (reward, term, trunc) == (0.0, False, False)
    assert info["tool_calls"] == 1 and info["tool_errors"] == 0
    assert info["parsed_tool_calls"][0]["function"]["name"] == "add"
    obs, reward, term, trunc, info = env.step("Answer: 11")
    assert (obs, reward, term, trunc, info["reason"]) == ([], 1.0, True, False, "correct")
    assert info["tool_calls"] == 1


def test_tool_env_native_openai_calls():
    env = AddEnv()
    env.reset(seed=1)
    action = {"role": "assistant", "content": "",
              "tool_calls": [
                  {"id": "srv-1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}},
                  {"id": "srv-2", "type": "function",
                   "function": {"name": "shout", "arguments": '{"text": "ok", "times": 2}'}}]}
    obs, _, _, _, info = env.step(action)
    assert [(m["tool_call_id"], m["content"]) for m in obs] == [("srv-1", "3"), ("srv-2", "OK OK")]
    assert info["tool_calls"] == 2 and "parsed_tool_calls" not in info


@pytest.mark.parametrize("reply, kind, needle", [
    ('<tool_call>{"name": "add", "arguments": {"a": 1,,}}</tool_call>', "parse", "invalid JSON"),
    (call_text("multiply", {"a": 1}), "unknown_tool", "unknown tool 'multiply'; available tools: add, shout"),
    (call_text("add", {"a": "one"}), "bad_arguments", "a: 'one' is not of type 'integer'"),
    (call_text("add", {"b": 2}), "bad_arguments", "'a' is a required property"),
    (call_text("add", {"a": 1, "c": 2}), "bad_arguments", "'c' was unexpected"),
    (call_text("shout", {"text": "x", "times": -1}), "tool_exception", "shout raised ValueError: times must be >= 0"),
])
def test_tool_errors_are_messages_to_the_model_and_counted(reply, kind, needle):
    env = AddEnv()
    env.reset(seed=2)
    obs, reward, term, trunc, info = env.step(reply)
    assert (reward, term, trunc) == (0.0, False, False)
    assert len(obs) == 1 and obs[0]["role"] == "tool" and obs[0]["content"].startswith("Error:")
    assert needle in obs[0]["content"]
    assert info["tool_errors"] == 1 and info["tool_error_kinds"][kind] == 1 and info["tool_calls"] == 1
    # the episode goes on: a correct final answer is still graded
    _, reward, term, _, info = env.step("Answer: 5")
    assert (reward, term, info["reason"]) == (1.0, True, "correct")
    assert info["tool_errors"] == 1


def test_good_and_bad_calls_in_one_reply():
    env = AddEnv()
    env.reset(seed=0)
    obs, _, _, _, info = env.step(call_text("add", {"a": 2}) + "<tool_call>{bad</tool_call>" + call_text("nope", {}))
    assert len(obs) == 3
    contents = sorted(m["content"] for m in obs)
    assert "3" in contents and sum(c.startswith("Error:") for c in contents) == 2
    assert (info["tool_calls"], info["tool_errors"]) == (3, 2)


def test_max_turns_truncates_a_tool_loop():
    env = AddEnv(max_turns=3)
    env.reset(seed=0)
    for turn in range(1, 4):
        obs, reward, term, trunc, info = env.step(call_text("add", {"a": turn}))
    assert (obs, reward, term, trunc, info["reason"]) == ([], 0.0, False, True, "max_turns")
    assert info["tool_calls"] == 3
    with pytest.raises(RuntimeError):
        env.step("Answer: 1")


def test_counts_reset_between_episodes_and_steps_are_deterministic():
    def run():
        env = AddEnv()
        env.reset(seed=3)
        a = env.step(call_text("add", {"a": "x"}))
        b = env.step(call_text("add", {"a": 3, "b": 4}))
        c = env.step("Answer: 7")
        return a, b, c

    assert run() == run()
    env = AddEnv()
    env.reset(seed=3)
    env.step(call_text("zzz", {}))
    env.reset(seed=3)
    *_, info = env.step("Answer: 7")
    assert (info["tool_calls"], info["tool_errors"]) == (0, 0)


def test_long_tool_output_is_cut():
    def blob(n: int) -> str:
        """Make a long text.

        Args:
            n: Its length.
        """
        return "x" * n

    class BlobEnv(AddEnv):
        def tool_functions(self):
            return [blob]

    env = BlobEnv()
    env.reset(seed=0)
    obs, *_ = env.step(call_text("blob", {"n": 100_000}))
    assert len(obs[0]["content"]) < 4100 and "output cut" in obs[0]["content"]


def test_describe_tools_in_prompt_appends_the_hermes_text_to_the_user_message():
    env = AddEnv(describe_tools_in_prompt=True)
    obs, _ = env.reset(seed=1, options={"system_prompt": "Be brief."})
    assert obs[0] == {"role": "system", "content": "Be brief."}
    assert obs[1]["content"].startswith("What is 1 + 2?") and hermes_tools_prompt(env.tools) in obs[1]["content"]


def test_env_without_tools_is_rejected():
    class Empty(AddEnv):
        def tool_functions(self):
            return []

    with pytest.raises(ValueError, match="no tools"):
        Empty()


def test_infrastructure_errors_raise_instead_of_being_scored():
    class Down(RuntimeError):
        pass

    def flaky(x: int) -> int:
        """Fail like a sandbox that went away.

        Args:
            x: Anything.
        """
        raise Down("daemon gone")

    class FlakyEnv(AddEnv):
        infrastructure_errors = (Down,)

        def tool_functions(self):
            return [flaky]

    env = FlakyEnv()
    env.reset(seed=0)
    with pytest.raises(Down, match="daemon gone"):
        env.step(call_text("flaky", {"x": 1}))
