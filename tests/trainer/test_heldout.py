"""Held-out evaluation inside the training loop (trainer/heldout.py) with the real packaged SmolLM2-135M: the
three prompts on the same weights with pass@k, evals.jsonl, TensorBoard, the best checkpoint, resume, and
that turning evaluation on changes no training trajectory. The env is test_train_real's `ParityEnv` (a real
env whose reward varies between rollouts of any model); `ScriptedMutator` (a scripted fake LLM, named so)
makes children, so that the newest prompt differs from the best-rated one (after two steps the best is still
the empty root, the same principles as no prompt)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from espl.cli import app
from espl.trainer import checkpoint as ckpt
from espl.trainer.config import ConfigError
from espl.trainer.espl import TrainConfig, Trainer, build_policy
from espl.trainer.heldout import HeldOutResult, read_evals, sample_seed
from espl.trainer.mutator import ScriptedMutator
from tests.trainer.test_train_real import comparable, lora_params, scripted_llm, tiny


def tiny_eval(**kw) -> TrainConfig:
    """2-step-sized runs: B=1, N=3, 8 new tokens; the held-out set is 3 tasks x 2 samples."""
    return tiny(**{"data.batch_problems": 1, "rollout.rollouts_per_pair": 3, "rollout.max_new_tokens": 8,
                   "evaluation.problems": 3, "evaluation.samples": 2, **kw})


def capture_rollouts(calls: list):
    """The local rollout, recording each call's split and episodes (task index, prompt, sampling seed)."""
    from espl.agents.rollout import rollout

    def run(env, policy, episodes, params, *, env_kwargs=None, **kw):
        calls.append(((env_kwargs or {}).get("split"), [(e.seed, e.system_prompt, e.sample_seed) for e in episodes]))
        return rollout(env, policy, episodes, params, env_kwargs=env_kwargs, **kw)

    return run


# ---- config (no model) ------------------------------------------------------------------------------------


def test_evaluation_is_on_by_default_and_its_fields_are_checked():
    cfg = TrainConfig()
    assert (cfg.evaluation.every, cfg.evaluation.problems, cfg.evaluation.samples) == (5, 32, 1)
    assert cfg.evaluation.prompt_labels("espl") == cfg.evaluation.prompt_labels("evolve") == ("newest", "best", "none")
    assert cfg.evaluation.prompt_labels("rl") == ("newest",)  # an rl pool holds only the fixed prompt
    explicit = TrainConfig.from_dict({"mode": "rl", "evaluation.prompts": ["newest", "none"]})
    assert explicit.evaluation.prompt_labels("rl") == ("newest", "none")
    assert TrainConfig.from_dict({"evaluation.prompts": "none"}).evaluation.prompts == ("none",)
    legacy = TrainConfig.from_dict({"eval_every": 3, "eval_problems": 7}, warn=False)  # espl-gym 0.1's flat keys
    assert (legacy.evaluation.every, legacy.evaluation.problems) == (3, 7)
    with pytest.raises(ConfigError, match=r"evaluation.prompts: 'newst' is not one of .*did you mean 'newest'"):
        TrainConfig.from_dict({"evaluation.prompts": ["newst"]})
    with pytest.raises(ConfigError, match="each prompt at most once"):
        TrainConfig.from_dict({"evaluation.prompts": ["none", "none"]})
    with pytest.raises(ConfigError, match="evaluation.samples = 0: must be >= 1"):
        TrainConfig.from_dict({"evaluation.samples": 0})


def test_held_out_result_statistics():
    r = HeldOutResult(0, "newest", 3, ("Be brief.",), ((1.0, 0.0), (0.0, 0.0), (1.0, 1.0)))
    assert (r.tasks, r.samples, r.n) == (3, 2, 6)
    assert r.mean == pytest.approx(0.5)
    assert r.pass_at_k == {1: pytest.approx(0.5), 2: pytest.approx(2 / 3)}  # unbiased: task 0 counts 1 at k=2
    assert r.successes == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    line = r.to_json()
    assert line["pass_at_k"] == {"1": pytest.approx(0.5), "2": pytest.approx(2 / 3)} and line["n"] == 6
    assert sample_seed(2, 1) == sample_seed(2, 1) != sample_seed(1, 2)


