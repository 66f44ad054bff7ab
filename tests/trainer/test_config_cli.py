"""TrainConfig sources (TOML file, --set, explicit flags), clear errors, and `espl prompts` / `espl plot`
on a RUN_DIR written by the trainer's own writers (no model needed)."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from espl.cli import app
from espl.trainer import checkpoint as ckpt
from espl.trainer.espl import StepMetrics, TrainConfig, Trainer, batch_indices, derive_seed, micro_batches
from espl.trainer.pool import PromptPool


def test_sources_layer_in_order(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[loss]\nname = "cispo"\n[data]\nbatch_problems = 3\n[selection]\nfixed_principles = ["Be brief."]\n'
                 '[env_kwargs]\nmax_attempts = 2\n')
    cfg = TrainConfig.from_sources(f, ["data.batch_problems=5", "selection.strategy=lucb", "optimizer.learning_rate=2e-5"],
                                   seed=9, mode=None)
    assert (cfg.loss.name, cfg.data.batch_problems, cfg.selection.strategy, cfg.optimizer.learning_rate, cfg.seed) == (
        "cispo", 5, "lucb", 2e-5, 9)
    assert cfg.selection.fixed_principles == ("Be brief.",) and cfg.env_kwargs == {"max_attempts": 2}
    again = tmp_path / "again.toml"
    again.write_text(cfg.to_toml())
    assert TrainConfig.from_sources(again) == cfg
    gpu = TrainConfig.from_sources(None, ["device=cuda:1", "dtype=bfloat16", "max_batch=128"])
    assert (gpu.device, gpu.dtype, gpu.max_batch) == ("cuda:1", "bfloat16", 128)


@pytest.mark.parametrize("override, match", [
    ("batch_problem=3", "did you mean batch_problems"),
    ("loss.name=ppo", "loss.name = 'ppo': must be one of .*did you mean 'ppo_clip'"),
    ("data.batch_problems=0", "data.batch_problems = 0: must be >= 1"),
    ("crossover.prob=2", "crossover.prob = 2.0: must be <= 1"),
    ("mutator.kind=endpoint", "mutator.base_url: required"),
    ("nonsense", "expected key=value"),
    ("max_batch=0", "max_batch = 0: must be >= 1"),
    ("dtype=fp8", "dtype = 'fp8': must be one of"),
    ("mutator.threads=-1", "mutator.threads = -1: must be >= 0"),
])
def test_bad_config_names_the_field(override, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_sources(None, [override])


def test_paper_constants():
    p = TrainConfig.paper()
    assert (p.data.batch_problems, p.selection.prompts_per_step, p.rollout.rollouts_per_pair, p.lora.rank,
            p.optimizer.learning_rate, p.selection.placement) == (10, 3, 5, 32, 4e-5, "user")
    t = p.trueskill
    assert (t.mu, t.sigma, t.beta, t.tau, t.draw_probability) == (25.0, 25 / 3, 25 / 6, 25 / 300, 0.10)
    # issue 16: the reference's mutator (every call at max_tokens 15000, reasoning before its JSON, no cap on
    # principles) and its evaluation (the newest prompt after every step, 10 samples per task)
    m = p.mutator_settings()
    assert (m.summary_tokens, m.critique_tokens, m.revision_tokens, m.crossover_tokens) == (15000,) * 4
    assert (m.reflection, m.max_principles, m.max_principle_words, m.max_ops_per_problem) == ("reason_then_json", 0, 32, 2)
    assert (m.temperature, m.top_p) == (0.7, 0.95)
    e = p.evaluation
    assert (e.every, e.samples, e.prompts) == (1, 10, ("newest",))
    d = TrainConfig().mutator_settings()  # the CPU default keeps the tiny model's JSON-only path
    assert (d.reflection, d.max_principles) == ("json_only", 24)


def test_batches_cover_each_epoch_once_and_are_stateless():
    cfg = TrainConfig.from_dict({"data.train_problems": 10, "data.batch_problems": 4})
    epoch0 = [i for s in range(3) for i in batch_indices(cfg, s)]  # 4 + 4 + 2
    assert sorted(epoch0) == list(range(10))
    assert batch_indices(cfg, 3) != batch_indices(cfg, 0) or batch_indices(cfg, 4) != batch_indices(cfg, 1)
    assert batch_indices(cfg, 5) == batch_indices(cfg, 5)
    assert derive_seed(1, "x", 2) == derive_seed(1, "x", 2) != derive_seed(1, "x", 3)


def _run_dir(tmp_path):
    pool = PromptPool(100)
    root = pool.add((), 25.0, 25 / 3)
    child = pool.add(("Check the units.", "Answer last."), 25.0, math.sqrt((25 / 3) ** 2 + 1), [root.id], "mutation", 0)
    child.scores.append((1, 0.75))
    child.mu, child.sigma = 27.0, 6.0
    child.rating_history.append((1, 27.0, 6.0))
    pool.add(("Answer last.",), 27.0, 6.1, [child.id], "mutation", 1)
    run = tmp_path / "run"
    run.mkdir()
    ckpt.write_json_atomic(run / "pool.json", pool.to_dict())
    trainer = Trainer.__new__(Trainer)  # only the CSV writer: no model
    trainer.run_dir = run
    nan = float("nan")
    trainer.metrics = [StepMetrics(s, 0.5 + s / 10, 2 + s, 1, 27.0, 6.0, "0;1", "0.5;0.75", 0.25, -1.0, 40, "ok", 0, 2,
                                   "off", nan, 1.0, 2.0, 3.0, 6.0) for s in range(2)]
    trainer._write_csv()
    return run


def test_prompts_and_plot_commands(tmp_path):
    run = _run_dir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["prompts", str(run), "--top", "2"])
    assert res.exit_code == 0, res.output
    assert "prompt #1" in res.output and "Check the units." in res.output and "#1 <- #0 (root)" in res.output
    res = runner.invoke(app, ["prompts", str(run), "--json", "--by", "mu"])
    # #1 and #2 tie at mu 27: the newer first, the rule of PromptPool.best and --from-run's "best"
    assert [r["id"] for r in json.loads(res.output)][:2] == [2, 1]
    res = runner.invoke(app, ["plot", str(run)])
    assert res.exit_code == 0, res.output
    for name in ("reward.png", "ratings.png"):
        assert (run / "plots" / name).stat().st_size > 5000
    res = runner.invoke(app, ["prompts", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no pool.json" in res.output


def test_train_refuses_to_overwrite_and_reports_bad_config(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--set", "loss.name=nope"])
    assert res.exit_code == 2 and "loss.name = 'nope': must be one of" in res.output
    (tmp_path / "r" / "checkpoint").mkdir(parents=True)
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--resume" in res.output


def test_crossover_inputs_from_score_matrix():
    """Step 7's evidence: per problem, the prompt that strictly beat all others (ties within 0.01: none)."""
    import numpy as np

    from espl.envs.core import Task

    pool = PromptPool(100)
    a, b, c = (pool.add((f"rule {i} for tests",), 25.0, 8.0) for i in range(3))
    trainer = Trainer.__new__(Trainer)
    trainer.cfg = TrainConfig.from_dict({"trueskill.tie_tolerance": 0.01})
    # rewards [M=3 slots, B=4 problems, N=2]: slot order a, b, c
    rewards = np.array([
        [[1, 1], [0, 0], [1, 0], [0, 0]],   # a wins problem 0 alone; ties b on problem 2
        [[0, 0], [1, 0], [1, 0], [0, 0]],   # b wins problem 1
        [[0, 0], [0, 0], [0, 0], [0, 0]],   # c wins nothing; problem 3 all tie
    ], dtype=float)
    tasks = [Task(f"t{i}", f"question {i}", i) for i in range(4)]
    slot_of = {a.id: 0, b.id: 1, c.id: 2}
    parents, wins = trainer._crossover_inputs([a, b, c], a, rewards, slot_of, tasks)
    assert [p.id for p in parents] == [a.id, b.id]
    assert wins == [["question 0"], ["question 1"]]
    # the best prompt won nothing alone: no crossover (reference: set A needs a win)
    assert trainer._crossover_inputs([a, b, c], c, rewards, slot_of, tasks) is None


