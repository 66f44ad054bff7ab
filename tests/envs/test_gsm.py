"""espl/GSM-v0: GSM8K-style word problems from reasoning-gym's gsm_symbolic generator, offline."""

from __future__ import annotations

import gymnasium as gym

import espl  # noqa: F401  (registers the envs)


def test_gsm_tasks_are_word_problems_with_numeric_golds_and_disjoint_splits():
    train = gym.make("espl/GSM-v0").unwrapped
    test = gym.make("espl/GSM-v0", split="test").unwrapped
    train_tasks = [train.make_task(i) for i in range(40)]
    test_tasks = [test.make_task(i) for i in range(40)]
    assert {t.prompt for t in train_tasks}.isdisjoint(t.prompt for t in test_tasks)
    assert test.test_set_size >= 100
    for task in train_tasks[:10] + test_tasks[:10]:
        assert task.id.startswith("gsm_symbolic/") and len(task.prompt.split()) > 15
        assert task.answer.lstrip("-").replace(".", "", 1).isdigit(), task.answer
        env = test if "/test/" in task.id else train
        env.reset(options={"task": task})
        _, reward, _, _, info = env.step(f"Step by step ...\nAnswer: {task.answer}")
        assert (reward, info["reason"]) == (1.0, "correct")
        env.reset(options={"task": task})
        _, reward, _, _, _ = env.step(f"Answer: {float(task.answer) + 1:g}")
        assert reward == 0.0
