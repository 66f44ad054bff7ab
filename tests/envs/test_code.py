"""espl/Code-v0: code extraction, problems, the split, scoring in the real sandbox, multi-turn feedback, hacks."""

from __future__ import annotations

import gymnasium as gym
import pytest

import espl  # noqa: F401  (registers the envs)
from espl.envs.code import extract_code
from espl.envs.code_problems import generate_problem, humaneval_problems, instrument_tests, split_of_spec
from tests.conftest import require


def _docker_ready() -> bool:
    from espl.sandboxes.python_tool import sandbox_available

    return sandbox_available()


@pytest.fixture(scope="module")
def docker():
    require(_docker_ready(), "Docker daemon with the espl-sandbox image (`espl sandbox build`)")


def fenced(code: str) -> str:
    return f"Here you go:\n```python\n{code}\n```\nDone."


# ---- parsing and problems (no Docker) ---------------------------------------------------------------------------
@pytest.mark.parametrize("reply, want", [
    ("I don't know", "no_code"),
    ("Answer: 0", "no_code"),
    (fenced("def f(:\n    pass"), "syntax_error"),
    (fenced("def g(x):\n    return x"), "missing_function"),
    ("```python\n\x00\n```", "syntax_error"),
    ("```python\n" + "(" * 10000 + "\n```", "syntax_error"),
])
def test_unusable_replies_are_reasons(reply, want):
    assert extract_code(reply, "f") == (None, want)


def test_extraction_prefers_the_block_defining_the_function():
    reply = "```python\ndef f(x):\n    return 1\n```\nand a test:\n```python\nprint(f(2))\n```"
    assert extract_code(reply, "f") == ("def f(x):\n    return 1\n", "")
    assert extract_code("def f(x):\n    return 2", "f")[0] == "def f(x):\n    return 2"  # bare code
    assert extract_code("```py\ndef f(x):\n    return 3", "f")[0] == "def f(x):\n    return 3"  # cut-off reply


def test_humaneval_all_164_load_and_instrument():
    problems = humaneval_problems()
    assert len(problems) == 164 and len({p.id for p in problems}) == 164
    counts = [len(instrument_tests(p.tests).texts) for p in problems]
    assert min(counts) >= 1
    # `assert True` lines of HumanEval are not counted as tests
    assert not any(t.startswith("assert True") for p in problems for t in instrument_tests(p.tests).texts)


def test_generated_problems_are_deterministic_and_the_splits_disjoint():
    assert generate_problem("train", 5) == generate_problem("train", 5)
    train = {generate_problem("train", i).id.rsplit("/", 1)[0] for i in range(600)}
    test = {generate_problem("test", i).id.rsplit("/", 1)[0] for i in range(150)}
    assert len(train) > 200 and len(test) > 30 and not train & test
    for spec_id in list(train)[:50]:
        family, _, spec = spec_id.removeprefix("gen/").partition("-")
        assert split_of_spec(family, spec) == "train"


def test_bad_env_arguments():
    from espl.envs.code import CodeEnv

    for kw, match in ((dict(reward="some"), "reward"), (dict(test_source="x"), "test_source"),
                      (dict(timeout_s=0), "timeout_s"), (dict(max_turns=0), "max_turns")):
        with pytest.raises(ValueError, match=match):
            CodeEnv(**kw)


def test_docker_down_is_a_clear_error_when_stepping(monkeypatch, tmp_path):
    from espl.sandboxes.core import SandboxUnavailable
    from espl.sandboxes.shared import close_shared_pool

    close_shared_pool()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    env = gym.make("espl/Code-v0", split="test")
    env.reset(seed=0)
    assert env.step("no code at all")[1] == 0.0  # scored without Docker
    env.reset(seed=0)
    with pytest.raises(SandboxUnavailable, match=r"espl/Code-v0 runs its tests in a Docker sandbox.*start the daemon"):
        env.step(fenced(humaneval_problems()[0].reference))
    close_shared_pool()


# ---- in the sandbox ------------------------------------------------------------------------------------------------
def test_reference_solutions_pass_generated(docker):
    env = gym.make("espl/Code-v0", split="train")
    for seed in range(12):
        env.reset(seed=seed)
        _, reward, terminated, _, info = env.step(fenced(env.unwrapped.task.answer))
        assert (reward, terminated, info["reason"]) == (1.0, True, "correct"), (env.unwrapped.task.id, info)