class RecordingMutator:
    """A stand-in mutator that records what the trainer gives it and makes no child (tests only)."""

    def __init__(self):
        self.mutated: list = []
        self.crossed: list = []

    def mutate(self, parent, groups, seed):
        from espl.trainer.mutator import MutationResult

        self.mutated.append((tuple(parent), list(groups)))
        return MutationResult(None, "recorded")

    def crossover(self, parents, wins, seed):
        from espl.trainer.mutator import MutationResult

        self.crossed.append(([tuple(p) for p in parents], [list(w) for w in wins]))
        return MutationResult(None, "recorded")

    def close(self):
        pass


def test_mutation_and_crossover_use_the_best_slot_of_a_repeated_prompt():
    """Issue 16: prompt a fills slots 0 and 2; slot 2 scored better, so its rollouts are what the mutator
    reflects on and what crossover compares (the reference's best slot; before: the first slot)."""
    import numpy as np

    from espl.trainer.espl import Match, StepBatch
    from espl.types import Trajectory

    pool = PromptPool(100)
    a, b = pool.add(("Check the units first.",), 25.0, 8.0), pool.add(("Draw a table first.",), 25.0, 8.0)
    rewards = [[[0, 0], [0, 0]], [[1, 1], [0, 0]], [[1, 0], [1, 1]]]  # [slot, problem, rollout]; slots a, b, a
    trajs = tuple(Trajectory(env_id="espl/Math-v0", task_id=f"slot{m}", messages=[], reward=float(rewards[m][p][n]),
                             reason="correct" if rewards[m][p][n] else "wrong_answer")
                  for m, p, n in StepBatch.order((3, 2, 2)))
    batch = StepBatch((a, b, a), (0, 1), trajs, (3, 2, 2))
    assert batch.best_slot() == {a.id: 2, b.id: 1}
    trainer = Trainer.__new__(Trainer)
    trainer.cfg = TrainConfig.from_dict({"mode": "evolve"})
    trainer._tasks_env = None
    trainer.mutator = recorder = RecordingMutator()
    trainer.learning, trainer.evolving = False, True  # what __init__ sets for mode evolve
    match = Match((a, b), batch.rewards.mean(axis=(1, 2)), a)
    job, evolution = trainer._start_evolution(batch, match, True, 0)
    assert job is None and evolution is not None
    (parent, groups), = recorder.mutated
    assert parent == a.principles and [t.task_id for g in groups for t in g.trajectories] == ["slot2"] * 4
    # crossover: a's best slot wins problem 1 (its first slot won nothing, which made no crossover at all)
    (parents, wins), = recorder.crossed
    tasks = [trainer._env().make_task(p) for p in (0, 1)]
    assert parents == [a.principles, b.principles] and wins == [[tasks[1].prompt], [tasks[0].prompt]]
    assert np.allclose(match.slot_scores, [0.0, 0.5, 0.75])


