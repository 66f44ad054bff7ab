"""Issue 16: with `selection.placement = "user"` the first user message is the E-SPL reference's text, built
here by the reference's own template string and expressions (tests/fixtures/espl_reference.py, copied from
LunjunZhang/E-SPL commit 80d5a4b). The path is the real one: `Trainer._episode` -> the env's `reset`."""

from __future__ import annotations

import gymnasium as gym
import pytest

import espl  # noqa: F401  (registers the envs)
from espl.envs.core import USER_PLACEMENT_TEMPLATE, Task
from espl.trainer.espl import TrainConfig, Trainer
from tests.fixtures.espl_reference import (
    PROBLEM_WITH_PRINCIPLE_TEMPLATE,
    reference_principles,
    reference_test_user_turn,
    reference_training_user_turn,
)

PRINCIPLES = (
    "Units first: write the unit of every quantity before combining quantities.",
    "Final answers: end with one line 'Answer: N' and nothing after it.",
    "Braces like {problem} or {0} in a principle are text, not placeholders.",
)


def first_observation(placement: str, principles: tuple[str, ...], index: int, task: Task | None = None):
    """What the policy sees first, through the trainer's episode and the env's reset (as agents/rollout.py
    calls it), and the env's own first user message for that task without any prompt."""
    trainer = Trainer.__new__(Trainer)
    trainer.cfg = TrainConfig.from_dict({"selection.placement": placement})
    ep = trainer._episode(index, principles, 0)
    env = gym.make(trainer.cfg.env).unwrapped
    options = {"system_prompt": ep.system_prompt, "system_prompt_placement": ep.placement}
    if task is not None:
        options["task"] = task
    obs, _ = env.reset(seed=ep.seed, options=options)
    return obs, env.task_messages(env.task)[0]["content"]


def test_template_is_the_references():
    assert USER_PLACEMENT_TEMPLATE == PROBLEM_WITH_PRINCIPLE_TEMPLATE


@pytest.mark.parametrize("index", [0, 7])
@pytest.mark.parametrize("n_principles", [0, 1, 3])
def test_user_placement_renders_the_references_text(index, n_principles):
    principles = PRINCIPLES[:n_principles]
    obs, problem = first_observation("user", principles, index)
    expected = reference_training_user_turn(problem, reference_principles(list(principles)))
    assert obs == [{"role": "user", "content": expected}]
    if n_principles == 0:
        assert obs[0]["content"] == problem  # the reference's raw problem for the empty root program
    else:
        assert obs[0]["content"].startswith("Please solve the following problem:\n" + problem + "\n\n")
        assert obs[0]["content"].endswith("principles below:\n[G0]. " + PRINCIPLES[0] + (
            "" if n_principles == 1 else "\n[G1]. " + PRINCIPLES[1] + "\n[G2]. " + PRINCIPLES[2]))


def test_a_problem_with_braces_is_kept_verbatim():
    task = Task("t/braces", "Let S = {1, 2, 3} and f(x) = {x}. What is |S|?", 3)
    obs, problem = first_observation("user", PRINCIPLES[:1], 0, task)
    assert obs[0]["content"] == reference_training_user_turn(problem, reference_principles(list(PRINCIPLES[:1])))


def test_system_placement_is_unchanged():
    obs, problem = first_observation("system", PRINCIPLES[:2], 3)
    assert obs == [{"role": "system", "content": f"[G0]. {PRINCIPLES[0]}\n[G1]. {PRINCIPLES[1]}"},
                   {"role": "user", "content": problem}]
    obs, problem = first_observation("system", (), 3)
    assert obs == [{"role": "user", "content": problem}]


def test_the_references_test_time_text_differs_only_for_the_empty_program():
    """What we do not copy, said by a test: the reference's evaluation always uses the template ("None" for the
    empty program), its training rollouts give the raw problem; ours is the training text everywhere."""
    problem = "What is 2+2?"
    assert reference_test_user_turn(problem, {}) != reference_training_user_turn(problem, {}) == problem
    program = reference_principles(list(PRINCIPLES))
    assert reference_test_user_turn(problem, program) == reference_training_user_turn(problem, program)
