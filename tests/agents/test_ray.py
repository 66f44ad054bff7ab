"""RayRollout on a real local Ray cluster (2 workers, 127.0.0.1) with the real packaged SmolLM2: the same
trajectories as the local rollout, LoRA weights pushed to the workers, a worker killed mid-rollout is
replaced and its episodes retried, nothing counted twice."""

from __future__ import annotations

import importlib.util
import os
import threading
import time

import pytest

from espl.agents.rollout import Episode, rollout
from espl.types import SamplingParams
from tests.conftest import require

ENV = "espl/Math-v0"
PARAMS = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=16, seed=7)
SYSTEM = "Solve the problem. End with a line 'Answer: <number>'."


def episodes(n: int) -> list[Episode]:
    return [Episode(seed=100 + i, system_prompt=SYSTEM) for i in range(n)]


def same(a, b) -> None:
    """Trajectories equal: every token, message and reward; log-probs up to float rounding (batch shapes and
    thread counts differ between a worker and the local process)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.seed, x.task_id, x.reward, x.reason) == (y.seed, y.task_id, y.reward, y.reason)
        assert x.token_ids == y.token_ids and x.mask == y.mask
        assert x.messages == y.messages
        assert x.logprobs == pytest.approx(y.logprobs, abs=2e-3)


@pytest.fixture(scope="module")
def ray_cluster():
    require(importlib.util.find_spec("ray") is not None, "the ray extra (pip install 'espl-gym[ray]')")
    from espl.agents.distributed import loopback_only

    loopback_only()  # 127.0.0.1 only, no usage-stats traffic
    import ray

    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    assert ctx.address_info["node_ip_address"] == "127.0.0.1"
    yield ray
    ray.shutdown()


def test_bad_arguments_are_named():
    from espl.agents.distributed import RayRollout, WorkerPolicy
    from espl.agents.policy import PolicySpec

    with pytest.raises(ValueError, match="num_workers"):
        RayRollout(WorkerPolicy.hf("smollm2-135m"), num_workers=0)
    with pytest.raises(ValueError, match="chunk_size"):
        RayRollout(WorkerPolicy.hf("smollm2-135m"), chunk_size=0)
    with pytest.raises(ValueError, match="backend"):
        WorkerPolicy(PolicySpec(backend="vllm-typo"))  # type: ignore[arg-type]


@pytest.mark.slow
def test_ray_rollout_equals_local_rollout(ray_cluster, smol_policy):
    from espl.agents.distributed import RayRollout, WorkerPolicy

    eps = episodes(4)
    local = rollout(ENV, smol_policy, eps, PARAMS)
    with RayRollout(WorkerPolicy.from_policy(smol_policy), num_workers=2) as rr:
        seen = []
        remote = rr.rollout(ENV, smol_policy, eps, PARAMS, progress=lambda d, n: seen.append((d, n)))
        assert rr.last.chunks == 2 and rr.last.dead_workers == 0
        pids = set(rr.last.worker_pids.values())
    same(remote, local)
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes did the work
    assert seen[-1] == (4, 4)
    # a different split (1 episode per task) gives the same trajectories again
    with RayRollout(WorkerPolicy.from_policy(smol_policy), num_workers=2, chunk_size=1) as rr:
        same(rr.rollout(ENV, None, eps, PARAMS), local)
        assert rr.last.chunks == 4


@pytest.mark.slow
def test_lora_weights_are_pushed_to_workers(ray_cluster):
    import torch

    from espl.agents.distributed import RayRollout, WorkerPolicy
    from espl.agents.hf import HFPolicy, LoraSettings

    policy = HFPolicy("smollm2-135m", lora=LoraSettings(r=4, alpha=8))
    eps = episodes(2)
    before = rollout(ENV, policy, eps, PARAMS)
    with torch.no_grad():  # "a trainer update": a large random change of the adapter
        g = torch.Generator().manual_seed(0)
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    after = rollout(ENV, policy, eps, PARAMS)
    assert [t.token_ids for t in after] != [t.token_ids for t in before]  # the update changes the samples
    with RayRollout(WorkerPolicy.from_policy(policy), num_workers=2) as rr:
        same(rr.rollout(ENV, policy, eps, PARAMS), after)
        assert rr.adapter_version == 1
        assert ray_cluster.get([a.version.remote() for a in rr.actors]) == [1, 1]


@pytest.mark.slow
def test_worker_killed_mid_rollout_is_replaced_and_nothing_counted_twice(ray_cluster, smol_policy):
    from espl.agents.distributed import RayRollout, WorkerPolicy

    eps = episodes(4)
    local = rollout(ENV, smol_policy, eps, PARAMS)
    killed: list[int] = []

    def kill_first(chunk: int, actor) -> None:
        if killed:
            return
        killed.append(chunk)

        def later() -> None:
            deadline = time.monotonic() + 120
            while not ray_cluster.get(actor.busy.remote()) and time.monotonic() < deadline:
                time.sleep(0.05)  # wait until the worker is inside its rollout, then kill it there
            ray_cluster.kill(actor)
        threading.Thread(target=later, daemon=True).start()

    with RayRollout(WorkerPolicy.from_policy(smol_policy), num_workers=2, on_dispatch=kill_first) as rr:
        old = list(rr.actors)
        out = rr.rollout(ENV, smol_policy, eps, PARAMS)
        assert rr.last.dead_workers == 1 and rr.last.retried_chunks == 1
        assert rr.actors[0] is not old[0] or rr.actors[1] is not old[1]  # a replacement was started
        # the pool is whole again: a second call runs on both workers
        same(rr.rollout(ENV, smol_policy, eps, PARAMS), local)
    same(out, local)
    assert [t.seed for t in out] == [e.seed for e in eps]  # each episode exactly once, in order


@pytest.mark.slow
def test_error_inside_the_rollout_is_raised_not_retried(ray_cluster, smol_policy):
    from espl.agents.distributed import RayRollout, WorkerPolicy
    from espl.agents.errors import RolloutError

    with RayRollout(WorkerPolicy.from_policy(smol_policy), num_workers=2) as rr:
        with pytest.raises(RolloutError, match="NoSuchEnv"):
            rr.rollout("espl/NoSuchEnv-v0", None, episodes(2), PARAMS)
        assert rr.last.dead_workers == 0


@pytest.mark.slow
def test_training_steps_on_ray_equal_local_steps(ray_cluster, tmp_path):
    """Two RL steps with rollouts on Ray workers = two local steps: the second step's rollouts use the
    adapter the first step trained, pushed to the workers."""
    from espl.agents.distributed import RayRollout, WorkerPolicy
    from espl.trainer.espl import TrainConfig, Trainer, build_policy

    cfg = TrainConfig.from_dict({"mode": "rl", "data.batch_problems": 2, "rollout.rollouts_per_pair": 4,
                                 "rollout.max_new_tokens": 24, "rollout.temperature": 1.0, "seed": 3,
                                 "optimizer.learning_rate": 1e-3,
                                 "evaluation.every": 0})  # training steps only (an evaluation would push once more)
    local = Trainer(cfg, tmp_path / "local")
    local.train(2)
    policy = build_policy(cfg)
    with RayRollout(WorkerPolicy.from_policy(policy), num_workers=2) as rr:
        remote = Trainer(cfg, tmp_path / "ray", policy=policy, rollout_fn=rr.rollout)
        remote.train(2)
        assert rr.adapter_version == 2  # pushed before each step's rollouts
    assert local.metrics[0].loss_tokens > 0  # the first step did update the weights
    for a, b in zip(local.metrics, remote.metrics):
        assert (a.mean_reward, a.prompt_scores, a.loss_tokens) == (b.mean_reward, b.prompt_scores, b.loss_tokens)
        assert a.loss == pytest.approx(b.loss, rel=1e-3, abs=1e-4)


def test_eval_cli_rejects_unknown_backend():
    from typer.testing import CliRunner

    from espl.cli import app

    r = CliRunner().invoke(app, ["eval", "--env", ENV, "--backend", "spark"])
    assert r.exit_code == 2 and "local or ray" in r.output


@pytest.mark.slow
def test_eval_cli_on_ray_equals_local(ray_cluster, tmp_path):
    import json

    from typer.testing import CliRunner

    from espl.cli import app

    args = ["eval", "--env", ENV, "--episodes", "4", "--max-new-tokens", "16", "--seed", "5", "--json"]
    runs = {}
    for name, extra in (("local", []), ("ray", ["--backend", "ray", "--ray-workers", "2"])):
        r = CliRunner().invoke(app, args + ["--out", str(tmp_path / name)] + extra)
        assert r.exit_code == 0, r.output
        runs[name] = [json.loads(line) for line in (tmp_path / name / "trajectories.jsonl").read_text().splitlines()]
    assert [(t["token_ids"], t["reward"], t["reason"]) for t in runs["ray"]] == \
        [(t["token_ids"], t["reward"], t["reason"]) for t in runs["local"]]
    assert ray_cluster.is_initialized()  # the CLI used the running cluster and left it running


@pytest.mark.slow
def test_openai_backend_on_ray_equals_local(ray_cluster, llama_server):
    """Workers with an OpenAIPolicy each talk to the same llama.cpp server (127.0.0.1); every request carries
    its episode's own seed, so splitting the episodes between workers does not change the replies."""
    from espl.agents.distributed import RayRollout, WorkerPolicy
    from espl.agents.openai_policy import OpenAIPolicy

    eps = episodes(4)
    local = rollout(ENV, OpenAIPolicy(llama_server, "smollm2"), eps, PARAMS)
    with RayRollout(WorkerPolicy.openai(base_url=llama_server, model="smollm2"), num_workers=2) as rr:
        remote = rr.rollout(ENV, None, eps, PARAMS)
        assert len(set(rr.last.worker_pids.values())) == 2
    assert [(t.messages, t.reward, t.reason) for t in remote] == [(t.messages, t.reward, t.reason) for t in local]
    assert len({t.messages[-1]["content"] for t in local}) > 1  # real sampling, not one reply four times