def test_a_repeated_prompt_is_rated_on_its_best_slot_as_the_reference_does():
    """Issue 16: the reference sorts the slots by score (stably), keeps each prompt's first, and rates those:
    prompt a (slots 0 and 2: 0.25 and 0.75) beats b (slot 1: 0.5). Rated on the mean of its slots (before) a
    tied b at 0.5 and a draw was played. Ties between best slots keep the slot order (b's slot 1 before a's
    slot 2 when both score 0.75)."""
    from espl.trainer.espl import StepBatch
    from espl.types import Trajectory

    def batch_of(rewards, pool):
        a, b = pool.records[-2], pool.records[-1]
        trajs = tuple(Trajectory(env_id="espl/Math-v0", task_id=f"slot{m}", messages=[], reward=float(rewards[m][p][n]),
                                 reason="correct" if rewards[m][p][n] else "wrong_answer")
                      for m, p, n in StepBatch.order((3, 2, 2)))
        return StepBatch((a, b, a), (0, 1), trajs, (3, 2, 2)), a, b

    trainer = Trainer.__new__(Trainer)
    trainer.cfg = TrainConfig.from_dict({"mode": "evolve"})
    pool = PromptPool(100)
    pool.add(("Check the units first.",), 25.0, 8.0), pool.add(("Draw a table first.",), 25.0, 8.0)
    batch, a, b = batch_of([[[1, 0], [0, 0]], [[1, 0], [1, 0]], [[1, 1], [1, 0]]], pool)  # a: .25, .75; b: .5
    match = trainer._rate(batch, 0)
    assert match.best is a and a.mu > 25.0 > b.mu
    assert a.scores == [(0, 0.75)] and b.scores == [(0, 0.5)]
    pool = PromptPool(100)
    pool.add(("Check the units first.",), 25.0, 8.0), pool.add(("Draw a table first.",), 25.0, 8.0)
    batch, a, b = batch_of([[[1, 0], [1, 0]], [[1, 1], [1, 0]], [[1, 1], [1, 0]]], pool)  # a: .5, .75; b: .75
    assert trainer._rate(batch, 0).best is b  # the reference's sorted() puts slot 1 before slot 2 (not a, selected first)


