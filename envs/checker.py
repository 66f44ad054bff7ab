"""`check_chat_env`: Gymnasium's env checker plus the chat contract of espl envs.

Run by `espl envs check [ID ...]` and by the test that goes over every registered id, so a new env is tested
by being registered (as Gymnasium's `utils/env_checker.py` does for its envs).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Callable, cast

import gymnasium as gym
from gymnasium.utils.env_checker import check_env

from espl.envs.core import MultiTurnEnv
from espl.envs.spaces import is_message

PROBE_PROMPT = "You are a careful assistant. [espl-check-probe]"


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str = ""


def _gymnasium_checker(env: gym.Env) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env.unwrapped, skip_render_check=True)


def _same_seed_same_task(env: gym.Env) -> None:
    a, ia = env.reset(seed=11)
    b, ib = env.reset(seed=11)
    assert a == b and ia["task_id"] == ib["task_id"], "reset(seed=11) twice gave different first observations"


def _different_seeds_different_tasks(env: gym.Env) -> None:
    ids = {env.reset(seed=s)[1]["task_id"] for s in range(5)}
    assert len(ids) >= 3, f"seeds 0..4 gave only {len(ids)} distinct task ids: {sorted(ids)}"


def _system_prompt_is_system_message(env: gym.Env) -> None:
    obs, _ = env.reset(seed=3, options={"system_prompt": PROBE_PROMPT})
    assert all(is_message(m) for m in obs), f"first observation is not a list of chat messages: {obs!r}"
    assert obs[0] == {"role": "system", "content": PROBE_PROMPT}, f"first message is not the system prompt: {obs[0]!r}"
    assert not any(PROBE_PROMPT in (m.get("content") or "") for m in obs[1:]), "system prompt leaked into later messages"
    bare, _ = env.reset(seed=3)
    assert all(m["role"] != "system" for m in bare), "a system message appears with system_prompt=None"
    assert bare == obs[1:], "the system prompt changed the task messages"


def _reward_in_declared_range(env: gym.Env) -> None:
    low, high = cast(MultiTurnEnv, env.unwrapped).reward_range
    for seed, reply in ((0, "Answer: 0"), (1, "I do not know."), (2, "\\boxed{1}"), (3, "")):
        env.reset(seed=seed)
        done, steps = False, 0
        while not done:
            _, reward, terminated, truncated, info = env.step(reply)
            assert low <= cast(float, reward) <= high, f"reward {reward} outside the declared range [{low}, {high}]"
            done, steps = terminated or truncated, steps + 1
            assert steps <= 1000, "episode did not end within 1000 steps"
        assert isinstance(info.get("reason"), str) and info["reason"], f"last step has no info['reason']: {info!r}"


def _step_after_end_raises(env: gym.Env) -> None:
    env.reset(seed=5)
    done = False
    while not done:
        _, _, terminated, truncated, _ = env.step("Answer: 0")
        done = terminated or truncated
    try:
        env.step("Answer: 0")
    except (RuntimeError, gym.error.ResetNeeded):
        return
    raise AssertionError("step() after the episode ended did not raise")


def _continuation_is_new_messages(env: gym.Env) -> None:
    """The multi-turn path: while an episode goes on, each step returns the env's new messages (feedback, tool
    results; never a system or assistant message, never empty) and a rising `info["turn"]`; the last
    step returns []. A single-turn env passes by ending at once."""
    for seed, reply in ((4, "Answer: 0"), (6, "I do not know.")):
        env.reset(seed=seed)
        done, turns = False, []
        while not done:
            obs, reward, terminated, truncated, info = env.step(reply)
            done = terminated or truncated
            turns.append(info["turn"])
            if done:
                assert obs == [], f"the last step returned messages {obs!r} (expected [])"
            else:
                assert obs and all(is_message(m) for m in obs), f"a continuing step returned {obs!r}, not new messages"
                assert all(m["role"] not in ("system", "assistant") for m in obs), \
                    f"a continuing step returned a {[m['role'] for m in obs]} message"
            assert len(turns) <= 1000, "episode did not end within 1000 steps"
        assert turns == sorted(set(turns)), f"info['turn'] did not rise over the episode: {turns}"


SPLIT_PROBE = 32  # tasks of each split compared


def _splits_are_disjoint(env: gym.Env) -> None:
    """The first SPLIT_PROBE tasks of the train and the test split share no task id and no task (messages and
    tools)."""
    base = env.unwrapped
    if getattr(base, "split", None) not in ("train", "test") or env.spec is None:
        return  # not a split env
    kwargs = dict(env.spec.kwargs or {})
    seen: dict[str, tuple[set, set]] = {}
    for split in ("train", "test"):
        other = gym.make(env.spec.id, **{**kwargs, "split": split})
        try:
            ids, texts = set(), set()
            for s in range(SPLIT_PROBE):
                obs, info = other.reset(seed=s)
                ids.add(info["task_id"])
                # a task is its messages and the tools it offers (BFCL reuses a question with other tools)
                texts.add(json.dumps([obs, getattr(other.unwrapped, "tools", None)], sort_keys=True, default=str))
            seen[split] = (ids, texts)
        finally:
            other.close()
    shared_ids = seen["train"][0] & seen["test"][0]
    assert not shared_ids, f"train and test share task ids {sorted(shared_ids)[:3]}"
    shared = seen["train"][1] & seen["test"][1]
    assert not shared, f"train and test share {len(shared)} task text(s), e.g. {sorted(shared)[0][:120]}"


CHECKS: tuple[tuple[str, Callable[[gym.Env], None]], ...] = (
    ("gymnasium check_env", _gymnasium_checker),
    ("same seed -> same task", _same_seed_same_task),
    ("different seeds -> different tasks", _different_seeds_different_tasks),
    ("system prompt is the system message", _system_prompt_is_system_message),
    ("reward in declared range", _reward_in_declared_range),
    ("reply after termination raises", _step_after_end_raises),
    ("a continuing step returns new messages", _continuation_is_new_messages),
    ("train and test splits are disjoint", _splits_are_disjoint),
)


def check_chat_env(env_id: str, **kwargs) -> list[CheckResult]:
    """Run every check on a fresh env of `env_id`; returns one result per check (never raises for a failure)."""
    results = []
    try:
        env = gym.make(env_id, **kwargs)
    except Exception as exc:
        return [CheckResult("make", False, f"{type(exc).__name__}: {exc}")]
    try:
        for name, check in CHECKS:
            try:
                check(env)
                results.append(CheckResult(name, True))
            except Exception as exc:
                results.append(CheckResult(name, False, f"{type(exc).__name__}: {exc}"))
    finally:
        env.close()
    return results