def test_best_checkpoint_is_replaced_atomically_and_read_back_checked(tmp_path, caplog):
    """save_best writes best/ through a temporary directory; a kill between its two renames leaves best.prev,
    which read_best uses; a damaged best/ (its sha256 differs) is not trusted."""
    state = {"step": 2, "pool": {}, "metrics": [], "config": {}}
    ckpt.save_best(tmp_path, {"step": 1, "score": 0.25}, state, {"w": torch.ones(2)}, None, None)
    ckpt.save_best(tmp_path, {"step": 3, "score": 0.5}, {**state, "step": 4}, {"w": torch.zeros(2)}, None, None)
    assert ckpt.read_best(tmp_path) == {"step": 3, "score": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temporary or previous directory left
    assert torch.equal(ckpt._load_dir(tmp_path / "best").tensors["w"], torch.zeros(2))
    (tmp_path / "best").rename(tmp_path / "best.prev")  # as if killed between the two renames of a later save
    assert ckpt.read_best(tmp_path) == {"step": 3, "score": 0.5}
    (tmp_path / "best.prev").rename(tmp_path / "best")
    (tmp_path / "best" / "adapter.safetensors").write_bytes(b"damaged")
    assert ckpt.read_best(tmp_path) is None and "is damaged" in caplog.text
    assert ckpt.read_best(tmp_path / "nothing-here") is None


# ---- with the real model ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_eval_on_and_off_train_identically_and_eval_writes_three_prompts_with_pass_at_k(tmp_path):
    """2 steps, evaluation.every = 5: the only evaluation is the one after train()'s last step. Seed 4: both
    steps make a child (seed 3's best slot had no mixed problem), so the newest prompt is not the root."""
    calls_on: list = []
    cfg_on = tiny_eval(seed=4)
    on = Trainer(cfg_on, tmp_path / "on", policy=build_policy(cfg_on), mutator=ScriptedMutator(scripted_llm),
                 rollout_fn=capture_rollouts(calls_on))
    on.train(2)
    cfg_off = tiny_eval(seed=4, **{"evaluation.every": 0})
    off = Trainer(cfg_off, tmp_path / "off", policy=build_policy(cfg_off), mutator=ScriptedMutator(scripted_llm))
    off.train(2)

    # evaluation draws nothing the training uses: the same metrics (but test_reward), pool and weights
    def training_only(trainer):
        rows, pool = comparable(trainer)
        return [{k: v for k, v in r.items() if k != "test_reward"} for r in rows], pool

    assert training_only(on) == training_only(off)
    a, b = lora_params(on.policy), lora_params(off.policy)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not (tmp_path / "off" / "evals.jsonl").exists() and not (tmp_path / "off" / "best").exists()

    run = tmp_path / "on"
    evals = read_evals(run)
    assert [(e["step"], e["prompt"]) for e in evals] == [(1, "newest"), (1, "best"), (1, "none")]
    newest, best, none = evals
    assert newest["prompt_id"] == on.pool.newest.id and list(on.pool.newest.principles) == newest["principles"]
    assert best["prompt_id"] == on.pool.best("exploit").id
    assert none["prompt_id"] is None and none["principles"] == []
    for e in evals:
        assert (e["n"], e["tasks"], e["samples"]) == (6, 3, 2) and set(e["pass_at_k"]) == {"1", "2"}
        flat = [x for task in e["rewards"] for x in task]
        assert e["mean"] == pytest.approx(sum(flat) / 6) and e["pass_at_k"]["1"] == pytest.approx(e["mean"])
        assert e["pass_at_k"]["2"] >= e["pass_at_k"]["1"]
    # metrics: test_reward is the newest prompt's mean, only where an evaluation ran
    assert math.isnan(on.metrics[0].test_reward) and on.metrics[1].test_reward == pytest.approx(newest["mean"])
    assert on.metrics[1].time_eval > 0 and on.metrics[0].time_eval == 0

    # the same sampling seeds for every prompt: each held-out call has tasks 0..2 x samples 0..1, seeded alike
    held_out = [eps for split, eps in calls_on if split == "test"]
    distinct = {tuple(newest["principles"]), tuple(best["principles"]), ()}
    assert newest["principles"] and len(distinct) == 2  # a child is the newest; the root is best and = none
    assert len(held_out) == len(distinct)  # prompts with the same principles ran once
    expected = [(i, sample_seed(i, s)) for i in range(3) for s in range(2)]
    for eps in held_out:
        assert [(task, seed) for task, _, seed in eps] == expected
    # ... and for every evaluation: the same weights evaluated again give the same rewards
    again = on.evaluate(step=1)
    assert [list(map(list, r.rewards)) for r in again] == [e["rewards"] for e in evals]

    # the best checkpoint: the only evaluation so far, JSON + safetensors, hashed like the rolling ones
    record = json.loads((run / "best" / "best.json").read_text())
    assert (record["step"], record["prompt"], record["prompt_id"]) == (1, "newest", newest["prompt_id"])
    assert record["score"] == pytest.approx(newest["mean"]) and set(record["pass_at_k"]) == {"1", "2"}
    best_ckpt = ckpt._load_dir(run / "best")
    assert best_ckpt.state["step"] == 2 and set(best_ckpt.tensors) == set(a)
    assert all(torch.equal(best_ckpt.tensors[n], t) for n, t in on.policy.adapter_state().items())
    assert not list(run.glob(".best.*")) and not (run / "best.prev").exists()

    # TensorBoard scalars per prompt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(run / "tb")).Reload().Tags()["scalars"]
    for prompt in ("newest", "best", "none"):
        assert {f"eval/{prompt}/mean", f"eval/{prompt}/pass@1", f"eval/{prompt}/pass@2"} <= set(tags)
    assert "test_reward" in tags and "time_eval" in tags

    # `espl plot` draws the held-out curves
    res = CliRunner().invoke(app, ["plot", str(run)])
    assert res.exit_code == 0, res.output
    assert (run / "plots" / "heldout.png").stat().st_size > 5000


@pytest.mark.slow
def test_resume_keeps_the_best_checkpoint_and_redoes_cut_off_evaluations(tmp_path):
    """evaluation.every = 2 over 4 steps (evaluations after steps 1 and 3): 2 steps + resume to 4 writes the
    same evals.jsonl and keeps the same best checkpoint as 4 uninterrupted steps."""
    cfg = tiny_eval(**{"evaluation.every": 2, "evaluation.prompts": ["newest", "none"]})
    full = Trainer(cfg, tmp_path / "full", policy=build_policy(cfg), mutator=ScriptedMutator(scripted_llm))
    full.train(4)
    first = Trainer(cfg, tmp_path / "split", policy=build_policy(cfg), mutator=ScriptedMutator(scripted_llm))
    first.train(2)
    split = tmp_path / "split"
    best_after_2 = json.loads((split / "best" / "best.json").read_text())
    assert best_after_2["step"] == 1
    with open(split / "evals.jsonl", "a") as f:  # as if killed in step 2 after an evaluation was logged
        f.write(json.dumps({"step": 2, "prompt": "newest", "mean": 0.0, "pass_at_k": {}}) + "\n")
    resumed = Trainer(cfg, split, policy=build_policy(cfg), mutator=ScriptedMutator(scripted_llm), resume=True)
    assert resumed.best_record == best_after_2  # resume keeps the best checkpoint's record
    resumed.train(4)
    assert comparable(resumed) == comparable(full)
    assert (split / "evals.jsonl").read_text() == (tmp_path / "full" / "evals.jsonl").read_text()
    evals = read_evals(split)
    assert [(e["step"], e["prompt"]) for e in evals] == [(1, "newest"), (1, "none"), (3, "newest"), (3, "none")]
    newest = [e for e in evals if e["prompt"] == "newest"]
    top = max(newest, key=lambda e: (e["mean"], -e["step"]))  # the best mean; the earliest on a tie
    for run in (split, tmp_path / "full"):
        record = json.loads((run / "best" / "best.json").read_text())
        assert (record["step"], record["score"]) == (top["step"], pytest.approx(top["mean"]))
        assert ckpt._load_dir(run / "best").state["step"] == top["step"] + 1
    assert ckpt.read_best(split) == ckpt.read_best(tmp_path / "full")


@pytest.mark.slow
def test_rl_mode_evaluates_its_fixed_prompt_only(tmp_path):
    cfg = tiny_eval(**{"mode": "rl", "selection.fixed_principles": ["Answer in one short sentence."]})
    trainer = Trainer(cfg, tmp_path / "rl", policy=build_policy(cfg))
    trainer.train(1)
    evals = read_evals(tmp_path / "rl")
    assert [(e["step"], e["prompt"], e["prompt_id"], e["principles"]) for e in evals] == [
        (0, "newest", 0, ["Answer in one short sentence."])]
    assert trainer.metrics[0].test_reward == pytest.approx(evals[0]["mean"])
    assert ckpt.read_best(tmp_path / "rl")["prompt_id"] == 0


def test_weights_digest_tells_bit_identical_weights_apart():
    from espl.trainer.heldout import eval_key, weights_digest

    a = {"w": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), "b": torch.ones(3)}
    same = {"b": torch.ones(3), "w": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)}
    assert weights_digest(a) == weights_digest(same)
    nudged = {**a, "b": torch.tensor([1.0, 1.0, torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)).item()])}
    assert weights_digest(nudged) != weights_digest(a)
    assert weights_digest({**a, "w": a["w"].float()}) != weights_digest(a)  # same values, another dtype
    cfg = {"rollout": {"max_new_tokens": 8}}
    assert eval_key("d", cfg, ["p"]) != eval_key("d", {"rollout": {"max_new_tokens": 9}}, ["p"])
    assert eval_key("d", cfg, ["p"]) != eval_key("d", cfg, []) != eval_key("e", cfg, [])