# ---- issue 13: resume reads the run's config; bad input is one line, exit 2, before any model loads ----------


def _no_model(monkeypatch):
    """Any model load fails the test: validation must happen before."""
    import espl.trainer.espl as espl_mod

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(espl_mod, "build_policy", boom)
    monkeypatch.setattr(espl_mod, "build_mutator", boom)


def _checkpointed_run(tmp_path, **changes):
    """A RUN_DIR as `espl train` leaves it after 2 steps (config.toml + a checkpoint), without a model."""
    cfg = TrainConfig.from_dict({"rollout.rollouts_per_pair": 2, "data.batch_problems": 3, **changes})
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(cfg.to_toml())
    pool = PromptPool(100)
    pool.add((), 25.0, 25 / 3)
    ckpt.save(run, {"step": 2, "pool": pool.to_dict(), "metrics": [], "config": cfg.to_dict()}, {}, None, None)
    return run, cfg


def test_resume_keeps_the_runs_config_and_applies_set_on_top(tmp_path):
    from espl.trainer.espl import resumed_config

    run, original = _checkpointed_run(tmp_path)
    cfg = resumed_config(run, None, ["rollout.max_new_tokens=40", "evaluation.every=5"])
    # before: every other field returned to its default (rollouts_per_pair 2 -> 4); after: the run's own
    assert (cfg.rollout.rollouts_per_pair, cfg.data.batch_problems) == (2, 3)
    assert (cfg.rollout.max_new_tokens, cfg.evaluation.every) == (40, 5)


