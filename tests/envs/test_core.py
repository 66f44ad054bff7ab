"""The MultiTurnEnv contract itself, on a minimal env defined here (as a user would write one)."""

from __future__ import annotations

import gymnasium as gym
import pytest

from espl.envs import ChatMessage, ChatMessages, MultiTurnEnv, Outcome, Task
from espl.envs.checker import check_chat_env
from espl.envs.core import MAX_REPLY_CHARS


class GuessEnv(MultiTurnEnv):
    """Guess the number; two attempts; feedback after a wrong one."""

    family = "toy"

    def __init__(self, **kw):
        super().__init__(max_turns=2, **kw)

    def make_task(self, index: int) -> Task:
        n = index % 97 + (0 if self.split == "train" else 100)  # disjoint splits (the checker tests that)
        return Task(id=f"guess/{self.split}/{index}", prompt=f"Guess {n}", answer=str(n))

    def evaluate(self, reply, task, turn):
        ok = reply["content"].strip() == task.answer
        if ok:
            return Outcome(1.0, "correct", True)
        return Outcome(0.0, "wrong_answer", False, ({"role": "user", "content": "No, try again."},))


@pytest.fixture
def env():
    return GuessEnv()


def test_first_observation_has_system_then_user(env):
    obs, info = env.reset(seed=5, options={"system_prompt": "Be exact."})
    assert obs == [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Guess 5"}]
    assert info["task_id"] == "guess/train/5"


def test_user_placement_puts_prompt_in_user_turn(env):
    obs, _ = env.reset(seed=5, options={"system_prompt": "Be exact.", "system_prompt_placement": "user"})
    # the E-SPL reference's user turn: problem first, then the principles (tests/trainer/test_reference_text.py)
    assert obs == [{"role": "user", "content": "Please solve the following problem:\nGuess 5\n\nWhen solving problems, "
                    "you MUST first carefully read and understand the helpful instructions and principles below:\n"
                    "Be exact."}]
    obs, _ = env.reset(seed=5, options={"system_prompt": None, "system_prompt_placement": "user"})
    assert obs == [{"role": "user", "content": "Guess 5"}]  # no prompt: the raw problem, as the reference


def test_wrong_then_right_is_multi_turn(env):
    env.reset(seed=5)
    obs, r, term, trunc, info = env.step("4")
    assert (r, term, trunc) == (0.0, False, False) and obs[0]["content"] == "No, try again."
    assert "reason" not in info
    obs, r, term, trunc, info = env.step({"role": "assistant", "content": "5"})
    assert (obs, r, term, trunc, info["reason"]) == ([], 1.0, True, False, "correct")


def test_turn_limit_truncates_with_reason(env):
    env.reset(seed=5)
    env.step("1")
    _, r, term, trunc, info = env.step("2")
    assert (r, term, trunc, info["reason"]) == (0.0, False, True, "max_turns")


def test_step_after_end_raises(env):
    env.reset(seed=5)
    env.step("5")
    with pytest.raises(RuntimeError, match="reset"):
        env.step("5")


def test_step_before_reset_raises():
    with pytest.raises(RuntimeError):
        GuessEnv().step("1")


@pytest.mark.parametrize("bad", [42, None, ["5"], {"role": "user", "content": "5"}, {"role": "assistant", "content": 5}])
def test_bad_action_type_raises_type_error(env, bad):
    env.reset(seed=1)
    with pytest.raises(TypeError, match="assistant"):
        env.step(bad)


def test_surrogates_bytes_and_megabyte_replies_are_scored(env):
    env.reset(seed=1)
    _, r, *_ = env.step("\udcff\udcfe 7")
    assert r == 0.0
    env.reset(seed=1)
    _, r, _, _, info = env.step("x" * (MAX_REPLY_CHARS + 10) + "1")
    assert info.get("reply_cut") is True
    env.reset(seed=1)
    _, r, *_ = env.step(b"\xff\xfe1")
    assert r == 0.0


def test_bad_constructor_and_options_name_the_field():
    with pytest.raises(ValueError, match="split"):
        GuessEnv(split="validation")
    env = GuessEnv()
    with pytest.raises(ValueError, match="system_prompt_placement"):
        env.reset(seed=1, options={"system_prompt": "x", "system_prompt_placement": "middle"})
    with pytest.raises(ValueError, match="unknown keys"):
        env.reset(seed=1, options={"sys_prompt": "x"})


def test_spaces_contain_messages():
    assert ChatMessage().contains("hi") and ChatMessage().contains({"role": "assistant", "content": "hi"})
    assert not ChatMessage().contains({"role": "user", "content": "hi"})
    space = ChatMessages(seed=0)
    assert space.contains(space.sample())


def test_checker_passes_on_a_user_env_and_catches_a_broken_one():
    gym.register(id="testing/Guess-v0", entry_point=GuessEnv)
    assert all(r.ok for r in check_chat_env("testing/Guess-v0"))

    class LeakyEnv(GuessEnv):  # puts the system prompt into the user message even in "system" mode
        def reset(self, *, seed=None, options=None):
            obs, info = super().reset(seed=seed, options=options)
            sp = (options or {}).get("system_prompt")
            return ([{"role": "user", "content": f"{sp}\n{obs[-1]['content']}"}] if sp else obs), info

    gym.register(id="testing/Leaky-v0", entry_point=LeakyEnv)
    bad = {r.name for r in check_chat_env("testing/Leaky-v0") if not r.ok}
    assert "system prompt is the system message" in bad
