"""`espl envs check` catches an env whose train and test splits share tasks and one whose continuing step
returns the wrong messages (issue 13.10): each check is shown to fail on a broken env and pass on a real one."""

from __future__ import annotations

import gymnasium as gym

import espl  # noqa: F401  (registers the envs)
from espl.envs.checker import check_chat_env
from espl.envs.core import MultiTurnEnv, Outcome, Task


class _TwoTurns(MultiTurnEnv):
    """A real env of the contract: wrong on turn 1 gets feedback, turn 2 ends. `leak`: the split is ignored."""

    leak = False
    echo_history = False

    def __init__(self, **kw):
        super().__init__(max_turns=2, **kw)

    def make_task(self, index: int) -> Task:
        tag = "" if self.leak else f"{self.split}-"
        return Task(id=f"{tag}{index}", prompt=f"What is {index} + 1? ({tag or 'any'})", answer=str(index + 1))

    def evaluate(self, reply, task, turn) -> Outcome:
        right = reply.get("content", "").strip().endswith(task.answer)
        if right or turn == 2:
            return Outcome(1.0 if right else 0.0, "correct" if right else "wrong_answer", True)
        feedback = [{"role": "user", "content": "Not quite; try again."}]
        return Outcome(0.0, "", False, messages=list(self.history) + feedback if self.echo_history else feedback)


class _Leaky(_TwoTurns):
    leak = True


class _Echoing(_TwoTurns):
    echo_history = True


for name, cls in (("Good", _TwoTurns), ("Leaky", _Leaky), ("Echoing", _Echoing)):
    if f"espl-test/Check{name}-v0" not in gym.registry:
        gym.register(f"espl-test/Check{name}-v0", entry_point=cls)


def _failed(env_id):
    return {r.name: r.detail for r in check_chat_env(env_id) if not r.ok}


def test_a_good_two_turn_env_passes():
    assert _failed("espl-test/CheckGood-v0") == {}


def test_shared_tasks_between_splits_fail():
    failed = _failed("espl-test/CheckLeaky-v0")
    assert list(failed) == ["train and test splits are disjoint"] and "share task ids" in failed[
        "train and test splits are disjoint"]


def test_a_continuation_that_repeats_the_history_fails():
    failed = _failed("espl-test/CheckEchoing-v0")
    assert "a continuing step returns new messages" in failed
    assert "'assistant'" in failed["a continuing step returns new messages"]


def test_math_with_two_attempts_takes_the_continuation_path():
    failed = {r.name: r.detail for r in check_chat_env("espl/Math-v0", max_attempts=2) if not r.ok}
    assert failed == {}
