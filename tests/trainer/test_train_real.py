"""The trainer with the real packaged model (SmolLM2-135M, LoRA): one real step, exact resume, and a
kill -9 in the middle of a step.

`ParityEnv` is a real env of the contract whose reward (1 when the reply has an even number of characters)
varies between rollouts of any model, so every step has groups with non-zero advantages. The mutator is
`ScriptedMutator` (a scripted fake LLM, named so) where a test needs a child every step; the kill test runs
`espl train` as it ships (real LLM mutator).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import trueskill

from espl.envs.core import MultiTurnEnv, Outcome, Task
from espl.trainer.espl import TrainConfig, Trainer, build_policy
from espl.trainer.mutator import ScriptedMutator

pytestmark = pytest.mark.slow

PARITY_ID = "espl-test/Parity-v0"


class ParityEnv(MultiTurnEnv):
    family = "test"
    description = "reward 1 when the reply has an even number of characters"

    def make_task(self, index: int) -> Task:
        return Task(id=f"parity/{index}", prompt=f"Say something about the number {index}.", answer="even")

    def evaluate(self, reply, task, turn) -> Outcome:
        even = len(reply.get("content", "")) % 2 == 0
        return Outcome(1.0 if even else 0.0, "correct" if even else "wrong_answer", True)


if PARITY_ID not in gym.registry:
    gym.register(PARITY_ID, entry_point=ParityEnv)


def scripted_llm(prompt: str) -> str:
    """Always proposes one new principle; the revision plan keeps everything."""
    if "extract generalizable principles" in prompt:
        n = prompt.count("[G")
        return json.dumps([{"operation": "add", "principle": f"Principle {n}: keep replies short and even."}])
    if "final revision plan" in prompt:
        return "[]"
    return "1. answered"


def tiny(**kw) -> TrainConfig:
    """A small config; `kw` in dotted keys, e.g. tiny(**{"rollout.max_new_tokens": 8})."""
    base = {"env": PARITY_ID, "data.batch_problems": 2, "selection.prompts_per_step": 2, "rollout.rollouts_per_pair": 4,
            "rollout.max_new_tokens": 12, "data.train_problems": 16, "optimizer.learning_rate": 1e-3, "seed": 3}
    return TrainConfig.from_dict({**base, **kw})


def lora_params(policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}


def test_one_real_step_updates_lora_grows_pool_and_rates_like_trueskill(tmp_path):
    cfg = tiny(**{"selection.prompts_per_step": 3})
    policy = build_policy(cfg)
    trainer = Trainer(cfg, tmp_path / "run", policy=policy, mutator=ScriptedMutator(scripted_llm))
    # a second prompt in the pool, so the step plays a real match between two distinct prompts
    trainer.pool.add(["Answer in one short sentence."], 26.0, 7.0, parents=[0], op="mutation", birth_step=-1)
    before = {r.id: (r.mu, r.sigma) for r in trainer.pool.records}
    lora_before = lora_params(policy)

    m = trainer.step()
    trainer.close()

    changed = [n for n, p in lora_params(policy).items() if not torch.equal(p, lora_before[n])]
    assert m.skip_ratio < 1.0 and m.loss_tokens > 0
    assert changed, "no LoRA parameter moved"
    assert m.pool_size == 3 and m.mutation == "ok" and m.child_id == 2
    # ratings: the same ranking fed directly to the trueskill package
    ids = [int(i) for i in m.selected.split(";")]
    slot = [float(s) for s in m.prompt_scores.split(";")]
    score = {i: sum(s for j, s in zip(ids, slot) if j == i) / ids.count(i) for i in set(ids)}
    order = sorted(dict.fromkeys(ids), key=lambda i: score[i], reverse=True)
    ranks = [0]
    for a, b in zip(order, order[1:]):
        ranks.append(ranks[-1] + (score[a] - score[b] > cfg.trueskill.tie_tolerance))
    env = trueskill.TrueSkill(mu=25, sigma=25 / 3, beta=25 / 6, tau=25 / 300, draw_probability=0.10)
    expected = env.rate([(env.create_rating(*before[i]),) for i in order], ranks=ranks)
    for i, (rating,) in zip(order, expected):
        rec = trainer.pool.get(i)
        assert (rec.mu, rec.sigma) == (pytest.approx(rating.mu, abs=1e-9), pytest.approx(rating.sigma, abs=1e-9))
    # the child of the batch's best prompt: its μ, σ' = sqrt(σ² + 1)
    best = trainer.pool.get(order[0])
    child = trainer.pool.get(2)
    assert child.parents == (best.id,) and child.mu == best.mu
    assert child.sigma == pytest.approx(math.sqrt(best.sigma**2 + 1))
    # RUN_DIR contents
    run = tmp_path / "run"
    for name in ("config.toml", "metrics.csv", "pool.json", "checkpoint/state.json", "checkpoint/adapter.safetensors"):
        assert (run / name).is_file(), name
    assert list((run / "tb").iterdir())
    pool = json.loads((run / "pool.json").read_text())
    assert {"id", "principles", "mu", "sigma", "parents", "op", "birth_step", "scores"} <= set(pool["prompts"][0])
    # a bounded sample of what the model did (issue 13.9): trajectory_samples episodes of the step, every message
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == cfg.output.trajectory_samples and {s["step"] for s in samples} == {0}
    assert {s["prompt_id"] for s in samples} <= set(ids) and {s["problem"] for s in samples}
    for s in samples:
        assert [msg["role"] for msg in s["messages"]][-1] == "assistant" and s["reason"] in ("correct", "wrong_answer")
    with open(run / "metrics.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert (row["tool_calls"], row["tool_errors"], row["context_overflows"]) == ("0", "0", "0")  # no tools here


def test_trainer_logprobs_match_sampling_logprobs_on_policy():
    """Token alignment and temperature: before any update, log π_θ recomputed by the trainer on the
    recorded tokens equals the sampler's log-probs on every generated token (IS ratio 1)."""
    cfg = tiny()
    trainer = Trainer(cfg, None, policy=build_policy(cfg), mutator=ScriptedMutator(scripted_llm))
    episodes = [trainer._episode(i, ["Answer briefly."] if i % 2 else (), 100 + i) for i in range(4)]
    from espl.types import SamplingParams

    trajs = trainer._rollout(episodes, SamplingParams(temperature=0.7, max_new_tokens=12, seed=5))
    with torch.no_grad():
        lp, old, mask, _ = trainer.policy.trajectory_logprobs(trajs, [1.0] * 4, 0.7)
    assert mask.sum() > 0
    diff = ((lp - old).abs() * mask).max()
    assert float(diff) < 2e-3, float(diff)
    trainer.close()