@pytest.mark.parametrize("args, field", [
    (["--env", "espl/ToolMath-v0"], "env"),
    (["--set", "lora.rank=8"], "lora.rank"),
    (["--set", "lora_rank=8"], "lora.rank"),
    (["--model", "qwen2.5-coder-0.5b"], "model"),
    (["--mode", "rl"], "mode"),
    (["--set", "selection.placement=user"], "selection.placement"),
    (["--set", "env_kwargs.max_attempts=3"], "env_kwargs"),
])
def test_resume_refuses_changes_that_void_the_checkpoint(tmp_path, monkeypatch, args, field):
    _no_model(monkeypatch)
    run, _ = _checkpointed_run(tmp_path)
    before = (run / "config.toml").read_text()
    res = CliRunner().invoke(app, ["train", "--out", str(run), "--resume", *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: a resumed run keeps"), res.output
    assert (run / "config.toml").read_text() == before  # never overwritten


def test_a_held_out_set_larger_than_the_test_split_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    """Math-v0's test split has 259 distinct tasks; seeds wrap around after them, so evaluation.problems=300
    would count 41 tasks twice in every held-out mean and paired test (what compare_modes' 300 did)."""
    _no_model(monkeypatch)
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--steps", "1",
                                   "--set", "evaluation.problems=300"])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "evaluation.problems = 300" in lines[0] and "use at most 259" in lines[0], res.output
    # no held-out evaluation, no check (the train split is drawn per seed)
    from espl.trainer.espl import Trainer

    with pytest.raises(AssertionError, match="a model was loaded"):
        Trainer(TrainConfig.from_dict({"evaluation.every": 0, "evaluation.problems": 300}))


def test_a_training_set_larger_than_the_train_split_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    """MATH500-v0's train split has 153 distinct tasks: data.train_problems=256 (the default) would train on
    103 of them twice per epoch. A generated train split (Math-v0's) has no limit."""
    _no_model(monkeypatch)
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--steps", "1", "--env", "espl/MATH500-v0"])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "data.train_problems = 256" in lines[0] and "train split" in lines[0], res.output
    assert "use at most 153" in lines[0], res.output
    from espl.trainer.espl import Trainer

    with pytest.raises(AssertionError, match="a model was loaded"):  # within the split: the check passes
        Trainer(TrainConfig.from_dict({"env": "espl/MATH500-v0", "data.train_problems": 153, "evaluation.every": 0}))
    with pytest.raises(AssertionError, match="a model was loaded"):  # generated: any size
        Trainer(TrainConfig.from_dict({"data.train_problems": 100_000, "evaluation.every": 0}))


def test_resume_on_a_dir_without_a_run_is_an_error(tmp_path, monkeypatch):
    _no_model(monkeypatch)
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "typo"), "--resume"])
    assert res.exit_code == 2 and "holds no run" in res.output and "Traceback" not in res.output
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "config.toml").write_text("")
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "started"), "--resume"])
    assert res.exit_code == 2 and "has not finished a step" in res.output


def test_resume_with_a_damaged_checkpoint_says_why(tmp_path, monkeypatch):
    _no_model(monkeypatch)
    run, _ = _checkpointed_run(tmp_path)
    (run / "checkpoint" / "state.json").write_text('{"step": 2, "po')  # truncated
    res = CliRunner().invoke(app, ["train", "--out", str(run), "--resume"])
    assert res.exit_code == 2 and "state.json is unreadable" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("override, match", [
    ("learning_rate=abc", "optimizer.learning_rate = 'abc': must be a number"),
    ("temperature=-1", "rollout.temperature = -1.0: must be >= 0"),
    ("env_kwargs=5", "env_kwargs = 5: must be a table"),
    ("device=gpu", "device = 'gpu': not a device; use cpu, cuda"),
    ("batch_problems=1.7", "data.batch_problems = 1.7: must be a whole number"),
    ("mutator.constrained=maybe", "mutator.constrained = 'maybe': must be true or false"),
    ("env=espl/Mth-v0", "Did you mean: 'espl/Math-v0'"),
    ("env_kwargs.bogus=1", "env_kwargs.bogus: espl/Math-v0 takes no such argument"),
    ("rollout=3", "rollout is a section"),
    ("mutator.max_tokens=256", "unknown config key .did you mean mutator"),
    ("rollout.top_p=0", "rollout.top_p = 0.0: must be > 0"),
])
def test_cli_bad_values_one_line_exit_2_no_model(monkeypatch, tmp_path, override, match):
    _no_model(monkeypatch)
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--set", override])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    import re

    assert re.search(match, errors[0]), errors[0]