class Killed(Exception):
    """Stands in for a kill (SIGTERM, the end of a session) in the middle of an evaluation."""


@pytest.mark.slow
def test_an_evaluation_cut_off_by_a_kill_resumes_at_its_next_prompt(tmp_path):
    """Killed while evaluating its second prompt after the last step, a resumed run redoes that step from its
    checkpoint (to bit-identical weights), reuses the first prompt's rewards from evals_partial.json, runs
    only the rest, and writes what an uninterrupted run writes."""
    # mode rl with a fixed prompt: two distinct prompts to evaluate (the fixed one and none)
    cfg = tiny_eval(**{"mode": "rl", "selection.fixed_principles": ["Answer in one short sentence."],
                       "evaluation.prompts": ["newest", "none"]})
    full = Trainer(cfg, tmp_path / "full", policy=build_policy(cfg))
    full.train(2)

    calls: list = []
    record = capture_rollouts(calls)

    def killed_at_second_prompt(env, policy, episodes, params, *, env_kwargs=None, **kw):
        if (env_kwargs or {}).get("split") == "test" and any(split == "test" for split, _ in calls):
            raise Killed
        return record(env, policy, episodes, params, env_kwargs=env_kwargs, **kw)

    run = tmp_path / "cut"
    first = Trainer(cfg, run, policy=build_policy(cfg), rollout_fn=killed_at_second_prompt)
    with pytest.raises(Killed):
        first.train(2)
    partial = json.loads((run / "evals_partial.json").read_text())
    assert len(partial) == 1 and not (run / "evals.jsonl").exists()
    (first_prompt,) = [json.loads(k)["principles"] for k in partial]

    calls_resumed: list = []
    resumed = Trainer(cfg, run, policy=build_policy(cfg), rollout_fn=capture_rollouts(calls_resumed), resume=True)
    assert resumed.step_count == 1  # the cut-off step is redone
    resumed.train(2)
    assert len({tuple(e["principles"]) for e in read_evals(tmp_path / "full")}) == 2
    evaluated = [eps for split, eps in calls_resumed if split == "test"]
    assert len(evaluated) == 1  # the first prompt's rewards came from evals_partial.json
    assert comparable(resumed) == comparable(full)
    assert (run / "evals.jsonl").read_text() == (tmp_path / "full" / "evals.jsonl").read_text()
    assert first_prompt in [e["principles"] for e in read_evals(run)]
    assert not (run / "evals_partial.json").exists()  # cleared by the step's checkpoint