@pytest.mark.slow
def test_reference_solutions_pass_all_of_humaneval(docker):
    env = gym.make("espl/Code-v0", split="test")
    failed = []
    for seed in range(164):
        env.reset(seed=seed)
        _, reward, _, _, info = env.step(fenced(env.unwrapped.task.answer))
        if reward != 1.0:
            failed.append((env.unwrapped.task.id, info))
    assert not failed


def test_partial_credit_and_all_pass_modes(docker):
    # HumanEval/0 (has_close_elements): "always False" passes exactly the tests that expect False
    code = fenced("def has_close_elements(numbers, threshold):\n    return False")
    frac = gym.make("espl/Code-v0", split="test")
    frac.reset(seed=0)
    _, r_frac, _, _, info = frac.step(code)
    assert 0 < r_frac < 1 and r_frac == info["passed"] / info["total"] and info["reason"] == "wrong_answer"
    strict = gym.make("espl/Code-v0", split="test", reward="all_pass")
    strict.reset(seed=0)
    assert strict.step(code)[1] == 0.0


@pytest.mark.parametrize("hack", [
    "import sys\nsys.exit(0)",
    "import os\nos._exit(0)",
    "print('{\"t\": \"x\", \"i\": 0, \"ok\": true}')\nraise SystemExit",
    "def has_close_elements(numbers, threshold):\n    import os; os.kill(os.getpid(), 9)",
    "def has_close_elements(numbers, threshold):\n    while True: pass",
])
def test_reward_hacks_score_zero(docker, hack):
    env = gym.make("espl/Code-v0", split="test", timeout_s=4, per_test_timeout_s=1)
    env.reset(seed=0)
    reply = fenced("def has_close_elements(numbers, threshold):\n    return True\n" + hack)
    _, reward, terminated, _, info = env.step(reply)
    assert reward == 0.0 and terminated, info


def test_always_equal_object_does_not_pass_generated_tests(docker):
    env = gym.make("espl/Code-v0", split="train")
    env.reset(seed=1)
    name = env.unwrapped.task.data["entry_point"]
    hack = f"class E:\n    def __eq__(self, o):\n        return True\n\ndef {name}(*a):\n    return E()"
    assert env.step(fenced(hack))[1] == 0.0


def test_multi_turn_feedback_then_fix(docker):
    env = gym.make("espl/Code-v0", split="train", max_turns=3)
    obs, _ = env.reset(seed=3)
    task = env.unwrapped.task
    name = task.data["entry_point"]
    obs, reward, terminated, truncated, info = env.step("let me think")
    assert (reward, terminated, truncated) == (0.0, False, False) and "```python" in obs[0]["content"]
    obs, reward, terminated, truncated, info = env.step(fenced(f"def {name}(*args):\n    print('debug')\n    return None"))
    assert (reward, terminated) == (0.0, False) and info["attempt_reason"] == "wrong_answer"
    text = obs[0]["content"]
    assert obs[0]["role"] == "user" and "First failing test" in text and "returned None" in text and "debug" in text
    assert f"assert {name}(" in text and "_espl" not in text  # the test reads as plain Python
    _, reward, terminated, _, info = env.step(fenced(task.answer))
    assert (reward, terminated, info["reason"], info["turn"]) == (1.0, True, "correct", 3)


def test_last_turn_is_rewarded_by_the_last_attempt(docker):
    env = gym.make("espl/Code-v0", split="test", max_turns=2)
    env.reset(seed=0)
    env.step("no code")
    _, reward, terminated, truncated, info = env.step(fenced("def has_close_elements(numbers, threshold):\n    return False"))
    assert terminated and not truncated and 0 < reward < 1 and info["reason"] == "wrong_answer"


def test_runtime_error_at_load(docker):
    env = gym.make("espl/Code-v0", split="test", max_turns=2)
    env.reset(seed=0)
    obs, *_ = env.step(fenced("import no_such_module\ndef has_close_elements(numbers, threshold):\n    return 1"))
    assert "ModuleNotFoundError" in obs[0]["content"]
