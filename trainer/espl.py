"""E-SPL: Evolutionary System Prompt Learning + RL on the weights, one file top to bottom.

Paper: Zhang, Chen, Stadie, "Evolutionary System Prompt Learning can Facilitate Reinforcement Learning for
LLMs" (arXiv 2602.14697); official code `LunjunZhang/E-SPL` (`system_prompt_learning_rl.py`). The
algorithm is ../shared/ESPL_SPEC.md steps 1-8; the numbered sections of `Trainer.step` follow them.

Modes on one code path (the paper's ablations):
    espl    prompts evolve (mutation, optional crossover) and the LoRA weights learn by RL;
    rl      one fixed prompt (`fixed_principles`, empty by default), weights learn, no evolution;
    evolve  prompts evolve, no weight update.

Defaults are CPU-sized (2 cores, SmolLM2-135M); where they differ from the reference the reference's
value is in the comment as [ref: ...] and `TrainConfig.paper()` returns the reference constants.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import logging
import math
import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from espl.trainer import checkpoint as ckpt
from espl.trainer.config import ConfigError, TrainConfig, resume_changes
from espl.trainer.loss import LOSSES, LossSettings, advantages, kept_groups, skip_ratio
from espl.trainer.mutator import LLMMutator, Mutator, MutationResult, MutatorSettings, RolloutGroup
from espl.trainer.pool import (
    PromptPool,
    PromptRecord,
    TrueSkillSettings,
    crossover_rating,
    mutation_rating,
    prompt_text,
    rate_match,
    select_prompts,
)
from espl.types import SamplingParams, Trajectory

log = logging.getLogger(__name__)

def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from the run seed and a purpose/step: every random draw of a step comes from seeds
    derived this way, so a resumed run draws exactly what an uninterrupted one would."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class StepMetrics:
    """One row of metrics.csv."""

    step: int
    mean_reward: float
    pool_size: int
    best_id: int
    best_mu: float
    best_sigma: float
    selected: str  # prompt ids of the step, "3;5;5"
    prompt_scores: str  # their mean rewards, same order
    skip_ratio: float
    loss: float
    loss_tokens: int
    mutation: str  # "ok" / rejection reason / "off"
    mutation_rejected_ops: int
    child_id: int  # -1 when no child
    crossover: str
    test_reward: float  # nan unless evaluated this step
    time_rollout: float
    time_update: float
    time_mutation: float
    time_total: float

    TIMING = ("time_rollout", "time_update", "time_mutation", "time_total")


# ---- building the pieces -----------------------------------------------------------------------------------


def build_policy(cfg: TrainConfig) -> Any:
    """The trainable policy: the HF model with a fresh LoRA adapter (PEFT), initialised from the run seed."""
    import torch

    from espl.agents.hf import HFPolicy, LoraSettings

    torch.manual_seed(derive_seed(cfg.seed, "lora-init"))  # LoRA A matrices are random: same seed, same start

    return HFPolicy(model=cfg.model, lora=LoraSettings(r=cfg.lora.rank, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout),
                    device=cfg.device, dtype=cfg.dtype, max_batch=cfg.max_batch)


def build_mutator(cfg: TrainConfig, policy: Any) -> Mutator:
    """The LLM mutator: the frozen base model (a separate copy, so it can run while the policy trains: in torch,
    or its GGUF in a llama.cpp server), the current policy, or an OpenAI-compatible endpoint."""
    if cfg.mutator.kind == "policy":
        llm = policy
    elif cfg.mutator.kind == "endpoint":
        from espl.agents.openai_policy import OpenAIPolicy

        llm = OpenAIPolicy(base_url=cfg.mutator.base_url, model=cfg.mutator.model or cfg.model)
    elif cfg.mutator.kind == "llamacpp":
        from espl.agents.llamacpp import llamacpp_policy

        llm = llamacpp_policy(cfg.mutator.model or cfg.model, threads=cfg.mutator.threads)
    else:
        from espl.agents.hf import HFPolicy

        llm = HFPolicy(model=cfg.mutator.model or cfg.model, device=cfg.device, dtype=cfg.dtype, max_batch=cfg.max_batch)
    return LLMMutator(llm, cfg.mutator_settings())


def build_ray_rollout(cfg: TrainConfig, policy: Any) -> tuple[Callable[..., list[Trajectory]], Callable[[], None]]:
    """scaleout.backend = "ray": rollouts on Ray workers, each with its own copy of the policy that receives
    the trained adapter every step (agents/distributed.py, docs/scaling.md). Returns (rollout_fn, close)."""
    from espl.agents.distributed import RayRollout, WorkerPolicy

    s = cfg.scaleout
    rr = RayRollout(WorkerPolicy.from_policy(policy, device="cuda" if s.gpus_per_worker > 0 else "cpu"),
                    address=s.ray_address or None, num_workers=s.workers, cpus_per_worker=s.cpus_per_worker,
                    gpus_per_worker=s.gpus_per_worker)
    log.info("rollouts on Ray: %d workers (%s)", s.workers, s.ray_address or "a private instance on 127.0.0.1")
    return rr.rollout, rr.close


def resumed_config(run_dir: str | Path, path: str | Path | None = None, overrides: Sequence[str] = (),
                   **explicit: Any) -> TrainConfig:
    """The configuration a resumed run continues with: the one its checkpoint was trained with <- a TOML file
    <- `--set` overrides <- explicit keywords. Refuses (ConfigError, naming the field) a change that would make
    the checkpoint meaningless (`config.RESUME_FIXED`); CheckpointError when the dir holds no usable run."""
    run_dir = Path(run_dir)
    if not ckpt.exists(run_dir):
        what = "a run that has not finished a step yet" if (run_dir / "config.toml").is_file() else "no run"
        raise ckpt.CheckpointError(f"--resume: {run_dir} holds {what} (no checkpoint/state.json); "
                                   "drop --resume to start a new run there")
    state = ckpt.load(run_dir).state
    original = TrainConfig.from_dict(state["config"], warn=False)
    cfg = TrainConfig.from_sources(path, overrides, base=original, **explicit)
    resume_changes(original, cfg)
    return cfg


def batch_indices(cfg: TrainConfig, step: int) -> list[int]:
    """Step 1: the step's B problems, from a per-epoch shuffle of the training set (stateless in `step`)."""
    per_epoch = math.ceil(cfg.data.train_problems / cfg.data.batch_problems)
    epoch, batch = divmod(step, per_epoch)
    order = list(range(cfg.data.train_problems))
    random.Random(derive_seed(cfg.seed, "epoch", epoch)).shuffle(order)
    return order[batch * cfg.data.batch_problems : (batch + 1) * cfg.data.batch_problems]


