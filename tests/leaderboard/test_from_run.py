"""`--from-run RUN_DIR`: a RUN_DIR written by the real trainer's persistence (Trainer.save, with a pool that
has a best and a newer prompt, and LoRA weights moved off their zero init) is read back, its adapter is
really applied, and both prompts are evaluated with it on espl/Math-v0 and stored as two agents."""

from __future__ import annotations

import json

import pytest

from espl.leaderboard.runner import file_sha256
from espl.leaderboard.store import Store

pytestmark = pytest.mark.slow

SUITE_TOML = '[[env]]\nid = "espl/Math-v0"\nepisodes = 2\n'


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import torch

    from espl.agents.hf import HFPolicy, LoraSettings
    from espl.trainer import checkpoint as ckpt
    from espl.trainer.espl import TrainConfig, Trainer

    out = tmp_path_factory.mktemp("run") / "my-run"
    cfg = TrainConfig.from_dict({"mode": "rl", "model": "smollm2-135m", "lora.rank": 4, "lora.alpha": 8,
                                 "rollout.max_new_tokens": 16})
    policy = HFPolicy(model=cfg.model, lora=LoraSettings(r=cfg.lora.rank, alpha=cfg.lora.alpha))
    trainer = Trainer(cfg, out, policy=policy)
    trainer.pool.add(("Show your working.", "End with 'Answer: <number>'."), 30.0, 1.0, parents=(0,),
                     op="mutation", birth_step=0)  # best by mu - 2 sigma (28)
    trainer.pool.add(("Answer with a number.",), 26.0, 4.0, parents=(1,), op="mutation", birth_step=1)  # newest
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # as if trained: LoRA B starts at zero, which would make the adapter a no-op
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    trainer.step_count = 2
    trainer.save()
    ckpt.write_json_atomic(out / "pool.json", trainer.pool.to_dict())
    trainer.close()
    return out


def test_read_run_picks_newest_and_best(run_dir):
    from espl.leaderboard.from_run import read_run

    run = read_run(run_dir)
    assert run.step == 2 and run.adapter_path is not None
    assert run.adapter_hash == file_sha256(str(run.adapter_path))
    assert [(p.label, p.prompt_id) for p in run.prompts] == [("newest", 2), ("best", 1)]
    assert run.prompts[1].text == "[G0]. Show your working.\n[G1]. End with 'Answer: <number>'."
    assert run.agent_name(run.prompts[1]) == "my-run@2 best prompt #1 + adapter"


def test_read_run_of_the_best_checkpoint_adds_its_heldout_prompt(run_dir, tmp_path):
    """`--from-run RUN_DIR/best`: that checkpoint's step, pool and adapter, and the prompt best/best.json names
    (here the root, #0) as heldout-best; a best/ without its record is a one-line error."""
    import shutil

    from espl.leaderboard.from_run import RunDirError, read_run
    from espl.trainer import checkpoint as ckpt

    copy = tmp_path / "my-run"
    shutil.copytree(run_dir, copy)
    state = json.loads((copy / "checkpoint" / "state.json").read_text())
    shutil.copytree(copy / "checkpoint", copy / "best")
    state["step"] = 1
    (copy / "best" / "state.json").write_text(json.dumps(state))
    (copy / "best" / ckpt.BEST_RECORD).write_text(json.dumps({"step": 1, "score": 0.5, "prompt_id": 0, "prompt": None}))
    run = read_run(copy / "best")
    assert (run.run_dir, run.step, run.checkpoint) == (copy, 1, "best")
    assert run.adapter_path == copy / "best" / "adapter.safetensors"
    assert [(p.label, p.prompt_id) for p in run.prompts] == [("newest", 2), ("best", 1), ("heldout-best", 0)]
    assert run.agent_name(run.prompts[2]) == "my-run/best@1 heldout-best prompt #0 + adapter"
    (copy / "best" / ckpt.BEST_RECORD).write_text(json.dumps({"step": 1, "score": 0.5, "prompt_id": 1}))
    assert [p.label for p in read_run(copy / "best").prompts] == ["newest", "best+heldout-best"]
    (copy / "best" / ckpt.BEST_RECORD).unlink()
    with pytest.raises(RunDirError, match="best.json"):
        read_run(copy / "best")
    assert read_run(copy).checkpoint == "last"


def test_adapter_is_applied(run_dir):
    import torch
    from safetensors.torch import load_file

    from espl.leaderboard.from_run import load_policy, read_run

    run = read_run(run_dir)
    policy = load_policy(run)
    saved = load_file(str(run.adapter_path))
    named = dict(policy.model.named_parameters())
    assert saved and all(torch.equal(named[k], v) for k, v in saved.items())
    ids = policy.tokenizer("What is 2 + 3?", return_tensors="pt").input_ids
    with torch.no_grad():
        with_adapter = policy.model(ids).logits
        with policy.adapter_disabled():
            base = policy.model(ids).logits
    assert not torch.allclose(with_adapter, base, atol=1e-4)


def test_eval_from_run_stores_both_prompts(run_dir, tmp_path):
    from espl.agents.policy import PolicySpec
    from espl.cli.leaderboard import eval_suite_command
    from espl.types import SamplingParams

    suite = tmp_path / "two.toml"
    suite.write_text(SUITE_TOML)
    db = tmp_path / "lb.db"
    params = SamplingParams(temperature=0.7, max_new_tokens=16, seed=0)
    eval_suite_command(suite=str(suite), db=db, from_run=run_dir, policy_spec=PolicySpec(), model="ignored", backend="hf",
                       system_prompt=None, params=params, as_json=True)
    with Store(db) as store:
        agents = store.agents()
        runs = store.runs()
        eps = store.episodes(full=True)
    assert sorted(a["name"] for a in agents) == ["my-run@2 best prompt #1 + adapter",
                                                 "my-run@2 newest prompt #2 + adapter"]
    assert {a["adapter_hash"] for a in agents} == {file_sha256(str(run_dir / "checkpoint" / "adapter.safetensors"))}
    assert sorted(r["metadata"]["from_run"]["prompt_id"] for r in runs) == [1, 2]
    assert len(eps) == 4
    assert all("[G0]." in e["rendered_prompt"] for e in eps)  # the trained prompt reached the model
    assert json.loads(json.dumps(runs[0]["metadata"]))["adapter_hash"] == agents[0]["adapter_hash"]
