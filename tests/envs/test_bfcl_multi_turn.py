"""BFCL v4 multi-turn envs: BFCL's backends stepping per call, a perfect agent, verdicts side by side with BFCL's
own `multi_turn_checker`, bad input as scored outcomes, and no backend state leaking between episodes."""

from __future__ import annotations

import copy
import itertools

import gymnasium as gym
import pytest

import espl  # noqa: F401  (registers the envs)
from tests.conftest import require


def _mt():
    from espl.envs import bfcl, bfcl_multi_turn

    require(bfcl.bfcl_available(), f"the bfcl-eval package ({bfcl.INSTALL_HINT})")
    return bfcl_multi_turn


def _play(env, turns, seed=None, task=None):
    """Run replies turn by turn until the episode ends; returns the last (reward, info) and all observations."""
    env.reset(seed=seed, options={"task": task} if task is not None else None)
    seen = []
    for replies in turns:
        for reply in replies:
            obs, reward, terminated, truncated, info = env.step(reply)
            seen.extend(obs)
            if terminated or truncated:
                return reward, info, seen
    raise AssertionError("episode did not end after every turn was played")


def test_registry_matches_the_categories():
    mt = _mt()
    from espl.envs.registration import _BFCL_MULTI_TURN

    assert _BFCL_MULTI_TURN == mt.MULTI_TURN_CATEGORIES


def _perfect_rate(mt, category, split, every=1):
    env = mt.BFCLMultiTurnEnv(category=category, split=split)
    failed = {}
    for i in range(0, len(env.items), every):
        task = env.make_task(i)
        reward, info, _ = _play(env, mt.perfect_replies(task.data["item"]), task=task)
        if reward != 1.0:
            failed[task.id] = (info["reason"], info["error"])
    return failed


@pytest.mark.parametrize("category", ["multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param",
                                      "multi_turn_long_context"])
def test_perfect_agent_scores_one_on_every_held_out_item(category):
    mt = _mt()
    assert _perfect_rate(mt, category, "test") == {}


@pytest.mark.slow
def test_perfect_agent_scores_one_on_every_train_item():
    mt = _mt()
    for category in mt.MULTI_TURN_CATEGORIES:
        assert _perfect_rate(mt, category, "train") == {}, category


