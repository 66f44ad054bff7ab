"""espl/Premise-v0: determinism per index, rules per config, the rule never in a task, the checker's verdicts,
disjoint splits, both prompt placements and bad kwargs."""

from __future__ import annotations

import re

import gymnasium as gym
import pytest

import espl  # noqa: F401  (registers the envs)
from espl.envs.checker import check_chat_env
from espl.envs.core import user_placement
from espl.envs.premise import (
    FACTORS,
    TEMPLATES,
    PremiseEnv,
    grade_conversion,
    premise_rule,
    task_list,
    wrong_rule_seed,
)


@pytest.fixture(scope="module")
def test_env():
    return PremiseEnv(split="test")


# ---- determinism and splits -------------------------------------------------------------------------
def test_same_index_same_task_across_instances(test_env):
    other = PremiseEnv(split="test")
    for index in (0, 1, 17, 287, 288, 123_456):
        a, b = test_env.make_task(index), other.make_task(index)
        assert a == b
        obs_a, info_a = test_env.reset(seed=index)
        obs_b, info_b = other.reset(seed=index)
        assert obs_a == obs_b and info_a["task_id"] == info_b["task_id"] == a.id


def test_the_split_lists_are_fixed_and_of_distinct_tasks():
    for split in ("train", "test"):
        tasks = task_list(split, ("zorb", "glik"), 12)
        assert len({text for text, _, _ in tasks}) == len(tasks)
        env = PremiseEnv(split=split)
        ids = [env.make_task(i).id for i in range(len(tasks))]
        assert len(set(ids)) == len(tasks) and all(i.startswith(f"premise/{split}/") for i in ids)
        assert env.make_task(len(tasks)).id == ids[0]  # seeds past the list wrap around


def test_splits_are_disjoint_over_every_task():
    train = {text for text, _, _ in task_list("train", ("zorb", "glik"), 12)}
    test = {text for text, _, _ in task_list("test", ("zorb", "glik"), 12)}
    assert train and test and not train & test
    assert 0.1 < len(test) / (len(train) + len(test)) < 0.3  # about one in TEST_MODULUS (5)


def test_first_tasks_mix_every_template(test_env):
    """The round robin: the first tasks take the templates in turn, so a short evaluation is not one phrasing."""
    firsts = [test_env.make_task(i) for i in range(len(TEMPLATES))]
    assert [t.data["template"] for t in firsts] == list(range(len(TEMPLATES)))
    for task in firsts:
        n = task.data["quantity"]
        assert task.prompt.startswith(TEMPLATES[task.data["template"]].split("{")[0])
        assert f" {n} zorbs" in task.prompt


# ---- the rule ----------------------------------------------------------------------------------------
def test_rules_differ_between_configs():
    factors = [premise_rule(seed).factor for seed in range(30)]
    assert set(factors) == set(FACTORS)  # every factor is some seed's rule
    assert premise_rule(0).factor != premise_rule(1).factor
    assert PremiseEnv(rule_seed=0).rule_text() != PremiseEnv(rule_seed=1).rule_text()
    # the same task, two configs: the same text, answers by each config's factor
    a, b = PremiseEnv(rule_seed=0).make_task(5), PremiseEnv(rule_seed=1).make_task(5)
    assert a.prompt == b.prompt and a.answer != b.answer
    assert a.answer == a.data["quantity"] * premise_rule(0).factor


def test_rule_text_is_one_sentence_with_the_factor():
    env = PremiseEnv(rule_seed=5, units=("blip", "quon"))
    rule = premise_rule(5)
    assert env.rule_text() == f"1 blip is exactly {rule.factor} quons."
    assert env.rule_text(0) == f"1 blip is exactly {premise_rule(0).factor} quons."


def test_wrong_rule_is_another_seeds_rule_with_another_factor():
    for seed in range(40):
        other = wrong_rule_seed(seed)
        assert other > seed and premise_rule(other).factor != premise_rule(seed).factor
        env = PremiseEnv(rule_seed=seed)
        assert env.wrong_rule_text() == env.rule_text(other) != env.rule_text()


@pytest.mark.parametrize("rule_seed", [0, 1, 2, 3])
@pytest.mark.parametrize("split", ["train", "test"])
def test_the_rule_never_appears_in_a_task(rule_seed, split):
    env = PremiseEnv(rule_seed=rule_seed, split=split)
    factor = env.rule.factor
    for index in range(len(env.tasks)):
        obs, _ = env.reset(seed=index)
        text = obs[-1]["content"]
        assert env.rule_text() not in text
        assert not re.search(rf"\b1 zorb\b|\b{factor} gliks?\b", text), text  # nor its parts
        assert str(env.task.answer) not in text.split()  # nor the answer itself as a word