def test_adapter_directory_for_disk_loading_engines_is_a_valid_peft_adapter(tmp_path):
    """What a vLLM worker gets: a PEFT directory written from the pushed state + config; PEFT itself loads
    it back into the base model and gives the driver's outputs."""
    import torch
    from peft import PeftModel, get_peft_model_state_dict

    from espl.agents.distributed import write_peft_adapter
    from espl.agents.hf import HFPolicy, LoraSettings
    from espl.agents.models import load_model

    policy = HFPolicy("smollm2-135m", lora=LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    cfg = next(iter(policy.model.peft_config.values())).to_dict()
    path = write_peft_adapter(tmp_path / "v1", cfg, get_peft_model_state_dict(policy.model))
    base, _ = load_model("smollm2-135m")
    loaded = PeftModel.from_pretrained(base, path)
    ids = torch.tensor([[1, 504, 3400, 314, 253, 2830]])
    with torch.no_grad():
        want = policy.model(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4)
    with torch.no_grad(), loaded.disable_adapter():
        assert not torch.allclose(loaded(input_ids=ids).logits, want, atol=1e-3)  # the adapter matters


@pytest.mark.slow
def test_trainer_builds_the_ray_backend_its_config_names(ray_cluster, tmp_path):
    """Issue 12.5: `Trainer(TrainConfig(scaleout.backend="ray"))` runs its rollouts on Ray workers (before: the
    field was honoured only by the CLI, and the library trained locally without a word)."""
    from espl.trainer.espl import TrainConfig, Trainer

    cfg = TrainConfig.from_dict({"mode": "rl", "data.batch_problems": 1, "rollout.rollouts_per_pair": 2,
                                 "rollout.max_new_tokens": 8, "seed": 3, "scaleout.backend": "ray",
                                 "scaleout.workers": 1})
    trainer = Trainer(cfg, tmp_path / "run")
    try:
        assert type(trainer.rollout_fn.__self__).__name__ == "RayRollout"
        trainer.step()
        assert trainer.rollout_fn.__self__.adapter_version == 1  # the adapter was pushed to the worker
    finally:
        trainer.close()
