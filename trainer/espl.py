"""E-SPL: Evolutionary System Prompt Learning + RL on the weights, one file top to bottom.

Paper: Zhang, Chen, Stadie, "Evolutionary System Prompt Learning can Facilitate Reinforcement Learning for
LLMs" (arXiv 2602.14697); official code `LunjunZhang/E-SPL` (`system_prompt_learning_rl.py`). The
algorithm is ../shared/ESPL_SPEC.md steps 1-8; the numbered sections of `Trainer.step` follow them.

Modes on one code path (the paper's ablations):
    espl    prompts evolve (mutation, optional crossover) and the LoRA weights learn by RL;
    rl      one fixed prompt (`selection.fixed_principles`, empty by default), weights learn, no evolution;
    evolve  prompts evolve, no weight update.

The config is trainer/config.py (`TrainConfig`, sections by step). Defaults are CPU-sized (2 cores,
SmolLM2-135M); where they differ from the reference the field's help says [ref: ...], and
`TrainConfig.paper()` returns the reference constants.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import math
import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence, cast

import numpy as np

from espl.trainer import checkpoint as ckpt
from espl.trainer.config import ConfigError, TrainConfig, resume_changes
from espl.trainer.heldout import (PARAMS_SEED, HeldOutResult, PartialEvaluations, eval_key, headline, resolve_prompts,
                                  rng_untouched, sample_seed, weights_digest)
from espl.trainer.loss import LOSSES, LossSettings, advantages, kept_groups, skip_ratio
from espl.trainer.mutator import LLMMutator, Mutator, MutationResult, RolloutGroup
from espl.trainer.pool import (
    PromptPool,
    PromptRecord,
    crossover_rating,
    mutation_rating,
    prompt_text,
    rate_match,
    select_prompts,
)
from espl.agents.policy import TrainablePolicy
from espl.seeds import derive_seed
from espl.types import SamplingParams, Trajectory

log = logging.getLogger(__name__)

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
    tool_calls: int = 0  # tool calls the step's episodes made (tool envs)
    tool_errors: int = 0  # of which failed: unparsable, unknown tool, bad arguments, the tool raised
    context_overflows: int = 0  # episodes that ended because their prompt filled the model's context
    time_eval: float = 0.0  # the held-out evaluation's share of time_total (0 when none ran)

    TIMING = ("time_rollout", "time_update", "time_mutation", "time_total", "time_eval")


# ---- building the pieces -----------------------------------------------------------------------------------


def policy_spec(cfg: TrainConfig) -> Any:
    """The trainable policy's `PolicySpec`: the HF model with a fresh LoRA adapter seeded from the run seed."""
    from espl.agents.policy import LoraSettings, PolicySpec

    return PolicySpec(backend="hf", model=cfg.model, device=cfg.device, dtype=cfg.dtype, max_batch=cfg.max_batch,
                      kv_cache=cfg.kv_cache, lora=LoraSettings(r=cfg.lora.rank, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout),
                      lora_init_seed=derive_seed(cfg.seed, "lora-init"))  # LoRA A is random: same seed, same start


def mutator_spec(cfg: TrainConfig) -> Any:
    """The mutator LLM's `PolicySpec` (None for mutator.kind = "policy": the trained policy itself): the frozen
    base model (a separate copy, so it can run while the policy trains: in torch, or its GGUF in a llama.cpp
    server), or an OpenAI-compatible endpoint."""
    from espl.agents.policy import PolicySpec

    m = cfg.mutator
    model = m.model or cfg.model
    if m.kind == "policy":
        return None
    if m.kind == "endpoint":
        return PolicySpec(backend="openai", base_url=m.base_url, model=model)
    if m.kind == "llamacpp":
        return PolicySpec(backend="llamacpp", model=model, threads=m.threads, parallel=m.slots)
    return PolicySpec(backend="hf", model=model, device=cfg.device, dtype=cfg.dtype, max_batch=cfg.max_batch,
                      kv_cache=cfg.kv_cache)


def build_policy(cfg: TrainConfig) -> Any:
    """The trainable policy (`TrainablePolicy`) the config describes."""
    from espl.agents.policy import build_policy as build

    return build(policy_spec(cfg))


def build_mutator(cfg: TrainConfig, policy: Any) -> Mutator:
    """The LLM mutator: the current policy (mutator.kind = "policy") or the policy `mutator_spec` describes."""
    from espl.agents.policy import build_policy as build

    spec = mutator_spec(cfg)
    return LLMMutator(policy if spec is None else build(spec), cfg.mutator_settings())


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
    state = ckpt.load(run_dir, warn=False).state  # the Trainer loads it again and says if it fell back
    original = TrainConfig.from_dict(state["config"], warn=False)
    cfg = TrainConfig.from_sources(path, overrides, base=original, **explicit)
    resume_changes(original, cfg)
    return cfg