def _user_placement_env(env_id: str, **kwargs: Any) -> Any:
    return _UserPlacement(env_id, kwargs)


def _UserPlacement(env_id: str, kwargs: dict) -> Any:
    """The env with `system_prompt_placement="user"` added to every reset (a Gymnasium wrapper)."""
    import gymnasium as gym

    class UserPlacement(gym.Wrapper):
        def reset(self, *, seed=None, options=None):
            return self.env.reset(seed=seed, options={**(options or {}), "system_prompt_placement": "user"})

    return UserPlacement(gym.make(env_id, **kwargs))


def token_logprobs(model: Any, trajectories: Sequence[Trajectory], advs: Sequence[float], pad: int,
                   temperature: float) -> tuple[Any, Any, Any, Any]:
    """Step 4's inputs for one micro-batch: per-token log π_θ (with gradient), the sampling-time log-probs,
    the generated-token mask and the advantages, all shaped [batch, positions predicted].

    Sequences are right-padded; position j predicts token j+1. Logits are computed only from the position
    before the first generated token on: the prompt's positions carry no loss, so the LM head (a fifth of
    SmolLM2's FLOPs) skips them.
    """
    import torch

    width = max(len(t.token_ids) for t in trajectories)
    n = len(trajectories)
    ids = torch.full((n, width), pad, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    old, mask, adv = torch.zeros((n, width)), torch.zeros((n, width)), torch.zeros((n, width))
    for j, (t, a) in enumerate(zip(trajectories, advs)):
        L = len(t.token_ids)
        ids[j, :L] = torch.tensor(t.token_ids)
        attn[j, :L] = 1
        old[j, :L] = torch.tensor(t.logprobs, dtype=torch.float32)
        mask[j, :L] = torch.tensor(t.mask, dtype=torch.float32)
        adv[j, :L] = a
    start = max(int(mask.argmax(dim=1).min()) - 1, 0)
    device = next(model.parameters()).device
    ids, attn = ids.to(device), attn.to(device)
    logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=width - start).logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    targets = ids[:, start + 1:]
    lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    sl = slice(start + 1, None)
    return lp, old[:, sl].to(device), mask[:, sl].to(device), adv[:, sl].to(device)


