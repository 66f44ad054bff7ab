"""TrainConfig sources (TOML file, --set, explicit flags), clear errors, and `espl prompts` / `espl plot`
on a RUN_DIR written by the trainer's own writers (no model needed)."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from espl.cli import app
from espl.trainer import checkpoint as ckpt
from espl.trainer.espl import StepMetrics, TrainConfig, Trainer, batch_indices, derive_seed
from espl.trainer.pool import PromptPool


def test_sources_layer_in_order(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('loss = "cispo"\nbatch_problems = 3\nfixed_principles = ["Be brief."]\n[env_kwargs]\nmax_attempts = 2\n')
    cfg = TrainConfig.from_sources(f, ["batch_problems=5", "selection=lucb", "learning_rate=2e-5"], seed=9, mode=None)
    assert (cfg.loss, cfg.batch_problems, cfg.selection, cfg.learning_rate, cfg.seed) == ("cispo", 5, "lucb", 2e-5, 9)
    assert cfg.fixed_principles == ("Be brief.",) and cfg.env_kwargs == {"max_attempts": 2}
    again = tmp_path / "again.toml"
    again.write_text(cfg.to_toml())
    assert TrainConfig.from_sources(again) == cfg
    gpu = TrainConfig.from_sources(None, ["device=cuda:1", "dtype=bfloat16", "max_batch=128"])
    assert (gpu.device, gpu.dtype, gpu.max_batch) == ("cuda:1", "bfloat16", 128)


@pytest.mark.parametrize("override, match", [
    ("batch_problem=3", "did you mean batch_problems"),
    ("loss=ppo", "loss: must be one of"),
    ("batch_problems=0", "batch_problems: must be >= 1"),
    ("crossover_prob=2", "crossover_prob"),
    ("mutator=endpoint", "mutator_base_url"),
    ("nonsense", "expected key=value"),
    ("max_batch=0", "max_batch: must be >= 1"),
    ("dtype=fp8", "dtype: must be one of"),
    ("mutator_threads=-1", "mutator_threads: must be >= 0"),
])
def test_bad_config_names_the_field(override, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_sources(None, [override])


def test_paper_constants():
    p = TrainConfig.paper()
    assert (p.batch_problems, p.prompts_per_step, p.rollouts_per_pair, p.lora_rank, p.learning_rate) == (10, 3, 5, 32, 4e-5)
    assert (p.trueskill_mu, p.trueskill_sigma, p.trueskill_beta, p.trueskill_tau, p.trueskill_draw_probability) == (
        25.0, 25 / 3, 25 / 6, 25 / 300, 0.10)


def test_batches_cover_each_epoch_once_and_are_stateless():
    cfg = TrainConfig(train_problems=10, batch_problems=4)
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
    assert [r["id"] for r in json.loads(res.output)][:2] == [1, 2]
    res = runner.invoke(app, ["plot", str(run)])
    assert res.exit_code == 0, res.output
    for name in ("reward.png", "ratings.png"):
        assert (run / "plots" / name).stat().st_size > 5000
    res = runner.invoke(app, ["prompts", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no pool.json" in res.output


def test_train_refuses_to_overwrite_and_reports_bad_config(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--set", "loss=nope"])
    assert res.exit_code == 2 and "loss: must be one of" in res.output
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
    trainer.cfg = TrainConfig(tie_tolerance=0.01)
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