def micro_batches(items: Sequence[tuple[Trajectory, float]], rows: int, tokens: int) -> list[list[tuple[Trajectory, float]]]:
    """The update's micro-batches of (trajectory, advantage), in order: at most `rows` each and at most `tokens`
    padded tokens (rows x the longest); an episode longer than `tokens` goes alone. The loss is a sum over
    tokens, so the gradient does not depend on the split; memory does (the activations kept for backward grow
    with the padded tokens: a 4-row micro-batch of 3,300-token BFCL episodes ran a 24 GiB machine out)."""
    out: list[list[tuple[Trajectory, float]]] = []
    for item in items:
        chunk = out[-1] if out else None
        width = max([len(t.token_ids) for t, _ in chunk or []] + [len(item[0].token_ids)])
        if chunk is not None and len(chunk) < rows and (len(chunk) + 1) * width <= tokens:
            chunk.append(item)
        else:
            out.append([item])
    return out


def batch_indices(cfg: TrainConfig, step: int) -> list[int]:
    """Step 1: the step's B problems, from a per-epoch shuffle of the training set (stateless in `step`)."""
    per_epoch = math.ceil(cfg.data.train_problems / cfg.data.batch_problems)
    epoch, batch = divmod(step, per_epoch)
    order = list(range(cfg.data.train_problems))
    random.Random(derive_seed(cfg.seed, "epoch", epoch)).shuffle(order)
    return order[batch * cfg.data.batch_problems : (batch + 1) * cfg.data.batch_problems]


# ---- a step's intermediate results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StepBatch:
    """Step 3's episodes: M selected prompts x B problems x N rollouts, flat in [M, B, N] order."""

    selected: tuple[PromptRecord, ...]
    problems: tuple[int, ...]
    trajectories: tuple[Trajectory, ...]
    shape: tuple[int, int, int]  # (M, B, N)

    @staticmethod
    def order(shape: tuple[int, int, int]) -> list[tuple[int, int, int]]:
        """(m, b, n) in the flat order of `trajectories` (and of the episodes sent to the rollout)."""
        M, B, N = shape
        return [(m, b, n) for m in range(M) for b in range(B) for n in range(N)]

    def index(self, m: int, b: int, n: int) -> int:
        """The one place the [M, B, N] -> flat index arithmetic lives."""
        _, B, N = self.shape
        return (m * B + b) * N + n

    @functools.cached_property
    def rewards(self) -> np.ndarray:
        return np.array([t.reward for t in self.trajectories], dtype=np.float64).reshape(self.shape)

    def group(self, m: int, b: int) -> tuple[Trajectory, ...]:
        """The N rollouts of prompt slot m on problem b."""
        return tuple(self.trajectories[self.index(m, b, n)] for n in range(self.shape[2]))

    def best_slot(self) -> dict[int, int]:
        """Prompt id -> its slot with the highest mean reward, the first on a tie (a prompt can be selected more
        than once). The reference mutates, and crosses over, from the rollouts of that slot: its unique()
        keeps a program's first index in the score-sorted order."""
        means = self.rewards.mean(axis=(1, 2))
        best: dict[int, int] = {}
        for i, rec in enumerate(self.selected):
            if rec.id not in best or means[i] > means[best[rec.id]]:
                best[rec.id] = i
        return best


@dataclass(frozen=True)
class Match:
    """Step 5: the distinct prompts of the step, each slot's score, and the batch's best prompt."""

    distinct: tuple[PromptRecord, ...]
    slot_scores: np.ndarray
    best: PromptRecord


class CrossoverInputs(NamedTuple):
    """Step 7's evidence: set A (the batch's best) and the other prompts that won a problem, with the
    problems each won."""

    parents: list[PromptRecord]
    wins: list[list[str]]


@dataclass(frozen=True)
class Evolution:
    """Steps 6-7's results: the mutation, and the crossover with its parents when one was drawn."""

    mutation: MutationResult
    crossover: MutationResult | None = None
    crossover_parents: tuple[PromptRecord, ...] = ()


def _evidence(t: Trajectory) -> Trajectory:
    """A trajectory as the mutator reads it (messages, reward, reason), through JSON: what a checkpoint stores of
    an in-flight mutation (`PendingEvolution`), so the straight and the resumed run hand the mutator the same
    thing. Token ids and log-probs are dropped (the mutator never reads them); non-JSON info values become text."""
    data = json.loads(json.dumps({**t.to_dict(), "token_ids": [], "logprobs": [], "mask": []}, default=str))
    return Trajectory.from_dict(data)