# ---- side by side with BFCL's multi_turn_checker --------------------------------------------------------
def _changed(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 1
    if isinstance(v, str):
        return f"{v}_x"
    return [v] if not isinstance(v, list) else [*v, *v[:1]]


def _agents(mt, item):
    """(label, replies per turn): the perfect agent and perturbations of it (in the first turn with calls)."""
    truth = mt.truth_calls(item)
    yield "perfect", mt.replies_for(truth)
    first = next((i for i, t in enumerate(truth) if t), None)
    if first is None:
        return

    def variant(calls):
        t = copy.deepcopy(truth)
        t[first] = calls
        return mt.replies_for(t)

    calls = truth[first]
    if len(calls) > 1:
        yield "last_call_dropped", variant(calls[:-1])
        yield "calls_reordered", variant(list(reversed(calls)))
    name, args = calls[0]
    if args:
        key = next(iter(args))
        yield "wrong_value", variant([(name, {**args, key: _changed(args[key])}), *calls[1:]])
        yield "missing_argument", variant([(name, {k: v for k, v in args.items() if k != key}), *calls[1:]])
    yield "extra_argument", variant([(name, {**args, "espl_extra": 1}), *calls[1:]])
    yield "extra_unknown_call", variant([*calls, ("no_such_function", {})])
    yield "duplicated_calls", variant([*calls, *calls])
    t = copy.deepcopy(truth)
    t[first] = []
    yield "turn_skipped", mt.replies_for(t)


def test_verdicts_agree_with_bfcls_multi_turn_checker():
    """Ours: the env stepping BFCL's backends call by call and checking each turn. BFCL's: its
    `multi_turn_checker` (run unchanged, test-only: it `eval`s call strings, here strings the env recorded from
    dataset calls and their perturbations, never a model's text) on the calls the env recorded in `info`."""
    mt = _mt()
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    counter = itertools.count()
    disagreements, verdicts = [], {}
    for category in mt.MULTI_TURN_CATEGORIES:
        env = mt.BFCLMultiTurnEnv(category=category, split="test")
        for i in range(0, len(env.items), 4):  # a quarter of the held-out items of each category
            task = env.make_task(i)
            item = task.data["item"]
            for label, turns in _agents(mt, item):
                reward, info, _ = _play(env, turns, task=task)
                calls = info["calls"] + [[] for _ in range(len(item["possible_answer"]) - len(info["calls"]))]
                entry = {"id": item["id"], "initial_config": item["initial_config"],
                         "involved_classes": item["involved_classes"]}
                # a fresh model name per call: BFCL's executor caches instances in globals() by name and id
                official = multi_turn_checker(calls, item["possible_answer"], entry, category,
                                              f"espl_side_by_side_{next(counter)}")
                verdicts.setdefault(label, [0, 0])[bool(official["valid"])] += 1
                if (reward == 1.0) != bool(official["valid"]):
                    disagreements.append((item["id"], label, reward, info["reason"], official.get("error_type")))
    assert not disagreements, disagreements[:10]
    assert verdicts["perfect"][0] == 0 and verdicts["perfect"][1] >= 40
    for label in ("wrong_value", "turn_skipped", "last_call_dropped", "missing_argument", "extra_argument"):
        assert verdicts[label][0] > 0, (label, verdicts[label])


# ---- bad input, errors and isolation ------------------------------------------------------------------
def _base_item_task(mt):
    env = gym.make("espl/BFCL-MultiTurnBase-v0", split="test").unwrapped
    task = env.make_task(0)
    return env, task


def test_bad_calls_are_tool_errors_never_crashes():
    mt = _mt()
    env, task = _base_item_task(mt)
    env.reset(options={"task": task})
    names = [f["name"] for f in task.data["item"]["function"]]
    some = names[0]
    reply = (f'<tool_call>{{"name": "no_such_function", "arguments": {{}}}}</tool_call>\n'
             f'<tool_call>{{"name": "{some}", "arguments": {{"espl_bogus": [1, 2]}}}}</tool_call>')
    obs, reward, terminated, truncated, info = env.step(reply)
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert [m["role"] for m in obs] == ["tool", "tool"]
    assert obs[0]["content"] == "Error during execution: name 'no_such_function' is not defined"
    assert obs[1]["content"].startswith("Error during execution:") and "espl_bogus" in obs[1]["content"]
    assert info["parsed_tool_calls"][0]["function"]["name"] == "no_such_function"
    # a malformed call ends the turn (BFCL: decode failure -> next turn), scored, not raised
    obs, reward, terminated, truncated, info = env.step('<tool_call>{"name": "cd", "arguments": {</tool_call>')
    assert terminated and reward == 0.0
    assert info["reason"].startswith("multi_turn:") and info["valid"] is False
    assert info["calls"][0] == [["no_such_function()", f"{some}(espl_bogus=[1, 2])"]]


def test_a_backend_method_that_raises_is_a_tool_error():
    mt = _mt()
    env = mt.BFCLMultiTurnEnv(category="multi_turn_base", split="test")
    idx = next(i for i, it in enumerate(env.items) if "MathAPI" in it["involved_classes"]) \
        if any("MathAPI" in it["involved_classes"] for it in env.items) else None
    if idx is None:
        env = mt.BFCLMultiTurnEnv(category="multi_turn_base", split="train")
        idx = next(i for i, it in enumerate(env.items) if "MathAPI" in it["involved_classes"])
    env.reset(seed=idx)
    obs, *_ = env.step('<tool_call>{"name": "logarithm", "arguments": {"value": "x", "base": 10, '
                       '"precision": 3}}</tool_call>')
    assert obs[0]["role"] == "tool" and "error" in obs[0]["content"].lower()
    # the call went to the real backend method (its own error text), not to a stand-in
    assert obs[0]["content"] != "Error during execution: name 'logarithm' is not defined"


def test_forbidden_names_and_no_eval():
    mt = _mt()
    env, task = _base_item_task(mt)
    env.reset(options={"task": task})
    obs, *_ = env.step('<tool_call>{"name": "exit", "arguments": {}}</tool_call>\n'
                       '<tool_call>{"name": "__import__(\'os\').system(\'touch /tmp/espl_pwned\')", '
                       '"arguments": {}}</tool_call>')
    assert obs[0]["content"] == "Error during execution: Function call exit is not allowed."
    assert obs[1]["content"].startswith("Error during execution: name ")
    import os

    assert not os.path.exists("/tmp/espl_pwned")


def test_ground_truth_strings_are_parsed_not_evaluated():
    mt = _mt()
    assert mt.parse_call_string("sort('final_report.pdf')") == ("sort", ("final_report.pdf",), {})
    assert mt.parse_call_string("mv(source='a', destination=\"b\")") == ("mv", (), {"source": "a", "destination": "b"})
    for bad in ("__import__('os').system('x')", "f(x=open('y'))", "a.b(1)"):
        with pytest.raises(ValueError):
            mt.parse_call_string(bad)


def _state(instances):
    return {name: {k: copy.deepcopy(v) for k, v in vars(inst).items() if not k.startswith("_")}
            for name, inst in instances.items()}


@pytest.mark.parametrize("category", ["multi_turn_base", "multi_turn_long_context"])
def test_backend_state_never_leaks_between_episodes(category):
    mt = _mt()
    env = mt.BFCLMultiTurnEnv(category=category, split="test")
    for i in range(6):
        task = env.make_task(i)
        env.reset(options={"task": task})
        before = _state(env._model)
        reward, info, _ = _play(env, mt.perfect_replies(task.data["item"]), task=task)
        assert reward == 1.0
        assert any(step for turn in info["calls"] for step in turn)
        changed = _state(env._model) != before
        env.reset(options={"task": task})
        assert _state(env._model) == before, f"{task.id}: state after a second reset differs from the first"
        assert _state(env._truth) == before
        if changed:
            assert env._model is not None
    # two envs in one process do not share instances
    a, b = mt.BFCLMultiTurnEnv(category=category, split="test"), mt.BFCLMultiTurnEnv(category=category, split="test")
    a.reset(seed=0)
    b.reset(seed=0)
    assert all(a._model[k] is not b._model[k] for k in a._model)


def test_miss_func_adds_the_held_back_function_at_its_turn():
    mt = _mt()
    env = mt.BFCLMultiTurnEnv(category="multi_turn_miss_func", split="test")
    task = env.make_task(0)
    item = task.data["item"]
    (turn, docs), = item["missed_function"].items()
    held = {d["name"] for d in docs}
    env.reset(options={"task": task})
    assert not held & {t["function"]["name"] for t in env.tools}
    seen = []
    for t, replies in enumerate(mt.perfect_replies(item)):
        for reply in replies:
            obs, reward, terminated, truncated, info = env.step(reply)
            seen.append((t, obs))
            if terminated:
                break
    assert reward == 1.0
    assert held <= {t["function"]["name"] for t in env.tools}
    intro = [obs for t, obs in seen if obs and obs[0]["role"] == "user" and mt.ADDITIONAL_FUNCTION_PROMPT in obs[0]["content"]]
    assert len(intro) == 1 and all(name in intro[0][0]["content"] for name in held)


def test_force_terminated_after_the_step_limit():
    mt = _mt()
    env = mt.BFCLMultiTurnEnv(category="multi_turn_base", split="test", max_steps_per_turn=3)
    env.reset(seed=0)
    name = env.task.data["item"]["function"][0]["name"]
    for _ in range(3):
        _, _, terminated, _, _ = env.step(f'<tool_call>{{"name": "{name}", "arguments": {{}}}}</tool_call>')
        assert not terminated
    _, reward, terminated, truncated, info = env.step(f'<tool_call>{{"name": "{name}", "arguments": {{}}}}</tool_call>')
    assert terminated and not truncated and reward == 0.0 and info["reason"] == "multi_turn:force_terminated"