def test_values_that_used_to_go_wrong_now_parse_right(caplog):
    cfg = TrainConfig.from_sources(None, ["fixed_principles=Be brief.", 'mutator_constrained="no"'])
    assert cfg.selection.fixed_principles == ("Be brief.",)  # before: one principle per character
    assert cfg.mutator.constrained is False  # before: "no" counted as on
    assert "'fixed_principles' is deprecated; use 'selection.fixed_principles'" in caplog.text
    assert TrainConfig.from_sources(None, ["mutator.constrained=off"]).mutator.constrained is False
    toml = TrainConfig.from_dict({"selection": {"fixed_principles": "Be brief."}})
    assert toml.selection.fixed_principles == ("Be brief.",)
    assert TrainConfig.from_sources(None, ["data.batch_problems=2.0"]).data.batch_problems == 2


def test_legacy_flat_toml_still_loads(tmp_path):
    f = tmp_path / "old.toml"
    f.write_text('mode = "rl"\nlora_rank = 8\nmutator = "policy"\nmutator_summary_tokens = 20\nloss = "cispo"\n'
                 'eval_every = 3\nray_workers = 4\n')
    cfg = TrainConfig.from_sources(f)
    assert (cfg.mode, cfg.lora.rank, cfg.mutator.kind, cfg.mutator.summary_tokens, cfg.loss.name,
            cfg.evaluation.every, cfg.scaleout.workers) == ("rl", 8, "policy", 20, "cispo", 3, 4)


def test_show_config_lists_every_field():
    from espl.trainer.config import all_keys

    res = CliRunner().invoke(app, ["train", "--show-config"], terminal_width=250)
    assert res.exit_code == 0
    for key in all_keys():
        assert key in res.output, key
    assert "LoRA rank" in res.output and "'reinforce_is'" in res.output