def comparable(trainer: Trainer) -> tuple:
    # nan != nan: an unevaluated test_reward (nan) is compared as text
    rows = [{k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in vars(m).items() if k not in m.TIMING}
            for m in trainer.metrics]
    return rows, trainer.pool.to_dict()


def test_resume_is_exact(tmp_path):
    # held-out evaluation off: it runs after each train() call's last step, which differ between the two runs
    # (tests/trainer/test_heldout.py resumes with it on)
    cfg = tiny(**{"data.batch_problems": 1, "rollout.rollouts_per_pair": 3, "rollout.max_new_tokens": 8,
                  "evaluation.every": 0})
    full = Trainer(cfg, tmp_path / "full", policy=build_policy(cfg), mutator=ScriptedMutator(scripted_llm))
    full.train(4)
    first = Trainer(cfg, tmp_path / "split", policy=build_policy(cfg), mutator=ScriptedMutator(scripted_llm))
    first.train(2)
    split = tmp_path / "split"
    original_config = (split / "config.toml").read_text()
    with open(split / "mutations.jsonl", "a") as f:  # as if killed in step 2 after its mutation was logged
        f.write(json.dumps({"step": 2, "reason": "cut off"}) + "\n")
    resumed = Trainer(cfg, split, policy=build_policy(cfg), mutator=ScriptedMutator(scripted_llm), resume=True)
    assert resumed.step_count == 2
    resumed.train(4)
    assert comparable(resumed) == comparable(full)
    a, b = lora_params(full.policy), lora_params(resumed.policy)
    assert all(torch.equal(a[n], b[n]) for n in a)
    with open(split / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [0, 1, 2, 3]
    # 13.10: no duplicate mutation rows after a resume; the rows equal the uninterrupted run's
    rows = [json.loads(line) for line in (split / "mutations.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert (split / "mutations.jsonl").read_text() == (tmp_path / "full" / "mutations.jsonl").read_text()
    # 13.1: a resume with a safe change keeps config.toml and records the change
    more = cfg.replace(**{"evaluation.every": 5, "output.checkpoint_every": 2})
    again = Trainer(more, split, policy=build_policy(more), mutator=ScriptedMutator(scripted_llm), resume=True)
    again.close()
    assert (split / "config.toml").read_text() == original_config
    assert TrainConfig.from_sources(split / "config.resume-1.toml") == more
    log = [json.loads(line) for line in (split / "resumes.jsonl").read_text().splitlines()]
    assert log[0] == {"step": 2, "changes": {}}
    assert log[1]["step"] == 4 and log[1]["changes"] == {"evaluation.every": [0, 5], "output.checkpoint_every": [1, 2]}


def _rows(run: Path) -> list[dict]:
    path = run / "metrics.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def _checkpoint_step(run: Path) -> int:
    try:
        return int(json.loads((run / "checkpoint" / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def test_kill_9_during_a_step_then_resume_then_ctrl_c(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "espl", "train", "--steps", "3", "--out", str(run), "--seed", "1",
            "--set", "data.batch_problems=2", "--set", "rollout.rollouts_per_pair=2", "--set", "rollout.max_new_tokens=16",
            "--set", "mutator.summary_tokens=16", "--set", "mutator.critique_tokens=48",
            "--set", "mutator.revision_tokens=48"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 900
        # wait until step 0's row AND its checkpoint are written: from then on the process is inside step 1
        while not (len(_rows(run)) >= 1 and _checkpoint_step(run) == len(_rows(run))) and time.time() < deadline \
                and proc.poll() is None:
            time.sleep(0.2)
        assert len(_rows(run)) >= 1, proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timeout"
        time.sleep(2)
        rows_before = len(_rows(run))
        assert proc.poll() is None and rows_before < 3
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = _rows(run)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    # the kill landed mid-step: after step rows_before - 1 was checkpointed, before step rows_before wrote its row
    assert len(done) == rows_before == state["step"] == len(state["metrics"]) >= 1
    assert proc.returncode == -signal.SIGKILL
    kept = [{k: v for k, v in r.items()} for r in done[: state["step"]]]

    # resume; Ctrl-C (SIGINT) once it has finished one more step: it says where it stopped and how to continue
    proc = subprocess.Popen(args + ["--resume"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 900
        while _checkpoint_step(run) <= rows_before and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # 13.9: a step is one line even when stdout is not a terminal (rich wrapped it at 80 columns)
    step_lines = [line for line in output.splitlines() if line.startswith("step ")]
    assert step_lines and all("(rollout" in line and len(line) > 80 for line in step_lines), output[-2000:]
    assert "Loading weights" not in output and "FutureWarning" not in output  # quiet by default (-v shows them)
    if proc.returncode == 130:
        assert "interrupted in step" in output and "--resume" in output, output[-2000:]
        assert "Traceback" not in output, output[-3000:]
    else:  # it finished all 3 steps before the signal arrived
        assert proc.returncode == 0, output[-2000:]

    out = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-2000:]
    after = _rows(run)
    assert [int(r["step"]) for r in after] == [0, 1, 2]
    assert after[: len(kept)] == kept  # nothing before the killed step was lost or changed
    pool = json.loads((run / "pool.json").read_text())
    assert pool["prompts"] and all(isinstance(p["principles"], list) for p in pool["prompts"])
    steps = [json.loads(line)["step"] for line in (run / "mutations.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]  # no duplicate rows from the redone steps


def test_llamacpp_mutator_is_the_base_gguf_constrained_and_stops_with_the_trainer(tmp_path):
    """mutator = "llamacpp": the frozen base model's GGUF behind a llama.cpp server on 127.0.0.1; its
    operations are JSON-schema constrained by the server; closing the trainer stops the server."""
    from tests.conftest import require

    require(importlib.util.find_spec("xllamacpp") is not None, "xllamacpp (llama.cpp server)")
    from espl.trainer.espl import build_mutator

    cfg = tiny(**{"mutator.kind": "llamacpp", "rollout.rollouts_per_pair": 4, "rollout.max_new_tokens": 12,
                  "mutator.summary_tokens": 24, "mutator.critique_tokens": 32, "mutator.revision_tokens": 48})
    mutator = build_mutator(cfg, None)
    assert mutator.constrained and mutator.policy.base_url.startswith("http://127.0.0.1:")
    trainer = Trainer(cfg, tmp_path / "run", mutator=mutator)
    m = trainer.step()
    log = (tmp_path / "run" / "mutations.jsonl").read_text()
    assert m.mutation == json.loads(log.splitlines()[-1])["reason"]
    for rec in trainer.pool.records:
        assert all(isinstance(p, str) and p.strip() and len(p.split()) <= cfg.mutator.max_principle_words for p in rec.principles)
    url = mutator.policy.base_url
    trainer.close()
    assert mutator.policy.owned_server is None
    import urllib.request

    with pytest.raises(OSError):  # the server is gone
        urllib.request.urlopen(url + "/models", timeout=5)


def test_llamacpp_mutator_with_one_slot_replies_the_same_in_every_run():
    """mutator.slots = 1: the server decodes one request at a time, so a reply never depends on which other
    requests shared its batch, and two runs (two servers) give the same sampled replies for the same seeds."""
    from tests.conftest import require

    require(importlib.util.find_spec("xllamacpp") is not None, "xllamacpp (llama.cpp server)")
    from espl.agents.policy import SamplingParams, build_policy
    from espl.trainer.espl import mutator_spec

    cfg = tiny(**{"mutator.kind": "llamacpp", "mutator.slots": 1})
    spec = mutator_spec(cfg)
    assert (spec.backend, spec.parallel) == ("llamacpp", 1)
    # prompts of different lengths: with 4 slots, 2-9 of 12 such replies differed between two runs here
    convs = [[{"role": "user", "content": "Summarise this trajectory. " * (1 + 7 * a) + f"Answer {a}."}]
             for a in range(8)]
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=64, seed=11)
    replies = []
    for _ in range(2):
        policy = build_policy(spec)
        try:
            assert policy.max_concurrency == 1
            replies.append([c.text for c in policy.generate(convs, params)])
        finally:
            policy.close()
    assert replies[0] == replies[1]
    assert len(set(replies[0])) > 1  # sampled, per-request seeds: not one reply repeated


def test_llamacpp_mutator_needs_a_gguf_model():
    from espl.agents.llamacpp import llamacpp_policy

    with pytest.raises(ValueError, match="model: 'org/some-model' is not a GGUF model"):
        llamacpp_policy("org/some-model")


def test_multi_turn_episodes_train_only_on_policy_tokens(tmp_path):
    """Math-v0 with max_attempts=2: a wrong answer gets env feedback and a second turn. The loss counts exactly
    the policy's own tokens of the kept groups; prompt and feedback tokens are masked out."""
    from espl.agents.rollout import rollout
    from espl.trainer.loss import kept_groups

    captured = []

    def capture(*args, **kwargs):
        out = rollout(*args, **kwargs)
        captured.extend(out)
        return out

    cfg = TrainConfig.from_dict({"mode": "rl", "env": "espl/Math-v0", "env_kwargs": {"max_attempts": 2},
                                 "data.batch_problems": 2, "selection.prompts_per_step": 1,
                                 "rollout.rollouts_per_pair": 4, "rollout.max_new_tokens": 24, "seed": 1})
    trainer = Trainer(cfg, None, rollout_fn=capture)
    m = trainer.step()
    trainer.close()
    assert len(captured) == 8
    two_turns = [t for t in captured if sum(msg["role"] == "assistant" for msg in t.messages) == 2]
    assert two_turns, "no episode got a second turn"
    tok = trainer.policy.tokenizer
    for t in two_turns:
        feedback = [msg["content"] for msg in t.messages if msg["role"] == "user"][-1]
        generated = tok.decode([i for i, k in zip(t.token_ids, t.mask) if k])
        assert feedback.strip()[:20] not in generated  # the env's feedback turn is not trained on
        first_on, last_on = t.mask.index(1), len(t.mask) - 1 - t.mask[::-1].index(1)
        assert 0 in t.mask[first_on:last_on]  # a masked gap between the two replies
    rewards = np.array([t.reward for t in captured]).reshape(1, 2, 4)
    keep = kept_groups(rewards, "group")
    expected = sum(sum(captured[b * 4 + n].mask[1:]) for b in range(2) if keep[0, b] for n in range(4))
    assert m.loss_tokens == expected > 0
