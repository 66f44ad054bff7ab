"""`mutator.pipeline`: step t's mutation runs beside step t+1's rollouts and update, its child enters the pool at
the end of step t+1, and a resume restarts the in-flight mutation from the checkpoint's JSON to the same child.

Real SmolLM2-135M policy with LoRA on the parity env of test_train_real (its reward varies between rollouts of
any model, so every step has a mixed problem and a mutation with work); the mutator is `ScriptedMutator` (a
scripted fake LLM, named so: the real LLM mutator's parsing and validation, a reply that adds one principle every
time), so a child is made every step and the one-step delay is visible.
"""

from __future__ import annotations

import json

import pytest
import torch

from espl.trainer.config import ConfigError
from espl.trainer.espl import Trainer, build_policy
from espl.trainer.mutator import ScriptedMutator
from tests.trainer.test_train_real import comparable, lora_params, scripted_llm, tiny

pytestmark = pytest.mark.slow


def pipelined(**kw):
    return tiny(**{"rollout.rollouts_per_pair": 3, "rollout.max_new_tokens": 8,
                   "evaluation.every": 0, "mutator.pipeline": True, **kw})


def test_pipeline_refuses_the_policy_as_mutator():
    with pytest.raises(ConfigError, match=r"^mutator\.pipeline = true: needs a frozen mutator"):
        pipelined(**{"mutator.kind": "policy"})


def test_child_of_step_t_enters_at_the_end_of_step_t_plus_1(tmp_path):
    cfg = pipelined()
    trainer = Trainer(cfg, tmp_path / "run", policy=build_policy(cfg), mutator=ScriptedMutator(scripted_llm))
    m0 = trainer.step()
    assert len(trainer.pool) == 1 and m0.mutation == "pending" and m0.child_id == -1  # step 0's is in flight
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert [p["step"] for p in state["pending_evolutions"]] == [0]  # its inputs are in the checkpoint
    assert state["pending_evolutions"][0]["parent"]["id"] == 0
    m1 = trainer.step()
    assert len(trainer.pool) == 2 and m1.child_id == trainer.pool.newest.id == 1
    child = trainer.pool.newest
    assert child.parents == (0,) and child.birth_step == 1  # made from step 0's rollouts, entered at step 1
    m2 = trainer.step()
    assert set(m1.selected.split(";")) == {"0"}  # the pool held only the root while step 1 selected
    assert "1" in m2.selected.split(";")  # step 2 is the first to select it (the newest is always included)
    assert trainer.pool.newest.id == m2.child_id == 2 and trainer.pool.newest.parents[0] in (0, 1)
    trainer.close()
    rows = [json.loads(line) for line in (tmp_path / "run" / "mutations.jsonl").read_text().splitlines()]
    assert [(r["step"], r["entered"]) for r in rows] == [(0, 1), (1, 2)]


def test_pipelined_resume_is_exact(tmp_path):
    cfg = pipelined()
    full = Trainer(cfg, tmp_path / "full", policy=build_policy(cfg), mutator=ScriptedMutator(scripted_llm))
    full.train(4)
    first = Trainer(cfg, tmp_path / "split", policy=build_policy(cfg), mutator=ScriptedMutator(scripted_llm))
    first.train(2)
    split = tmp_path / "split"
    with open(split / "mutations.jsonl", "a") as f:  # as if killed in step 2 after step 1's child was logged
        f.write(json.dumps({"step": 1, "entered": 2, "reason": "cut off"}) + "\n")
    resumed = Trainer(cfg, split, policy=build_policy(cfg), mutator=ScriptedMutator(scripted_llm), resume=True)
    assert resumed.step_count == 2 and [p.step for p, _ in resumed._pending] == [1]  # step 1's restarted
    resumed.train(4)
    assert comparable(resumed) == comparable(full)
    assert len(full.pool) == 4  # root + the children of steps 0, 1, 2 (step 3's was still in flight)
    a, b = lora_params(full.policy), lora_params(resumed.policy)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert (split / "mutations.jsonl").read_text() == (tmp_path / "full" / "mutations.jsonl").read_text()
    for run in (split, tmp_path / "full"):
        state = json.loads((run / "checkpoint" / "state.json").read_text())
        assert [p["step"] for p in state["pending_evolutions"]] == [3]