# ---- the trainer -------------------------------------------------------------------------------------------


class Trainer:
    """Holds the run's state (pool, policy, optimizer, step) and runs E-SPL steps.

    `policy` must implement the Policy protocol and, for modes espl/rl, expose `.model` (a PEFT
    LoRA-wrapped torch module) and `.tokenizer`. `rollout_fn(env_id, policy, episodes, params, env_kwargs)`
    defaults to `espl.agents.rollout.rollout`.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: str | Path | None = None,
        *,
        policy: Any = None,
        mutator: Mutator | None = None,
        resume: bool = False,
        rollout_fn: Callable[..., list[Trajectory]] | None = None,
    ):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir else None
        loaded = None
        if resume:  # checked before any model loads: a run that cannot be resumed says why, at once
            if self.run_dir is None:
                raise ValueError("resume=True needs a run_dir")
            loaded = ckpt.load(self.run_dir)  # CheckpointError (one line) when there is no usable checkpoint
            changes = resume_changes(TrainConfig.from_dict(loaded.state["config"], warn=False), cfg)
        self.policy = policy if policy is not None else build_policy(cfg)
        self.evolving, self.learning = cfg.evolving, cfg.learning
        self.mutator = mutator if mutator is not None else (build_mutator(cfg, self.policy) if self.evolving else None)
        self._close_rollout: Callable[[], None] = lambda: None
        if rollout_fn is None and cfg.scaleout.backend == "ray":
            rollout_fn, self._close_rollout = build_ray_rollout(cfg, self.policy)
        self.rollout_fn = rollout_fn  # e.g. RayRollout(...).rollout (agents/distributed.py); None: local
        self.pool = PromptPool(cfg.pool.max_size)
        ts = cfg.trueskill.settings()
        self.pool.add(cfg.selection.fixed_principles, ts.mu, ts.sigma, op="fixed" if cfg.mode == "rl" else "root")
        self.step_count = 0
        self.checkpointed_steps = 0  # steps the newest checkpoint holds
        self.metrics: list[StepMetrics] = []
        self.optimizer = self._make_optimizer() if self.learning else None
        self._tasks_env: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espl-mutator")
        self._tb: Any = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if loaded is not None:
                self._restore(loaded)
                self._record_resume(changes)
            else:
                (self.run_dir / "config.toml").write_text(cfg.to_toml())

    # -- plumbing --
    def _make_optimizer(self) -> Any:
        import torch

        params = [p for p in self.policy.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the policy has no trainable parameters: modes espl/rl need a LoRA-wrapped model")
        c = self.cfg
        return torch.optim.Adam(params, lr=c.optimizer.learning_rate, betas=(c.optimizer.adam_beta1, c.optimizer.adam_beta2), eps=c.optimizer.adam_eps)

    def _env(self) -> Any:
        if self._tasks_env is None:
            import gymnasium as gym

            self._tasks_env = gym.make(self.cfg.env, **self.cfg.env_kwargs).unwrapped
        return self._tasks_env

    def _rollout(self, episodes: list, params: SamplingParams, split: str | None = None) -> list[Trajectory]:
        from espl.agents.rollout import rollout

        kwargs = dict(self.cfg.env_kwargs)
        if split:
            kwargs["split"] = split
        env: Any = self.cfg.env
        if self.cfg.selection.placement == "user":  # the reference's placement: principles at the top of the user turn
            env = functools.partial(_user_placement_env, self.cfg.env)  # picklable: Ray workers build it
        return (self.rollout_fn or rollout)(env, self.policy, episodes, params, env_kwargs=kwargs)

    def _episode(self, index: int, principles: Sequence[str], seed: int) -> Any:
        from espl.agents.rollout import Episode

        return Episode(seed=index, system_prompt=prompt_text(principles, self.cfg.selection.placement), sample_seed=seed)

    # -- one step: ESPL_SPEC steps 1-8 --
    def step(self) -> StepMetrics:
        cfg, step = self.cfg, self.step_count
        t0 = time.perf_counter()

        # 1. Sample a batch of B problems (per-epoch shuffle of the training set).
        problems = batch_indices(cfg, step)
        rng = random.Random(derive_seed(cfg.seed, "step", step))

        # 2. Select M prompts from the K newest; the newest is always included.
        k = cfg.selection.choose_from_newest if self.evolving else 1
        selected = select_prompts(self.pool, cfg.selection.prompts_per_step, k, cfg.selection.strategy, rng)

        # 3. Rollouts: N per (prompt, problem), B*M*N episodes, ordered [M, B, N].
        M, B, N = len(selected), len(problems), cfg.rollout.rollouts_per_pair
        params = SamplingParams(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens,
                                seed=derive_seed(cfg.seed, "rollout", step))
        episodes = [self._episode(p, rec.principles, derive_seed(cfg.seed, "episode", step, m, b, n))
                    for m, rec in enumerate(selected) for b, p in enumerate(problems) for n in range(N)]
        trajectories = self._rollout(episodes, params)
        rewards = np.array([t.reward for t in trajectories], dtype=np.float64).reshape(M, B, N)
        t_rollout = time.perf_counter() - t0

        # 5. Rate: each selected prompt's score is its mean reward over the batch (pass@1); one free-for-all
        #    TrueSkill match among the distinct prompts, scores within tie_tolerance tied. (Done before the
        #    update so the mutator, which needs the winner, can run while the weights train.)
        slot_scores = rewards.mean(axis=(1, 2))
        by_id: dict[int, list[float]] = {}
        for rec, s in zip(selected, slot_scores):
            by_id.setdefault(rec.id, []).append(float(s))
        distinct = list({rec.id: rec for rec in selected}.values())
        ranked = rate_match(distinct, [float(np.mean(by_id[r.id])) for r in distinct], cfg.trueskill.settings(), cfg.trueskill.tie_tolerance, step)
        best = ranked[0]

        # 6./7. Mutate the batch's best prompt (and maybe cross over), alongside the update when possible.
        t_mut = time.perf_counter()
        job: Future | None = None
        if self.evolving:
            do_crossover = rng.random() < cfg.crossover.prob and len(distinct) >= 2  # drawn every step, as in ref
            tasks = [self._env().make_task(p) for p in problems]
            slot_of = {rec.id: i for i, rec in reversed(list(enumerate(selected)))}  # first slot of each prompt
            groups = [RolloutGroup(tasks[b].prompt, str(tasks[b].answer),
                                   tuple(trajectories[(slot_of[best.id] * B + b) * N + n] for n in range(N)))
                      for b in range(B)]
            crossover_args = self._crossover_inputs(distinct, best, rewards, slot_of, tasks) if do_crossover else None
            seed = derive_seed(cfg.seed, "mutate", step)
            run = lambda: self._evolve(best, groups, crossover_args, seed)  # noqa: E731
            # overlap only real work (a mutation without a mixed problem returns at once), so that the update's
            # thread count below depends on the step's rewards alone, never on timing: resume stays exact
            has_work = any(g.mixed for g in groups) or crossover_args is not None
            overlap = cfg.mutator.overlap and self.learning and cfg.mutator.kind != "policy" and has_work
            job = self._executor.submit(self._in_mutator_thread, run) if overlap else None
            evolved = None if overlap else run()
        t_mut = time.perf_counter() - t_mut

        # 4. RL update of the weights on all episodes (skipping all-zero-advantage groups).
        t_upd = time.perf_counter()
        adv = advantages(rewards, cfg.loss.baseline)
        keep = kept_groups(adv)
        with self._update_threads(job):
            loss_value, n_tokens = (self._update(trajectories, adv, keep) if self.learning else (0.0, 0))
        t_upd = time.perf_counter() - t_upd

        if self.evolving:
            t_wait = time.perf_counter()
            evolved = job.result() if job is not None else evolved
            t_mut += time.perf_counter() - t_wait
        # 8. New prompts enter the pool (FIFO beyond max_pool_size): crossover child first, then mutation child.
        mutation_reason, crossover_reason, rejected_ops, child_id = "off", "off", 0, -1
        if self.evolving:
            mut, cross = evolved
            if cross is not None:
                crossover_reason = cross[0].reason
                if cross[0].principles is not None:
                    mu, sigma = crossover_rating(cross[1], cfg.crossover.sigma)
                    self.pool.add(cross[0].principles, mu, sigma, [p.id for p in cross[1]], "crossover", step)
            mutation_reason = mut.reason
            rejected_ops = sum(mut.rejected.values())
            if mut.principles is not None:
                mu, sigma = mutation_rating(best, cfg.mutator.sigma)  # paper §3: child σ' = sqrt(σ² + 1)
                child_id = self.pool.add(mut.principles, mu, sigma, [best.id], "mutation", step).id
            self._log_mutation(step, best, mut, cross)

        test_reward = float("nan")
        if cfg.evaluation.every and (step + 1) % cfg.evaluation.every == 0:
            test_reward = self.evaluate(self.pool.newest.principles, cfg.evaluation.problems)

        top = self.pool.best("exploit")
        metrics = StepMetrics(
            step=step, mean_reward=float(rewards.mean()), pool_size=len(self.pool), best_id=top.id,
            best_mu=top.mu, best_sigma=top.sigma, selected=";".join(str(r.id) for r in selected),
            prompt_scores=";".join(f"{s:.4f}" for s in slot_scores), skip_ratio=skip_ratio(keep),
            loss=loss_value, loss_tokens=n_tokens, mutation=mutation_reason, mutation_rejected_ops=rejected_ops,
            child_id=child_id, crossover=crossover_reason, test_reward=test_reward, time_rollout=t_rollout,
            time_update=t_upd, time_mutation=t_mut, time_total=time.perf_counter() - t0,
        )
        self.metrics.append(metrics)
        self.step_count += 1
        self._write(metrics)
        return metrics

    # -- step 4 in detail --
    def _update(self, trajectories: list[Trajectory], adv: np.ndarray, keep: np.ndarray) -> tuple[float, int]:
        """One Adam step on the kept groups' episodes; loss only on policy-generated tokens (mask == 1)."""
        M, B, N = adv.shape
        items = [(trajectories[(m * B + b) * N + n], float(adv[m, b, n]))
                 for m in range(M) for b in range(B) if keep[m, b] for n in range(N)]
        items = [(t, a) for t, a in items if sum(t.mask) > 0]
        items.sort(key=lambda ta: len(ta[0].token_ids))  # similar lengths share a micro-batch: less padding
        if not items:
            return 0.0, 0
        model, loss_fn = self.policy.model, LOSSES[self.cfg.loss.name]
        settings = LossSettings(self.cfg.loss.ppo_clip_eps, self.cfg.loss.cispo_clip_low, self.cfg.loss.cispo_clip_high)
        total_tokens = sum(sum(t.mask[1:]) for t, _ in items)
        scale = 1.0 / total_tokens if self.cfg.loss.reduction == "mean" else 1.0
        pad = self.policy.tokenizer.pad_token_id or 0
        # The sampler's log-probs are log softmax(logits / T) (agents/hf.py), so π_θ is computed at the same T:
        # on-policy the IS ratio is exactly 1 and only sampler/trainer numerics move it.
        temperature = self.cfg.rollout.temperature if self.cfg.rollout.temperature > 0 else 1.0
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(0, len(items), self.cfg.optimizer.micro_batch):
            chunk = items[i : i + self.cfg.optimizer.micro_batch]
            lp, old, mask, a = token_logprobs(model, [t for t, _ in chunk], [adv for _, adv in chunk], pad, temperature)
            loss = loss_fn(lp, old, a, mask, settings) * scale
            loss.backward()
            total += float(loss.detach())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        model.eval()
        return total, int(total_tokens)

    # -- steps 6 and 7 in detail --
    def _crossover_inputs(self, distinct, best, rewards, slot_of, tasks) -> tuple | None:
        """Step 7's evidence from the problem x prompt score matrix: for each problem the prompt that strictly
        outperformed all others (within tie_tolerance: no winner). Set A = the batch's best prompt; it needs
        at least one win and at least one other winner, as in the reference."""
        per_problem = rewards.mean(axis=2)  # [M, B]
        wins: dict[int, list[str]] = {r.id: [] for r in distinct}
        for b in range(per_problem.shape[1]):
            scores = {r.id: per_problem[slot_of[r.id], b] for r in distinct}
            top = max(scores.values())
            winners = [pid for pid, s in scores.items() if abs(s - top) < self.cfg.trueskill.tie_tolerance]
            if len(winners) == 1:
                wins[winners[0]].append(tasks[b].prompt)
        others = [r for r in distinct if r.id != best.id and wins[r.id]]
        if not wins[best.id] or not others:
            return None
        parents = [best] + others
        return parents, [wins[p.id] for p in parents]

    def _in_mutator_thread(self, run: Callable[[], Any]) -> Any:
        """Runs an overlapped mutation in the executor's thread with `mutator_threads` torch threads.
        torch's thread count is per calling thread (OpenMP and MKL); see `_update_threads` for the update's."""
        if self.cfg.mutator.threads > 0:
            import torch

            torch.set_num_threads(self.cfg.mutator.threads)
        return run()

    @contextlib.contextmanager
    def _update_threads(self, job: Future | None):
        """While an overlapped mutation runs beside it on the CPU, the update leaves the mutator its threads:
        OpenMP threads that outnumber the cores spin-wait on each other (measured on 2 cores: a 3.4 s update
        took 10-16 s beside a 1-thread mutator)."""
        import torch

        on_cpu = not str(self.cfg.device).startswith("cuda")
        if job is None or not on_cpu or self.cfg.mutator.threads <= 0:  # never job.done(): timing-dependent
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(max(1, before - self.cfg.mutator.threads))
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _evolve(self, best: PromptRecord, groups: list[RolloutGroup], crossover_args: tuple | None, seed: int):
        mut = self.mutator.mutate(best.principles, groups, seed)
        cross = None
        if crossover_args is not None:
            parents, wins = crossover_args
            result = self.mutator.crossover([p.principles for p in parents], wins, seed + 7)
            cross = (result, parents)
        return mut, cross

    # -- evaluation --
    def evaluate(self, principles: Sequence[str], n_problems: int, samples: int = 1, split: str = "test") -> float:
        """Mean reward of a prompt on the first `n_problems` tasks of a split with the current weights."""
        cfg = self.cfg
        params = SamplingParams(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens,
                                seed=derive_seed(cfg.seed, "eval", self.step_count))
        episodes = [self._episode(i, principles, derive_seed(cfg.seed, "eval", i, s))
                    for i in range(n_problems) for s in range(samples)]
        return float(np.mean([t.reward for t in self._rollout(episodes, params, split)]))

    # -- persistence --
    def _log_mutation(self, step: int, best: PromptRecord, mut: MutationResult, cross: tuple | None) -> None:
        if self.run_dir is None:
            return
        record = {"step": step, "parent": best.id, "reason": mut.reason, "rejected": mut.rejected,
                  "constrained": mut.constrained, "principles": mut.principles,
                  "calls": [{"prompt": p, "reply": r} for p, r in mut.calls]}
        if cross is not None:
            record["crossover"] = {"reason": cross[0].reason, "parents": [p.id for p in cross[1]],
                                   "principles": cross[0].principles,
                                   "calls": [{"prompt": p, "reply": r} for p, r in cross[0].calls]}
        with open(self.run_dir / "mutations.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _write(self, m: StepMetrics) -> None:
        if self.run_dir is None:
            return
        self._write_csv()
        ckpt.write_json_atomic(self.run_dir / "pool.json", self.pool.to_dict())
        self._tensorboard(m)
        if self.cfg.output.checkpoint_every and self.step_count % self.cfg.output.checkpoint_every == 0:
            self.save()

    def _write_csv(self) -> None:
        names = [f.name for f in fields(StepMetrics)]
        tmp = self.run_dir / "metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(names)
            for row in self.metrics:
                w.writerow([getattr(row, n) for n in names])
        tmp.replace(self.run_dir / "metrics.csv")

    def _tensorboard(self, m: StepMetrics) -> None:
        try:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=m.step)
        except ImportError:  # tensorboard missing: CSV only, said once
            log.warning("tensorboard is not installed; metrics go to metrics.csv only")
            self._tb = False
        if self._tb:
            for name in ("mean_reward", "pool_size", "best_mu", "best_sigma", "skip_ratio", "loss", *StepMetrics.TIMING):
                self._tb.add_scalar(name, getattr(m, name), m.step)
            if not math.isnan(m.test_reward):
                self._tb.add_scalar("test_reward", m.test_reward, m.step)
            self._tb.flush()

    def save(self) -> None:
        """Checkpoint (atomic): LoRA adapter, optimizer, RNG, pool, step, metrics."""
        import torch

        state = {"step": self.step_count, "pool": self.pool.to_dict(), "metrics": [asdict(m) for m in self.metrics],
                 "config": self.cfg.to_dict()}
        tensors = {}
        if self.learning:
            tensors = {n: p.detach().cpu().clone() for n, p in self.policy.model.named_parameters() if p.requires_grad}
        ckpt.save(self.run_dir, state, tensors, self.optimizer.state_dict() if self.optimizer else None,
                  {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()})
        self.checkpointed_steps = self.step_count

    def _restore(self, loaded: ckpt.Checkpoint) -> None:
        import torch

        self.step_count = self.checkpointed_steps = int(loaded.state["step"])
        self.pool = PromptPool.from_dict(loaded.state["pool"])
        self.metrics = [StepMetrics(**m) for m in loaded.state["metrics"]]
        if self.learning and loaded.tensors:
            named = dict(self.policy.model.named_parameters())
            with torch.no_grad():
                for name, value in loaded.tensors.items():
                    named[name].copy_(value)
        if self.optimizer is not None and loaded.optimizer is not None:
            self.optimizer.load_state_dict(loaded.optimizer)
        if loaded.rng:
            torch.set_rng_state(loaded.rng["torch"])
            random.setstate(loaded.rng["python"])
            np.random.set_state(loaded.rng["numpy"])
        # drop what a step cut off after the checkpoint wrote (its metrics row, its mutation record): the
        # resumed run writes them again
        self._write_csv()
        self._truncate_jsonl("mutations.jsonl")

    def _truncate_jsonl(self, name: str) -> None:
        path = self.run_dir / name
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line)["step"]) < self.step_count:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue  # a line cut off by a kill
        tmp = path.with_name(name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(path)

    def _record_resume(self, changes: dict[str, tuple[Any, Any]]) -> None:
        """The original config.toml is never rewritten; a resume with changes writes the config it runs with
        to config.resume-N.toml, and every resume appends its step and changes to resumes.jsonl."""
        n = sum(1 for _ in self.run_dir.glob("config.resume-*.toml")) + 1
        record: dict[str, Any] = {"step": self.step_count, "changes": {k: list(v) for k, v in changes.items()}}
        if changes:
            path = self.run_dir / f"config.resume-{n}.toml"
            path.write_text(self.cfg.to_toml())
            record["config"] = path.name
            log.warning("resumed at step %d with changes: %s (recorded in %s)", self.step_count,
                        ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()), path.name)
        with open(self.run_dir / "resumes.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self.mutator is not None and hasattr(self.mutator, "close"):
            self.mutator.close()
        if self._tb:
            self._tb.close()
        self._close_rollout()

    def train(self, steps: int, on_step: Callable[[StepMetrics], None] | None = None) -> list[StepMetrics]:
        """Run until `steps` steps are done in total (a resumed run continues from its checkpoint)."""
        try:
            while self.step_count < steps:
                m = self.step()
                if on_step:
                    on_step(m)
        finally:
            self.close()
        return self.metrics