@dataclass(frozen=True)
class PendingEvolution:
    """The inputs of step `step`'s mutation (and crossover) while it runs beside the next step (`mutator.pipeline`):
    the parent as rated at that step's match (a snapshot: its child keeps that mu), the rollout groups, the
    crossover evidence and the seed. Saved as JSON in the checkpoint; a resumed run restarts the mutation from it,
    and a deterministic mutator then returns the same child."""

    step: int
    parent: PromptRecord
    groups: tuple[RolloutGroup, ...]
    crossover: CrossoverInputs | None
    seed: int

    @property
    def has_work(self) -> bool:
        """A mutation without a mixed problem (and no crossover) returns at once."""
        return any(g.mixed for g in self.groups) or self.crossover is not None

    def to_dict(self) -> dict[str, Any]:
        cross = self.crossover
        return {"step": self.step, "parent": self.parent.to_dict(), "seed": self.seed,
                "groups": [{"problem": g.problem, "answer": g.answer, "trajectories": [t.to_dict() for t in g.trajectories]}
                           for g in self.groups],
                "crossover": None if cross is None else {"parents": [p.to_dict() for p in cross.parents],
                                                         "wins": [list(w) for w in cross.wins]}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PendingEvolution":
        cross = data.get("crossover")
        return cls(int(data["step"]), PromptRecord.from_dict(data["parent"]),
                   tuple(RolloutGroup(g["problem"], g["answer"], tuple(Trajectory.from_dict(t) for t in g["trajectories"]))
                         for g in data["groups"]),
                   None if cross is None else CrossoverInputs([PromptRecord.from_dict(p) for p in cross["parents"]],
                                                              [list(w) for w in cross["wins"]]),
                   int(data["seed"]))


# ---- the trainer -------------------------------------------------------------------------------------------


class Trainer:
    """Holds the run's state (pool, policy, optimizer, step) and runs E-SPL steps.

    Builds what `cfg` says: the policy (`policy_spec`), the mutator (`mutator_spec`) and, with
    scaleout.backend = "ray", the Ray rollout; `policy`, `mutator` and `rollout_fn` replace them (tests,
    benchmarks). For modes espl/rl the policy must be a `TrainablePolicy` (agents/policy.py).
    `rollout_fn(env_id, policy, episodes, params, env_kwargs)` defaults to `espl.agents.rollout.rollout`.
    `resume=True` continues `run_dir`'s checkpoint (CheckpointError when there is none usable; ConfigError
    when `cfg` changes a field of `config.RESUME_FIXED`), both raised before any model loads.
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
        self.resumed_from: Path | None = None  # the checkpoint directory a resumed run was read from
        if resume:  # checked before any model loads: a run that cannot be resumed says why, at once
            if self.run_dir is None:
                raise ValueError("resume=True needs a run_dir")
            loaded = ckpt.load(self.run_dir)  # CheckpointError (one line) when there is no usable checkpoint
            self.resumed_from = loaded.path
            changes = resume_changes(TrainConfig.from_dict(loaded.state["config"], warn=False), cfg)
        # before any model loads: neither the training set nor a held-out set may repeat a task (a split with
        # fewer distinct tasks wraps its seeds around: some tasks would be trained on, or counted, twice)
        self._check_tasks("train", cfg.data.train_problems, "data.train_problems")
        if cfg.evaluation.every > 0:
            self._check_tasks("test", cfg.evaluation.problems, "evaluation.problems")
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
        # mutator.pipeline: evolutions started in an earlier step (or restored from the checkpoint), oldest first;
        # their children enter the pool at the end of the next step
        self._pending: list[tuple[PendingEvolution, Future]] = []
        self._tb: Any = None
        # held-out evaluation (trainer/heldout.py): the latest results, the best checkpoint's record, and the step
        # that `train` ends with (it is evaluated whether or not it falls on evaluation.every)
        self.last_evaluation: tuple[HeldOutResult, ...] = ()
        self.best_record: dict[str, Any] | None = None
        self._final_step: int | None = None
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

        params = self.policy.trainable_parameters() if isinstance(self.policy, TrainablePolicy) else []
        if not params:
            raise ValueError("the policy has no trainable parameters: modes espl/rl need a LoRA-wrapped model")
        c = self.cfg
        return torch.optim.Adam(params, lr=c.optimizer.learning_rate, betas=(c.optimizer.adam_beta1, c.optimizer.adam_beta2), eps=c.optimizer.adam_eps)

    def _env(self) -> Any:
        if self._tasks_env is None:
            import gymnasium as gym

            self._tasks_env = gym.make(self.cfg.env, **self.cfg.env_kwargs).unwrapped
        return self._tasks_env

    def _check_tasks(self, split: str, tasks: int, field_name: str) -> None:
        """ConfigError when tasks 0..tasks-1 of `split` would repeat one (the split has fewer distinct tasks)."""
        from espl.agents.evaluate import check_distinct

        try:
            check_distinct(self.cfg.env, tasks, {**self.cfg.env_kwargs, "split": split},
                           field_name=f"{field_name} = {tasks}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _rollout(self, episodes: list, params: SamplingParams, split: str | None = None) -> list[Trajectory]:
        from espl.agents.rollout import rollout

        kwargs = dict(self.cfg.env_kwargs)
        if split:
            kwargs["split"] = split
        return (self.rollout_fn or rollout)(self.cfg.env, self.policy, episodes, params, env_kwargs=kwargs)

    def _episode(self, index: int, principles: Sequence[str], seed: int) -> Any:
        from espl.agents.rollout import Episode

        placement = self.cfg.selection.placement  # "user": the reference's, principles atop the first user turn
        return Episode(seed=index, system_prompt=prompt_text(principles, placement), sample_seed=seed, placement=placement)

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
        with self._update_threads(self._pipeline_busy()):
            batch = self._rollouts(step, selected, problems)
        t_rollout = time.perf_counter() - t0

        # 5. Rate (before the update, so the mutator, which needs the batch's best prompt, can run beside it).
        match = self._rate(batch, step)

        # 6./7. Mutate the batch's best prompt (and maybe cross over), alongside the update when possible.
        t_mut = time.perf_counter()
        job: Future | None = None
        evolution: Evolution | None = None
        if self.evolving:
            do_crossover = rng.random() < cfg.crossover.prob and len(match.distinct) >= 2  # drawn every step, as in ref
            if cfg.mutator.pipeline:  # queued behind the previous step's; its child enters at the end of step + 1
                self._submit(self._evolution_inputs(batch, match, do_crossover, step))
            else:
                job, evolution = self._start_evolution(batch, match, do_crossover, step)
        t_mut = time.perf_counter() - t_mut

        # 4. RL update of the weights on all episodes (skipping groups whose rollouts all got the same reward).
        t_upd = time.perf_counter()
        adv = advantages(batch.rewards, cfg.loss.baseline)
        keep = kept_groups(batch.rewards, cfg.loss.baseline)
        with self._update_threads(job is not None or self._pipeline_busy()):
            loss_value, n_tokens = self._update(batch, adv, keep) if self.learning else (0.0, 0)
        t_upd = time.perf_counter() - t_upd
        if job is not None:
            t_wait = time.perf_counter()
            evolution = job.result()
            t_mut += time.perf_counter() - t_wait

        # 8. New prompts enter the pool (FIFO beyond max_pool_size): crossover child first, then mutation child.
        child_id = self._add_children(evolution, match.best, step) if evolution is not None else -1
        # mutator.pipeline: the previous step's evolution ends here (waited for) and its child enters now, so the
        # newest-prompt rule of step 2 first sees it at step + 1; this step's stays in flight (in the checkpoint)
        t_wait = time.perf_counter()
        for inputs, future in [p for p in self._pending if p[0].step < step]:
            evolution = future.result()
            child_id = self._add_children(evolution, inputs.parent, step, mutated_at=inputs.step)
        self._pending = [p for p in self._pending if p[0].step >= step]
        t_mut += time.perf_counter() - t_wait

        # Held-out evaluation of this step's weights (newest, best-rated, no prompt); draws no training RNG.
        t_eval = time.perf_counter()
        with self._update_threads(self._pipeline_busy()):
            evaluation = self.evaluate(step) if self._evaluation_due(step) else ()
        t_eval = time.perf_counter() - t_eval if evaluation else 0.0
        top_result = headline(evaluation)
        test_reward = top_result.mean if top_result is not None else float("nan")

        top = self.pool.best("exploit")
        infos = [t.info or {} for t in batch.trajectories]
        metrics = StepMetrics(
            step=step, mean_reward=float(batch.rewards.mean()), pool_size=len(self.pool), best_id=top.id,
            best_mu=top.mu, best_sigma=top.sigma, selected=";".join(str(r.id) for r in selected),
            prompt_scores=";".join(f"{s:.4f}" for s in match.slot_scores), skip_ratio=skip_ratio(keep),
            loss=loss_value, loss_tokens=n_tokens,
            mutation=evolution.mutation.reason if evolution else ("pending" if self._pending else "off"),
            mutation_rejected_ops=sum(evolution.mutation.rejected.values()) if evolution else 0,
            child_id=child_id,
            crossover=evolution.crossover.reason if evolution and evolution.crossover else "off",
            test_reward=test_reward, time_rollout=t_rollout, time_update=t_upd, time_mutation=t_mut,
            time_total=time.perf_counter() - t0,
            tool_calls=sum(int(i.get("tool_calls", 0)) for i in infos),
            tool_errors=sum(int(i.get("tool_errors", 0)) for i in infos),
            context_overflows=sum(t.reason == "context_overflow" for t in batch.trajectories),
            time_eval=t_eval,
        )
        self.metrics.append(metrics)
        self.step_count += 1
        self._write(metrics, batch, evaluation)
        return metrics

    # -- step 3 in detail --
    def _rollouts(self, step: int, selected: list[PromptRecord], problems: list[int]) -> "StepBatch":
        cfg = self.cfg
        shape = (len(selected), len(problems), cfg.rollout.rollouts_per_pair)
        params = SamplingParams(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                max_new_tokens=cfg.rollout.max_new_tokens, seed=derive_seed(cfg.seed, "rollout", step),
                                tool_grammar=cfg.rollout.tool_grammar)
        episodes = [self._episode(problems[b], selected[m].principles, derive_seed(cfg.seed, "episode", step, m, b, n))
                    for m, b, n in StepBatch.order(shape)]
        return StepBatch(tuple(selected), tuple(problems), tuple(self._rollout(episodes, params)), shape)

    # -- step 5 in detail --
    def _rate(self, batch: "StepBatch", step: int) -> "Match":
        """Each selected prompt's score is its mean reward over the batch (pass@1); one free-for-all TrueSkill
        match among the distinct prompts, scores within tie_tolerance tied. A prompt selected in several slots
        plays with its best slot's score, ranked where that slot ranks (the reference sorts the slots by
        score, stably, and keeps each prompt's first: `StepBatch.best_slot`), so the batch's best prompt is the
        one mutation and crossover take, from that same slot."""
        slot_scores = batch.rewards.mean(axis=(1, 2))
        slot_of = batch.best_slot()
        distinct = tuple({rec.id: rec for rec in batch.selected}.values())
        players = sorted(distinct, key=lambda r: slot_of[r.id])  # rate_match's ties keep this (slot) order
        ts = self.cfg.trueskill
        ranked = rate_match(players, [float(slot_scores[slot_of[r.id]]) for r in players], ts.settings(),
                            ts.tie_tolerance, step)
        return Match(distinct, slot_scores, ranked[0])

    # -- steps 6 and 7: what the mutator gets, and when it runs --
    def _start_evolution(self, batch: "StepBatch", match: "Match", do_crossover: bool,
                         step: int) -> tuple[Future | None, "Evolution | None"]:
        """Runs (or submits beside the update) step 6's mutation of the batch's best prompt and step 7's
        crossover. Returns (the job, None) when overlapped, else (None, the result)."""
        cfg = self.cfg
        inputs = self._evolution_inputs(batch, match, do_crossover, step, pipelined=False)
        run = functools.partial(self._evolve, inputs.parent, list(inputs.groups), inputs.crossover, inputs.seed)
        # overlap only real work (a mutation without a mixed problem returns at once), so that the update's
        # thread count depends on the step's rewards alone, never on timing: resume stays exact
        if cfg.mutator.overlap and self.learning and cfg.mutator.kind != "policy" and inputs.has_work:
            return self._executor.submit(self._in_mutator_thread, run), None
        return None, run()

    def _evolution_inputs(self, batch: "StepBatch", match: "Match", do_crossover: bool, step: int,
                          pipelined: bool = True) -> PendingEvolution:
        """Step 6/7's inputs: the batch's best prompt, its best slot's rollout groups, the crossover evidence and
        the seed. `pipelined`: as they are checkpointed (`PendingEvolution`): the prompts as snapshots (the child
        keeps the parent's mu of this step) and the trajectories through JSON (`_evidence`)."""
        tasks = [self._env().make_task(p) for p in batch.problems]
        slot_of = batch.best_slot()
        records: dict[int, PromptRecord] = {r.id: PromptRecord.from_dict(r.to_dict()) if pipelined else r
                                            for r in match.distinct}
        evidence = _evidence if pipelined else (lambda t: t)
        groups = tuple(RolloutGroup(tasks[b].prompt, str(tasks[b].answer),
                                    tuple(evidence(t) for t in batch.group(slot_of[match.best.id], b)))
                       for b in range(len(batch.problems)))
        crossover = (self._crossover_inputs(list(match.distinct), match.best, batch.rewards, slot_of, tasks)
                     if do_crossover else None)
        if crossover is not None:
            crossover = CrossoverInputs([records[p.id] for p in crossover.parents], crossover.wins)
        return PendingEvolution(step, records[match.best.id], groups, crossover, derive_seed(self.cfg.seed, "mutate", step))

    def _submit(self, inputs: PendingEvolution) -> None:
        run = functools.partial(self._evolve, inputs.parent, list(inputs.groups), inputs.crossover, inputs.seed)
        self._pending.append((inputs, self._executor.submit(self._in_mutator_thread, run)))

    def _pipeline_busy(self) -> bool:
        """A pipelined mutation with real work is in flight: a fact of the steps' rewards, never of timing (so the
        thread counts, and with them the numerics, are the same in a resumed run)."""
        return any(inputs.has_work for inputs, _ in self._pending)

    # -- step 8 in detail --
    def _add_children(self, evolution: "Evolution", best: PromptRecord, step: int, mutated_at: int | None = None) -> int:
        """Adds the crossover child, then the mutation child (born at `step`, the step they enter the pool; a
        pipelined evolution was made at `mutated_at`, the step before); returns the mutation child's id (-1: none)."""
        cfg, child_id = self.cfg, -1
        cross = evolution.crossover
        if cross is not None and cross.principles is not None:
            mu, sigma = crossover_rating(evolution.crossover_parents, cfg.crossover.sigma)
            self.pool.add(cross.principles, mu, sigma, [p.id for p in evolution.crossover_parents], "crossover", step)
        mut = evolution.mutation
        if mut.principles is not None:
            mu, sigma = mutation_rating(best, cfg.mutator.sigma)  # paper §3: child σ' = sqrt(σ² + 1)
            child_id = self.pool.add(mut.principles, mu, sigma, [best.id], "mutation", step).id
        self._log_mutation(step if mutated_at is None else mutated_at, best, evolution,
                           entered=None if mutated_at is None else step)
        return child_id

    # -- step 4 in detail --
    def _update(self, batch: "StepBatch", adv: np.ndarray, keep: np.ndarray) -> tuple[float, int]:
        """One Adam step on the kept groups' episodes; loss only on policy-generated tokens (mask == 1)."""
        items = [(batch.trajectories[batch.index(m, b, n)], float(adv[m, b, n]))
                 for m, b, n in StepBatch.order(batch.shape) if keep[m, b]]
        items = [(t, a) for t, a in items if sum(t.mask) > 0]
        items.sort(key=lambda ta: len(ta[0].token_ids))  # similar lengths share a micro-batch: less padding
        if not items:
            return 0.0, 0
        policy, loss_fn = self.policy, LOSSES[self.cfg.loss.name]
        settings = LossSettings(self.cfg.loss.ppo_clip_eps, self.cfg.loss.cispo_clip_low, self.cfg.loss.cispo_clip_high)
        total_tokens = sum(sum(t.mask[1:]) for t, _ in items)
        scale = 1.0 / total_tokens if self.cfg.loss.reduction == "mean" else 1.0
        # The sampler's log-probs are log softmax(logits / T) (agents/hf.py), so π_θ is computed at the same T:
        # on-policy the IS ratio is exactly 1 and only sampler/trainer numerics move it.
        temperature = self.cfg.rollout.temperature if self.cfg.rollout.temperature > 0 else 1.0
        policy.set_training(True)
        assert self.optimizer is not None  # an update runs only when learning, which builds the optimizer
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for chunk in micro_batches(items, self.cfg.optimizer.micro_batch, self.cfg.optimizer.micro_batch_tokens):
            lp = policy.trajectory_logprobs([t for t, _ in chunk], [a for _, a in chunk], temperature)
            loss = loss_fn(lp.logprobs, lp.old_logprobs, lp.advantages, lp.mask, settings) * scale
            loss.backward()
            total += float(loss.detach())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        policy.set_training(False)
        return total, int(total_tokens)

    # -- steps 6 and 7 in detail --
    def _crossover_inputs(self, distinct, best, rewards, slot_of, tasks) -> CrossoverInputs | None:
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
        return CrossoverInputs(parents, [wins[p.id] for p in parents])

    def _in_mutator_thread(self, run: Callable[[], Any]) -> Any:
        """Runs an overlapped mutation in the executor's thread with `mutator_threads` torch threads.
        torch's thread count is per calling thread (OpenMP and MKL); see `_update_threads` for the update's."""
        if self.cfg.mutator.threads > 0:
            import torch

            torch.set_num_threads(self.cfg.mutator.threads)
        return run()

    @contextlib.contextmanager
    def _update_threads(self, busy: bool):
        """While an overlapped mutation runs beside it on the CPU (`busy`), the update (and, pipelined, the
        rollouts) leave the mutator its threads:
        OpenMP threads that outnumber the cores spin-wait on each other (measured on 2 cores: a 3.4 s update
        took 10-16 s beside a 1-thread mutator)."""
        import torch

        on_cpu = not str(self.cfg.device).startswith("cuda")
        if not busy or not on_cpu or self.cfg.mutator.threads <= 0:  # never job.done(): timing-dependent
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(max(1, before - self.cfg.mutator.threads))
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _evolve(self, best: PromptRecord, groups: list[RolloutGroup], crossover: "CrossoverInputs | None",
                seed: int) -> "Evolution":
        assert self.mutator is not None  # evolving, which builds the mutator
        mutation = self.mutator.mutate(best.principles, groups, seed)
        if crossover is None:
            return Evolution(mutation)
        result = self.mutator.crossover([p.principles for p in crossover.parents], crossover.wins, seed + 7)
        return Evolution(mutation, result, tuple(crossover.parents))

    # -- held-out evaluation (trainer/heldout.py) --
    def _evaluation_due(self, step: int) -> bool:
        every = self.cfg.evaluation.every
        return bool(every) and ((step + 1) % every == 0 or step == self._final_step)

    def evaluate(self, step: int | None = None, prompts: Sequence[str] | None = None) -> tuple[HeldOutResult, ...]:
        """The held-out evaluation of the current weights: each of `prompts` (default `evaluation.prompts`:
        newest, best by mu - 2 sigma, none) on test-split tasks 0..evaluation.problems-1, evaluation.samples
        each, with the sampling seeds every evaluation shares (`heldout.sample_seed`). Prompts with the same
        principles run once. `step` labels the results (default: the last finished step). The global RNG
        states are restored afterwards, so training draws exactly what it would without evaluation."""
        labels = tuple(prompts) if prompts is not None else self.cfg.evaluation.prompt_labels(self.cfg.mode)
        step = self.step_count - 1 if step is None else step
        rewards: dict[tuple[str, ...], tuple[tuple[float, ...], ...]] = {}
        results = []
        done = PartialEvaluations(self.run_dir)  # prompts already evaluated on these weights (a resumed run)
        weights = weights_digest(self.policy.adapter_state()) if self.learning else "frozen"
        config = self.cfg.to_dict()
        with rng_untouched():
            for label, record in resolve_prompts(self.pool, labels):
                principles = record.principles if record is not None else ()
                if principles not in rewards:
                    key = eval_key(weights, config, principles)
                    cached = done.get(key)
                    rewards[principles] = cached if cached is not None else done.put(
                        key, self.evaluate_principles(principles))
                results.append(HeldOutResult(step, label, record.id if record is not None else None, principles,
                                             rewards[principles]))
        return tuple(results)

    def evaluate_principles(self, principles: Sequence[str], problems: int | None = None, samples: int | None = None,
                            split: str = "test") -> tuple[tuple[float, ...], ...]:
        """Rewards [task][sample] of one prompt (() = no prompt) on tasks 0..problems-1 of `split` with the
        current weights, in one rollout call of its own (so a prompt's results do not depend on which other
        prompts are evaluated beside it). Defaults: evaluation.problems and evaluation.samples."""
        cfg = self.cfg
        problems = cfg.evaluation.problems if problems is None else problems
        samples = cfg.evaluation.samples if samples is None else samples
        self._check_tasks(split, problems, "problems" if problems != cfg.evaluation.problems else "evaluation.problems")
        params = SamplingParams(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                max_new_tokens=cfg.rollout.max_new_tokens, seed=PARAMS_SEED,
                                tool_grammar=cfg.rollout.tool_grammar)
        episodes = [self._episode(i, principles, sample_seed(i, s)) for i in range(problems) for s in range(samples)]
        trajs = self._rollout(episodes, params, split)
        return tuple(tuple(float(t.reward) for t in trajs[i * samples : (i + 1) * samples]) for i in range(problems))

    def held_out(self) -> tuple[HeldOutResult, ...]:
        """The held-out evaluation of the current weights: the one the last step ran, else a fresh one."""
        last = self.last_evaluation
        if last and last[0].step == self.step_count - 1:
            return last
        return self.evaluate()

    # -- persistence --
    def _log_mutation(self, step: int, best: PromptRecord, evolution: "Evolution", entered: int | None = None) -> None:
        if self.run_dir is None:
            return
        mut, cross = evolution.mutation, evolution.crossover
        record: dict[str, Any] = {"step": step, "parent": best.id, "reason": mut.reason, "rejected": mut.rejected,
                                  "constrained": mut.constrained, "principles": mut.principles,
                                  "calls": [{"prompt": p, "reply": r} for p, r in mut.calls]}
        if entered is not None:  # mutator.pipeline: the step whose end wrote it (what a resume truncates by)
            record["entered"] = entered
        if cross is not None:
            record["crossover"] = {"reason": cross.reason, "parents": [p.id for p in evolution.crossover_parents],
                                   "principles": cross.principles,
                                   "calls": [{"prompt": p, "reply": r} for p, r in cross.calls]}
        with open(self.run_dir / "mutations.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _write(self, m: StepMetrics, batch: "StepBatch | None" = None, evaluation: Sequence[HeldOutResult] = ()) -> None:
        if evaluation:
            self.last_evaluation = tuple(evaluation)
        if self.run_dir is None:
            return
        self._write_csv()
        if batch is not None:
            self._write_samples(m.step, batch)
        if evaluation:
            with open(self.run_dir / "evals.jsonl", "a", encoding="utf-8") as f:
                f.writelines(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in evaluation)
        ckpt.write_json_atomic(self.run_dir / "pool.json", self.pool.to_dict())
        self._tensorboard(m, evaluation)
        # the best checkpoint before the rolling one: a kill between them leaves the step to be redone (to the
        # same score, which then does not replace it), never a finished step whose best was not kept
        self._keep_best(evaluation)
        if self.cfg.output.checkpoint_every and self.step_count % self.cfg.output.checkpoint_every == 0:
            self.save()

    def _keep_best(self, evaluation: Sequence[HeldOutResult]) -> None:
        """RUN_DIR/best: the checkpoint after the step whose newest prompt scored the best held-out mean reward
        (`heldout.headline`: the first evaluated prompt when newest is not evaluated); the earliest on a tie.
        Its record, best/best.json, holds the step, the score and the prompt."""
        top = headline(evaluation)
        if top is None or math.isnan(top.mean):
            return
        if self.best_record is not None and not top.mean > float(self.best_record["score"]):
            return
        record = {"step": top.step, "score": top.mean, "metric": "held-out mean reward", "prompt": top.prompt,
                  "prompt_id": top.prompt_id, "principles": list(top.principles),
                  "pass_at_k": {str(k): v for k, v in top.pass_at_k.items()}, "n": top.n}
        ckpt.save_best(self._run_dir, record, *self._checkpoint_parts())
        self.best_record = record

    def _write_samples(self, step: int, batch: "StepBatch") -> None:
        """`output.trajectory_samples` episodes of the step, spread over its (prompt, problem) groups, with
        every message: what the model did, readable (RUN_DIR/samples.jsonl; bounded per step)."""
        k = min(self.cfg.output.trajectory_samples, len(batch.trajectories))
        if k <= 0:
            return
        picks = sorted({round(i * (len(batch.trajectories) - 1) / max(k - 1, 1)) for i in range(k)})
        M, B, N = batch.shape
        with open(self._run_dir / "samples.jsonl", "a", encoding="utf-8") as f:
            for i in picks:
                t = batch.trajectories[i]
                m, b = divmod(i // N, B)
                f.write(json.dumps({"step": step, "prompt_id": batch.selected[m].id, "problem": batch.problems[b],
                                    "reward": t.reward, "reason": t.reason, "messages": t.messages},
                                   ensure_ascii=False, default=str) + "\n")

    def _write_csv(self) -> None:
        names = [f.name for f in fields(StepMetrics)]
        tmp = self._run_dir / "metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(names)
            for row in self.metrics:
                w.writerow([getattr(row, n) for n in names])
        tmp.replace(self._run_dir / "metrics.csv")

    def _tensorboard(self, m: StepMetrics, evaluation: Sequence[HeldOutResult] = ()) -> None:
        try:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self._run_dir / "tb"), purge_step=m.step)
        except ImportError:  # tensorboard missing: CSV only, said once
            log.warning("tensorboard is not installed; metrics go to metrics.csv only")
            self._tb = False
        if self._tb:
            for name in ("mean_reward", "pool_size", "best_mu", "best_sigma", "skip_ratio", "loss", *StepMetrics.TIMING):
                self._tb.add_scalar(name, getattr(m, name), m.step)
            if not math.isnan(m.test_reward):
                self._tb.add_scalar("test_reward", m.test_reward, m.step)
            for r in evaluation:  # eval/newest/mean, eval/best/pass@1, eval/none/pass@4, ...
                self._tb.add_scalar(f"eval/{r.prompt}/mean", r.mean, m.step)
                for k, v in r.pass_at_k.items():
                    self._tb.add_scalar(f"eval/{r.prompt}/pass@{k}", v, m.step)
            self._tb.flush()

    @property
    def _run_dir(self) -> Path:
        """RUN_DIR, for the methods that write there (called only when the trainer has one)."""
        return cast(Path, self.run_dir)

    def save(self) -> None:
        """Checkpoint (atomic): LoRA adapter, optimizer, RNG, pool, step, metrics."""
        ckpt.save(self._run_dir, *self._checkpoint_parts())
        self.checkpointed_steps = self.step_count
        PartialEvaluations(self.run_dir).clear()  # the step's evaluation is in evals.jsonl and the checkpoint now

    def _checkpoint_parts(self) -> tuple[dict, dict, dict | None, dict]:
        """(state, adapter tensors, optimizer state_dict, RNG states) of the run as it stands."""
        import torch

        state = {"step": self.step_count, "pool": self.pool.to_dict(), "metrics": [asdict(m) for m in self.metrics],
                 "config": self.cfg.to_dict(), "pending_evolutions": [inputs.to_dict() for inputs, _ in self._pending]}
        tensors = self.policy.adapter_state() if self.learning else {}
        return (state, tensors, self.optimizer.state_dict() if self.optimizer else None,
                {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()})

    def _restore(self, loaded: ckpt.Checkpoint) -> None:
        import torch

        self.step_count = self.checkpointed_steps = int(loaded.state["step"])
        self.pool = PromptPool.from_dict(loaded.state["pool"])
        self.metrics = [StepMetrics(**m) for m in loaded.state["metrics"]]
        if self.learning and loaded.tensors:
            self.policy.load_adapter_state(loaded.tensors)
        if self.optimizer is not None and loaded.optimizer is not None:
            self.optimizer.load_state_dict(loaded.optimizer)
        if loaded.rng:
            torch.set_rng_state(loaded.rng["torch"])
            random.setstate(loaded.rng["python"])
            np.random.set_state(loaded.rng["numpy"])
        # mutator.pipeline: the evolution that was in flight when the checkpoint was written starts again from its
        # inputs (the checkpoint holds no thread); its child enters at the end of the next step, as it would have
        if self.evolving:
            for data in loaded.state.get("pending_evolutions", []):
                self._submit(PendingEvolution.from_dict(data))
        # drop what a step cut off after the checkpoint wrote (its metrics row, its mutation record): the
        # resumed run writes them again
        self._write_csv()
        self._truncate_jsonl("mutations.jsonl")
        self._truncate_jsonl("samples.jsonl")
        self._truncate_jsonl("evals.jsonl")
        # the best checkpoint stays: it holds real weights of this run evaluated on the held-out set (when a
        # kill cut its step off, the resumed run redoes that step to the same weights and the same score)
        self.best_record = ckpt.read_best(self._run_dir)

    def _truncate_jsonl(self, name: str) -> None:
        path = self._run_dir / name
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                if int(record.get("entered", record["step"])) < self.step_count:  # pipelined: when it entered
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a line cut off by a kill
        tmp = path.with_name(name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(path)

    def _record_resume(self, changes: dict[str, tuple[Any, Any]]) -> None:
        """The original config.toml is never rewritten; a resume with changes writes the config it runs with
        to config.resume-N.toml, and every resume appends its step and changes to resumes.jsonl."""
        n = sum(1 for _ in self._run_dir.glob("config.resume-*.toml")) + 1
        record: dict[str, Any] = {"step": self.step_count, "changes": {k: list(v) for k, v in changes.items()}}
        if changes:
            path = self._run_dir / f"config.resume-{n}.toml"
            path.write_text(self.cfg.to_toml())
            record["config"] = path.name
            log.warning("resumed at step %d with changes: %s (recorded in %s)", self.step_count,
                        ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()), path.name)
        with open(self._run_dir / "resumes.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self.mutator is not None:
            self.mutator.close()
        if self._tb:
            self._tb.close()
        self._close_rollout()

    def train(self, steps: int, on_step: Callable[[StepMetrics], None] | None = None) -> list[StepMetrics]:
        """Run until `steps` steps are done in total (a resumed run continues from its checkpoint)."""
        self._final_step = steps - 1  # evaluated whether or not it falls on evaluation.every
        try:
            while self.step_count < steps:
                m = self.step()
                if on_step:
                    on_step(m)
        finally:
            self.close()
        return self.metrics