# ---- the checker -------------------------------------------------------------------------------------
@pytest.mark.parametrize("reply, answer, reason", [
    ("6 zorbs x 4 gliks per zorb = 24 gliks.", "24", "correct"),
    ("6 zorbs x 4 = 24 gliks", "24", "correct"),
    ("Answer: 24 gliks", "24", "correct"),
    ("Answer: 6 zorbs = 24 gliks", "24", "correct"),
    ("**Answer:** 24.0", "24.0", "correct"),
    ("so it is \\boxed{24}", "24", "correct"),
    ("6 zorbs x 3 gliks per zorb = 18 gliks.", "18", "wrong_answer"),
    ("24 gliks (since 1 zorb = 4 gliks)", "4", "wrong_answer"),  # the last number counts
    ("6 zorbs x <gliks per zorb> = <total> gliks", "6", "wrong_answer"),  # the placeholders copied
    ("Answer: -24", "-24", "wrong_answer"),
    ("I need to know how many gliks a zorb is.", None, "no_answer"),
    ("Answer: unknown", "unknown", "no_answer"),
    ("", None, "no_answer"),
    ("9" * 5000, "9" * 40 + "...", "wrong_answer"),  # too long to convert: wrong, not a crash
])
def test_checker_verdicts(reply, answer, reason):
    verdict = grade_conversion(reply, 24)
    assert (verdict.answer, verdict.reason) == (answer, reason)
    assert verdict.correct == (reason == "correct")


def test_step_scores_right_wrong_and_malformed_replies():
    env = gym.make("espl/Premise-v0", split="test")
    base = env.unwrapped
    assert isinstance(base, PremiseEnv)
    env.reset(seed=0)
    task = base.task
    assert task is not None
    right = f"{task.data['quantity']} zorbs x {base.rule.factor} gliks per zorb = {task.answer} gliks."
    _, reward, terminated, truncated, info = env.step(right)
    assert (reward, terminated, truncated, info["reason"]) == (1.0, True, False, "correct")
    assert info["answer"] == str(task.answer) and info["quantity"] == task.data["quantity"]
    for reply, reason in ((f"{task.answer + 1} gliks", "wrong_answer"), ("\udcff no idea \x00" * 3, "no_answer"),
                          ("9" * 5000, "wrong_answer")):
        env.reset(seed=0)
        _, reward, terminated, _, info = env.step(reply)
        assert (reward, terminated, info["reason"]) == (0.0, True, reason)


# ---- placements, registration and bad kwargs ---------------------------------------------------------
def test_both_placements_carry_the_principle(test_env):
    rule = test_env.rule_text()
    as_system, _ = test_env.reset(seed=3, options={"system_prompt": rule})
    bare, _ = test_env.reset(seed=3)
    assert as_system == [{"role": "system", "content": rule}, *bare]
    in_user, _ = test_env.reset(seed=3, options={"system_prompt": rule, "system_prompt_placement": "user"})
    assert len(in_user) == 1 and in_user[0]["role"] == "user"
    assert in_user[0]["content"] == user_placement(bare[0]["content"], rule)  # the reference's user turn
    assert rule in in_user[0]["content"] and bare[0]["content"] in in_user[0]["content"]


def test_registered_env_passes_the_checker():
    failed = [f"{r.name}: {r.detail}" for r in check_chat_env("espl/Premise-v0") if not r.ok]
    assert not failed


def test_answer_format_names_the_units_and_can_be_dropped():
    env = PremiseEnv(units=("blip", "quon"))
    obs, _ = env.reset(seed=0)
    assert obs[0]["content"].endswith("'<blips> blips x <quons per blip> = <total> quons'.")
    assert "zorb" not in obs[0]["content"]
    plain = PremiseEnv(answer_format=None)
    obs, _ = plain.reset(seed=0)
    assert obs[0]["content"] == plain.make_task(0).prompt


@pytest.mark.parametrize("kwargs, message", [
    ({"rule_seed": -1}, "rule_seed: must be an int >= 0"),
    ({"rule_seed": "3"}, "rule_seed: must be an int >= 0"),
    ({"units": "zorb"}, "units: must be two unit names"),
    ({"units": ("zorb", "zorb")}, "units: the source and target units must differ"),
    ({"units": ("Zorb", "glik")}, "units: each name must be 2-20 lowercase letters"),
    ({"max_quantity": 2}, "max_quantity: must be an int in [3, 99]"),
    ({"answer_format": "{total}"}, "answer_format: only {source} and {target}"),
    ({"answer_format": 3}, "answer_format: must be a str or None"),
    ({"split": "dev"}, "split: must be one of"),
])
def test_bad_kwargs_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        gym.make("espl/Premise-v0", **kwargs)


def test_num_tasks_is_the_split_list_and_evaluate_refuses_more():
    """`num_tasks()`: the distinct tasks of the split (seeds wrap around after them); `evaluate` refuses to
    count one twice, before any rollout (no policy is needed to be told)."""
    from espl.agents.evaluate import check_distinct, distinct_tasks, evaluate

    for split in ("train", "test"):
        env = gym.make("espl/Premise-v0", split=split).unwrapped
        n = env.num_tasks()
        assert len({env.make_task(i).id for i in range(n)}) == n and env.make_task(n) == env.make_task(0)
        assert distinct_tasks("espl/Premise-v0", {"split": split}) == n
    n = distinct_tasks("espl/Premise-v0", {"split": "test"})
    check_distinct("espl/Premise-v0", n, {"split": "test"})  # all of them: fine
    with pytest.raises(ValueError, match=rf"episodes: {n + 1} tasks .* has {n} distinct"):
        evaluate("espl/Premise-v0", None, episodes=n + 1)
    assert distinct_tasks("espl/ToolMath-v0", {"python_tool": "off"}) is None  # generated: unbounded

