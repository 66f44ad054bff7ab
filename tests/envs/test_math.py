"""espl/Math-v0 and espl/MathCompetition-v0: seeding, split disjointness, the reasoning-gym traps,
multi-attempt rewards, bad kwargs and the chat-env contract."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction

import gymnasium as gym
import pytest

import espl  # noqa: F401  (registers the envs)
from espl.envs.checker import check_chat_env
from espl.envs.math import (
    DEFAULT_ANSWER_FORMAT,
    MathCompetitionEnv,
    MathEnv,
    build_champ_answers,
    clean_champ_answer,
    eval_arithmetic,
    load_champ,
    strip_bare_answer_phrases,
)


@pytest.fixture(scope="module")
def train_env():
    return MathEnv()


@pytest.fixture(scope="module")
def test_env():
    return MathEnv(split="test")


# ---- seeding and splits -----------------------------------------------------------------------------
def test_same_seed_same_task_across_instances(train_env):
    other = MathEnv()
    for seed in (0, 1, 17, 123_456, 2**31 - 2):
        a, ia = train_env.reset(seed=seed)
        b, ib = other.reset(seed=seed)
        assert a == b and ia["task_id"] == ib["task_id"] == train_env.task.id
        assert train_env.task.answer == other.task.answer


def test_data_seed_changes_the_items():
    a, b = MathEnv(data_seed=0), MathEnv(data_seed=1)
    questions_a = [a.make_task(i).data["question"] for i in range(50)]
    questions_b = [b.make_task(i).data["question"] for i in range(50)]
    assert questions_a != questions_b


def test_task_ids_are_distinct_and_name_task_and_split(train_env, test_env):
    train_ids = [train_env.make_task(i).id for i in range(300)]
    assert len(set(train_ids)) == 300
    assert all(i.split("/")[1] == "train" for i in train_ids)
    test_ids = [test_env.make_task(i).id for i in range(test_env.test_set_size)]
    assert len(set(test_ids)) == test_env.test_set_size
    assert {i.split("/")[0] for i in test_ids} == {"products", "basic_arithmetic", "gcd", "count_bits"}


def test_train_and_test_share_no_question(train_env, test_env):
    test_questions = {(t.data["task"], t.data["question"]) for t in
                      (test_env.make_task(i) for i in range(test_env.test_set_size))}
    train_questions = {(t.data["task"], t.data["question"]) for t in (train_env.make_task(i) for i in range(4000))}
    assert len(test_questions) >= 200 and len(train_questions) >= 500
    assert not test_questions & train_questions
    # every task of the default mix appears in the train stream
    assert {task for task, _ in train_questions} == {"products", "basic_arithmetic", "gcd", "count_bits"}


def test_test_split_is_a_fixed_list(test_env):
    again = MathEnv(split="test")
    assert again.test_set_size == test_env.test_set_size
    for i in range(0, test_env.test_set_size, 7):
        assert again.make_task(i) == test_env.make_task(i)
    assert test_env.make_task(test_env.test_set_size) == test_env.make_task(0)  # wraps around


def test_test_size_caps_each_task():
    env = MathEnv(tasks={"gcd": {"max_value": 1000}}, split="test", test_size=25)
    assert env.test_set_size == 25


def test_weights_steer_the_train_mix():
    env = MathEnv(weights={"products": 1.0, "gcd": 0.0, "count_bits": 0.0, "basic_arithmetic": 0.0})
    assert {env.make_task(i).data["task"] for i in range(100)} == {"products"}


# ---- the user message --------------------------------------------------------------------------------
def test_user_message_drops_give_only_and_appends_the_answer_format(train_env):
    seen = set()
    for seed in range(60):
        obs, info = train_env.reset(seed=seed)
        text = obs[-1]["content"]
        assert "Give only" not in text and text.endswith(DEFAULT_ANSWER_FORMAT)
        seen.add(train_env.task.data["task"])
        if "Give only" in train_env.task.data["question"]:
            seen.add("rewritten")
    assert "rewritten" in seen


def test_answer_format_is_configurable():
    env = MathEnv(answer_format="Put the final answer in \\boxed{}.")
    obs, _ = env.reset(seed=3)
    assert obs[-1]["content"].endswith("Put the final answer in \\boxed{}.")
    bare = MathEnv(answer_format=None)
    obs, _ = bare.reset(seed=3)
    assert obs[-1]["content"] == bare.task.prompt


@pytest.mark.parametrize("question,expected", [
    ("Solve the following multiplication: 3 * 4. Give only the result as your final answer.",
     "Solve the following multiplication: 3 * 4."),
    ("Find the GCD of 4, 6. Give only the GCD as your final answer.", "Find the GCD of 4, 6."),
    ("Who is it? Provide only the name of the person as your final answer.", "Who is it?"),
    ("Run it. Respond only with the exact output of the program.", "Run it."),
    ("How many 1 bits are there in 7?", "How many 1 bits are there in 7?"),
])
def test_strip_bare_answer_phrases(question, expected):
    assert strip_bare_answer_phrases(question) == expected


# ---- reasoning-gym traps -----------------------------------------------------------------------------
@pytest.mark.parametrize("expression,value", [
    ("8 + 2 * 4", 16), ("8 - 6 / 3", 6), ("-(3 + 4) * 2", -14), ("7 / 2", Fraction(7, 2)), ("2 * 3 - 4 * 5", -14),
])
def test_eval_arithmetic_uses_true_precedence(expression, value):
    assert eval_arithmetic(expression) == value


@pytest.mark.parametrize("expression", ["__import__('os')", "2 ** 10", "x + 1", "1.5 + 2", "[1]"])
def test_eval_arithmetic_refuses_anything_else(expression):
    with pytest.raises(ValueError):
        eval_arithmetic(expression)


def test_left_to_right_gold_is_recomputed_with_precedence():
    env = MathEnv(tasks={"basic_arithmetic": {"min_terms": 3, "max_terms": 3, "operators": ("+", "-", "*"),
                                              "allow_parentheses": False}})
    corrected = 0
    for i in range(200):
        task = env.make_task(i)
        expression = task.prompt.removeprefix("Calculate ").removesuffix(".")
        true_value = eval(expression, {"__builtins__": {}})  # the test's own check: Python's precedence
        assert Fraction(task.answer) == true_value, (expression, task.answer)
        if "reasoning_gym_answer" in task.data:
            assert Fraction(task.data["reasoning_gym_answer"]) != true_value
            corrected += 1
    assert corrected > 10  # the trap is real: reasoning-gym's own answers are wrong for these


def test_prime_factorization_is_graded_without_its_raising_scorer():
    env = MathEnv(tasks=["prime_factorization"])
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step("Answer: no idea, banana")
    assert terminated and reward == 0.0 and info["reason"] == "wrong_answer"
    env.reset(seed=0)
    _, reward, _, _, info = env.step(f"Answer: {env.task.answer}")
    assert reward == 1.0 and info["reason"] == "correct"


# ---- rewards and attempts -------------------------------------------------------------------------------
def test_correct_answers_score_one_with_every_answer_form(train_env):
    for seed in range(150):
        for reply in ("Working...\nAnswer: {}", "So it is \\boxed{{{}}}.", "I think it is {}"):
            train_env.reset(seed=seed)
            _, reward, terminated, truncated, info = train_env.step(reply.format(train_env.task.answer))
            assert (reward, terminated, truncated, info["reason"]) == (1.0, True, False, "correct"), (seed, reply, info)


def test_wrong_and_missing_answers_score_zero(train_env):
    train_env.reset(seed=4)
    _, reward, terminated, _, info = train_env.step("Answer: 123456789")
    assert (reward, terminated, info["reason"], info["answer_source"]) == (0.0, True, "wrong_answer", "answer_line")
    train_env.reset(seed=4)
    _, reward, terminated, _, info = train_env.step("I do not know.")
    assert (reward, terminated, info["reason"], info["answer"]) == (0.0, True, "no_answer", None)


def test_format_bonus_is_added_and_declared():
    env = MathEnv(format_bonus=0.2)
    assert env.reward_range == (0.0, 1.2)
    env.reset(seed=1)
    gold = env.task.answer
    _, reward, _, _, _ = env.step(f"Answer: {gold}")
    assert reward == pytest.approx(1.2)
    env.reset(seed=1)
    _, reward, _, _, info = env.step(f"it is {gold}")
    assert reward == 1.0 and info["answer_source"] == "last_number"
    env.reset(seed=1)
    _, reward, _, _, info = env.step("\\boxed{123456789}")
    assert reward == pytest.approx(0.2) and info["reason"] == "wrong_answer"


def test_multi_attempt_flow_and_rewards():
    env = MathEnv(max_attempts=3, attempt_penalty=0.25, format_bonus=0.1)
    assert env.max_turns == 3
    obs, _ = env.reset(seed=2)
    gold = env.task.answer
    obs, reward, terminated, truncated, info = env.step("Answer: 987654321")
    assert (reward, terminated, truncated, info["grade"]) == (0.0, False, False, "wrong_answer")
    assert obs == [env.feedback("wrong_answer", 1)] and obs[0]["role"] == "user"
    assert "987654321" not in obs[0]["content"] and "2 attempts left" in obs[0]["content"]
    obs, reward, terminated, _, info = env.step("no idea")
    assert (reward, terminated, info["grade"]) == (0.0, False, "no_answer")
    assert obs[0]["content"].startswith("I could not find an answer") and "1 attempt left" in obs[0]["content"]
    obs, reward, terminated, truncated, info = env.step(f"Answer: {gold}")
    assert obs == [] and terminated and not truncated and info["reason"] == "correct"
    assert reward == pytest.approx(1.0 - 2 * 0.25 + 0.1)
    # the whole conversation is kept: user, assistant, user (feedback), assistant, user, assistant
    assert [m["role"] for m in env.history] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    with pytest.raises(RuntimeError):
        env.step("Answer: 1")


def test_last_wrong_attempt_terminates_with_its_reason():
    env = MathEnv(max_attempts=2)
    env.reset(seed=9)
    env.step("Answer: 987654321")
    _, reward, terminated, truncated, info = env.step("nothing here")
    assert (reward, terminated, truncated, info["reason"]) == (0.0, True, False, "no_answer")


def test_feedback_never_reveals_the_gold():
    env = MathEnv(max_attempts=2, tasks={"products": {"min_digits": 3, "max_digits": 3}})
    for seed in range(20):
        env.reset(seed=seed)
        obs, *_ = env.step("Answer: 1")
        assert env.task.answer not in obs[0]["content"]


@pytest.mark.parametrize("reply", [
    "\udcff\udcfe" * 1000, "Answer: " + "9" * 1_000_000, "x" * 1_200_000, "\\boxed{" * 50_000, "Answer: 10^{10^{10}}",
])
def test_hostile_replies_are_scored(reply, train_env):
    train_env.reset(seed=0)
    _, reward, terminated, _, info = train_env.step(reply)
    assert terminated and reward == 0.0 and info["reason"] in ("wrong_answer", "no_answer")


# ---- bad kwargs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    ({"tasks": {"foo": {}}}, r"tasks: unknown task 'foo'.*known: .*products"),
    ({"tasks": ["prodcts"]}, r"did you mean 'products'"),
    ({"tasks": "products"}, r"tasks: must be a dict"),
    ({"tasks": {}}, r"tasks: must name at least one task"),
    ({"tasks": {"products": {"max_digit": 3}}}, r"tasks\['products'\]: unknown field 'max_digit'; allowed: .*max_digits"),
    ({"tasks": {"products": {"seed": 3}}}, r"tasks\['products'\]\.seed: set by the env"),
    ({"tasks": {"products": {"min_digits": 3, "max_digits": 1}}}, r"tasks\['products'\]: max_digits must be >= min_digits"),
    ({"tasks": {"products": 3}}, r"tasks\['products'\]: must be a dict"),
    ({"tasks": {"base_conversion": {"min_base": 8, "max_base": 8}}}, r"tasks\['base_conversion'\]: min_base == max_base"),
    ({"tasks": {"simple_equations": {"operators": ("+", "-")}}}, r"tasks\['simple_equations'\]: operators .* operators_weights"),
    ({"tasks": ["composite"]}, r"'composite' is not supported"),
    ({"weights": [1.0]}, r"weights: need one weight per task"),
    ({"weights": {"nope": 1.0}}, r"weights: unknown tasks \['nope'\]"),
    ({"weights": {"products": 0.0, "gcd": 0.0, "count_bits": 0.0, "basic_arithmetic": 0.0}}, r"weights: at least one"),
    ({"weights": {"products": -1.0}}, r"weights\['products'\]: must be a number"),
    ({"split": "validation"}, r"split: must be one of"),
    ({"max_attempts": 0}, r"max_attempts: must be an int >= 1"),
    ({"format_bonus": -0.5}, r"format_bonus: must be a number in \[0.0, 1.0\]"),
    ({"attempt_penalty": "a lot"}, r"attempt_penalty: must be a number"),
    ({"answer_format": 5}, r"answer_format: must be a str or None"),
    ({"data_seed": -1}, r"data_seed: must be an int >= 0"),
    ({"test_size": 0}, r"test_size: must be an int >= 1"),
])
def test_bad_kwargs_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MathEnv(**kwargs)


def test_bad_kwargs_through_gymnasium_make():
    with pytest.raises(ValueError, match="tasks: unknown task 'foo'"):
        gym.make("espl/Math-v0", tasks=["foo"])
    with pytest.raises(ValueError, match="max_attempts"):
        gym.make("espl/MathCompetition-v0", max_attempts=0)


def test_reasoning_gym_is_imported_lazily():
    code = ("import sys, espl, espl.envs.math, espl.envs.answers; "
            "assert 'reasoning_gym' not in sys.modules and 'math_verify' not in sys.modules, 'eager import'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- MathCompetition-v0 (CHAMP) -------------------------------------------------------------------------
def test_champ_filter_keeps_about_200_and_the_data_file_is_current():
    built = build_champ_answers()
    assert built["total"] == 270 and 190 <= built["kept"] <= 240
    from importlib import resources

    shipped = json.loads(resources.files("espl.envs").joinpath("data", "champ_answers.json").read_text())
    assert shipped == built, "envs/data/champ_answers.json is stale: run `python -m espl.envs.math`"
    assert len(load_champ()) == built["kept"]


@pytest.mark.parametrize("raw,gold", [
    ("C(10, 5), or equivalently 252", "252"),
    ("5/14, or approximately 35.7%", "5/14"),
    ("100 (i.e., all values)", "100"),
    ("0 is the only possible value", "0"),
    ("The limit exists and is equal to 2/3", "2/3"),
    ("98 values", "98"),
    ("1, 4 and 9", "1, 4, 9"),
    ("sqrt(3)/3, or equivalently 1/sqrt(3)", "1/sqrt(3)"),
])
def test_clean_champ_answer(raw, gold):
    assert clean_champ_answer(raw) == gold


def test_champ_splits_are_disjoint_and_cover_every_kept_problem():
    train, test = MathCompetitionEnv(), MathCompetitionEnv(split="test")
    train_ids = {p[0] for p in train.problems}
    test_ids = {p[0] for p in test.problems}
    assert not train_ids & test_ids
    assert train_ids | test_ids == {p[0] for p in load_champ()}
    assert 0.6 < len(train_ids) / len(load_champ()) < 0.8


@pytest.mark.parametrize("split", ["train", "test"])
def test_champ_gold_answers_score_and_wrong_ones_do_not(split):
    env = MathCompetitionEnv(split=split)
    for seed in range(len(env.problems)):
        env.reset(seed=seed)
        _, reward, _, _, info = env.step(f"Let me see.\nAnswer: {env.task.answer}")
        assert reward == 1.0, (env.task.id, env.task.answer, info)
        env.reset(seed=seed)
        wrong = "Answer: 918273645" if env.task.answer.lower() not in ("yes", "no") else "Answer: maybe"
        _, reward, _, _, info = env.step(wrong)
        assert reward == 0.0, (env.task.id, env.task.answer, info)


def test_champ_multi_attempt_shares_the_rule():
    env = MathCompetitionEnv(max_attempts=2, attempt_penalty=0.5, format_bonus=0.1)
    assert env.reward_range == (0.0, 1.1)
    env.reset(seed=0)
    obs, reward, terminated, _, _ = env.step("Answer: 918273645")
    assert not terminated and obs[0]["role"] == "user"
    _, reward, terminated, _, info = env.step(f"\\boxed{{{env.task.answer}}}")
    assert terminated and info["reason"] == "correct" and reward == pytest.approx(0.6)


# ---- the contract -------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id,kwargs", [
    ("espl/Math-v0", {}),
    ("espl/Math-v0", {"split": "test", "max_attempts": 3, "format_bonus": 0.1}),
    ("espl/MathCompetition-v0", {}),
    ("espl/MathCompetition-v0", {"split": "test", "max_attempts": 2}),
])
def test_check_chat_env_passes(env_id, kwargs):
    failed = [r for r in check_chat_env(env_id, **kwargs) if not r.ok]
    assert not failed, failed