def test_toml_falls_back_to_tomli(monkeypatch):
    """Python 3.10 has no tomllib: the tomli backport (pyproject: tomli; python_version < '3.11') is used."""
    import sys

    pytest.importorskip("tomli")
    from espl.trainer import config

    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` now fails as on 3.10
    assert config.toml_module().__name__ == "tomli"
    assert TrainConfig.from_sources(None, ["seed=4"]).seed == 4


def test_step_line_is_one_line_with_tool_counts():
    from espl.cli.output import step_line

    nan = float("nan")
    m = StepMetrics(4, 0.5, 3, 1, 27.0, 6.0, "0;1", "0.5;0.75", 0.25, -1.0, 40, "no_mixed_problems", 0, -1,
                    "off", nan, 1.0, 2.0, 3.0, 6.0, tool_calls=7, tool_errors=2)
    line = step_line(m, 10)
    assert "\n" not in line and line.startswith("step 5/10") and "tools 7 (2 errors)" in line
    assert "tools" not in step_line(StepMetrics(*[getattr(m, f) for f in list(vars(m))[:20]]), 10)
    assert "context overflows" not in line
    from dataclasses import replace

    # episodes whose prompt filled the model's context (issue 13.3)
    assert "context overflows 3" in step_line(replace(m, context_overflows=3), 10)


@pytest.mark.parametrize("damaged", ["state.json", "adapter.safetensors"])
def test_resume_falls_back_to_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, caplog, damaged):
    """A truncated latest checkpoint (full disk, kill): `espl train --resume` goes on from checkpoint.prev, saying
    so before any model loads (the model load is where this test stops)."""
    import logging

    import torch

    _no_model(monkeypatch)
    run, cfg = _checkpointed_run(tmp_path)
    pool = PromptPool(100)
    pool.add((), 25.0, 25 / 3)
    for step in (2, 3):
        ckpt.save(run, {"step": step, "pool": pool.to_dict(), "metrics": [], "config": cfg.to_dict()},
                  {"w": torch.full((4,), float(step))}, None, None)
    target = run / "checkpoint" / damaged
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        res = CliRunner().invoke(app, ["train", "--out", str(run), "--resume"])
    assert isinstance(res.exception, AssertionError) and "a model was loaded" in str(res.exception)  # got past resume
    warnings = [r.getMessage() for r in caplog.records if "resuming from" in r.getMessage()]
    assert len(warnings) == 1 and damaged in warnings[0] and "checkpoint.prev (step 2) instead" in warnings[0]
    assert ckpt.load(run, warn=False).tensors["w"][0] == 2.0


def test_legacy_flat_toml_strings_and_file_errors(tmp_path):
    """The same values in a TOML file as the --set cases: a string is one principle, "no" is off; a config file
    that is not UTF-8, not TOML or missing is one line naming --config."""
    flat = tmp_path / "flat.toml"
    flat.write_text('fixed_principles = "Be brief."\nmutator_constrained = "no"\n')
    cfg = TrainConfig.from_sources(flat)
    assert cfg.selection.fixed_principles == ("Be brief.",) and cfg.mutator.constrained is False
    latin = tmp_path / "latin.toml"
    latin.write_bytes('[selection]\nfixed_principles = "Sé bref."\n'.encode("latin-1"))
    broken = tmp_path / "broken.toml"
    broken.write_text("[selection\nx = 1\n")
    for path, needle in ((latin, "not UTF-8 text"), (broken, "not valid TOML"), (tmp_path / "missing.toml", "No such file")):
        res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--config", str(path)])
        errors = [line for line in res.output.splitlines() if line.startswith("error:")]
        assert res.exit_code == 2 and len(errors) == 1 and "Traceback" not in res.output, res.output
        assert errors[0].startswith(f"error: --config {path}") and needle in errors[0], errors[0]


def test_train_env_flag_typo_is_one_line(tmp_path, monkeypatch):
    _no_model(monkeypatch)
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--env", "espl/Mth-v0"])
    assert res.exit_code == 2 and "error: env = 'espl/Mth-v0'" in res.output and "espl/Math-v0" in res.output
    assert not (tmp_path / "r").exists()


def test_placement_travels_in_the_episode():
    """Issue 12.5: the trainer puts `selection.placement` on each Episode; the env id stays a plain id (no wrapper)."""
    trainer = Trainer.__new__(Trainer)
    for placement in ("user", "system"):
        trainer.cfg = TrainConfig.from_dict({"selection.placement": placement})
        ep = trainer._episode(3, ("Check the units.",), 7)
        assert (ep.seed, ep.sample_seed, ep.placement) == (3, 7, placement) and "Check the units." in ep.system_prompt


def test_micro_batches_cap_rows_and_padded_tokens_and_keep_the_order():
    from espl.types import Trajectory

    def item(n):
        return (Trajectory(env_id="x", task_id=str(n), messages=[], reward=0.0, reason="", token_ids=[0] * n), float(n))

    lengths = [10, 20, 30, 40, 1000, 1100, 3300, 3400]
    out = micro_batches([item(n) for n in lengths], rows=4, tokens=2400)
    assert [[len(t.token_ids) for t, _ in mb] for mb in out] == [[10, 20, 30, 40], [1000, 1100], [3300], [3400]]
    assert [a for mb in out for _, a in mb] == [float(n) for n in lengths]  # every episode once, in order
    assert [len(mb) for mb in micro_batches([item(5)] * 10, rows=4, tokens=10**6)] == [4, 4, 2]  # rows alone
    assert TrainConfig().optimizer.micro_batch_tokens == 4096
    with pytest.raises(ValueError, match="optimizer.micro_batch_tokens"):
        TrainConfig.from_sources(None, ["optimizer.micro_batch_tokens=0"])
