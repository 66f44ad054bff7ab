"""espl/ToolMath-v0: the calculator, the task set, and episodes with scripted agent replies."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest

import espl  # noqa: F401  (registers the envs)
from espl.envs.toolmath import CalculatorError, ToolMathEnv, safe_eval, task_split
from tests.conftest import require


def call(name, **args):
    return f'<tool_call>{json.dumps({"name": name, "arguments": args})}</tool_call>'


# ---- calculator --------------------------------------------------------------------------------------
@pytest.mark.parametrize("expr, expected", [
    ("361 * 220", "79420"),
    ("-( -129 * -76 + 731 + 873 * -691 )", "592708"),
    ("7 / 2", "3.5"),
    ("6 / 3", "2"),
    ("2^10", "1024"),
    ("2 ** 10 - 1", "1023"),
    ("17 // 5 + 17 % 5", "5"),
    ("sqrt(16) + abs(-3)", "7"),
    ("round(2.567, 2)", "2.57"),
    ("12 × 3 ÷ 4 =", "9"),
    ("1/3", "0.333333333333"),
])
def test_calculator(expr, expected):
    assert safe_eval(expr) == expected


@pytest.mark.parametrize("expr, needle", [
    ("__import__('os').system('true')", "not allowed"),
    ("open('/etc/passwd')", "not allowed"),
    ("x + 1", "name 'x' is not allowed"),
    ("(1).__class__", "Attribute is not allowed"),
    ("[1, 2]", "List is not allowed"),
    ("1 +", "cannot parse"),
    ("1 / 0", "division by zero"),
    ("9 ** 9 ** 9", "exponent too large"),
    ("(10 ** 999) ** 3", "result too large"),
    ("10 ** 999 * 10 ** 999", "result too large"),
    ("1e308 * 10", "not finite"),
    ("", "empty"),
    ("1 + " * 300 + "1", "longer than"),
])
def test_calculator_refuses_unsafe_or_huge_input(expr, needle):
    with pytest.raises(CalculatorError, match=needle):
        safe_eval(expr)


# ---- tasks -------------------------------------------------------------------------------------------
def test_tasks_are_seeded_mixed_and_splits_disjoint():
    train, test = ToolMathEnv(python_tool="off"), ToolMathEnv(split="test", python_tool="off")
    a = [train.make_task(i) for i in range(60)]
    assert a == [train.make_task(i) for i in range(60)]
    assert {t.data["generator"] for t in a} == {"products", "basic_arithmetic"}
    b = [test.make_task(i) for i in range(60)]
    assert all(task_split(t.data["question"]) == "train" for t in a)
    assert all(task_split(t.data["question"]) == "test" for t in b)
    assert not {t.data["question"] for t in a} & {t.data["question"] for t in b}
    assert len({t.data["question"] for t in a}) == 60
    # the products really need exact multi-digit arithmetic
    assert all(int(t.answer.lstrip("-")) >= 1000 for t in a if t.data["generator"] == "products")


# ---- episodes ----------------------------------------------------------------------------------------
def test_calculator_episode_with_scripted_agent():
    env = gym.make("espl/ToolMath-v0", python_tool="off").unwrapped
    assert [t["function"]["name"] for t in env.tools] == ["calculator"]
    obs, info = env.reset(seed=0)
    question = env.task.data["question"]
    expr = question.split(": ", 1)[1].split(". Give")[0] if "multiplication" in question else question[10:-1]
    obs, reward, term, trunc, info = env.step("Let me compute.\n" + call("calculator", expression=expr))
    assert obs[0]["role"] == "tool" and obs[0]["content"] == env.task.answer
    assert (reward, term, trunc) == (0.0, False, False)
    obs, reward, term, trunc, info = env.step(f"The product is {obs[0]['content']}.\nAnswer: {obs[0]['content']}")
    assert (reward, term, trunc, info["reason"], info["extraction"]) == (1.0, True, False, "correct", "answer_line")
    assert info["tool_calls"] == 1


def test_calculator_errors_reach_the_model_and_wrong_answers_score_zero():
    env = ToolMathEnv(python_tool="off", max_turns=3)
    env.reset(seed=1)
    obs, _, _, _, info = env.step(call("calculator", expression="import os"))
    assert obs[0]["content"].startswith("Error: calculator raised CalculatorError: cannot parse")
    obs, _, _, _, info = env.step(call("calculator", expr="1+1"))
    assert "bad arguments for calculator" in obs[0]["content"] and info["tool_errors"] == 2
    _, reward, term, _, info = env.step("Answer: 12")
    assert (reward, term, info["reason"]) == (0.0, True, "wrong_answer")


def test_a_plain_number_is_not_computed_again_and_the_error_says_to_answer():
    """What Qwen2.5-Coder-0.5B did in 11 of 32 episodes: call the calculator on its own result until max_turns."""
    from espl.envs.toolmath import calculator

    for expr in ("37816200", " -12 ", "+3.5", "42 ="):
        with pytest.raises(CalculatorError, match="already a number.*Answer: "):
            calculator(expr)
    assert calculator("37816200 * 1") == "37816200" and safe_eval("37816200") == "37816200"
    env = ToolMathEnv(python_tool="off")
    env.reset(seed=0)
    obs, reward, term, trunc, info = env.step(call("calculator", expression="5364"))
    assert "already a number" in obs[0]["content"] and "Answer: 5364" in obs[0]["content"]
    assert (reward, term, info["tool_error_kinds"]["tool_exception"]) == (0.0, False, 1)


def test_python_tool_is_offered_only_with_a_sandbox():
    from espl.envs import toolmath

    run, why = toolmath._python_sandbox()
    env = ToolMathEnv()
    names = [t["function"]["name"] for t in env.tools]
    assert names == (["calculator", "python"] if run else ["calculator"])
    if run is None:
        with pytest.raises(RuntimeError, match="python_tool='on'"):
            ToolMathEnv(python_tool="on")
    with pytest.raises(ValueError, match="python_tool"):
        ToolMathEnv(python_tool="maybe")


@pytest.mark.docker
def test_python_tool_runs_in_the_sandbox():
    from espl.envs import toolmath

    run, why = toolmath._python_sandbox()
    require(run is not None, f"the Docker sandbox for the python tool ({why})")
    env = ToolMathEnv(python_tool="on")
    env.reset(seed=3)
    obs, *_ = env.step(call("python", code="print(6403 * 1471)"))
    assert obs[0]["name"] == "python" and "9418813" in obs[0]["content"]
    obs, *_, info = env.step(call("python", code="import socket; socket.create_connection(('1.1.1.1', 80), 2)"))
    assert "Error" in obs[0]["content"] or "Traceback" in obs[0]["content"]
