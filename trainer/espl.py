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

Mode = Literal["espl", "rl", "evolve"]
MutatorModel = Literal["base", "llamacpp", "policy", "endpoint"]

_LITERALS = {
    "mode": ("espl", "rl", "evolve"),
    "selection": ("uniform", "ucb", "lucb", "softmax"),
    "placement": ("system", "user"),
    "baseline": ("group", "marginalize"),
    "loss": tuple(LOSSES),
    "loss_reduction": ("sum", "mean"),
    "mutator": ("base", "llamacpp", "policy", "endpoint"),
    "dtype": ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"),
    "backend": ("local", "ray"),
}


@dataclass(frozen=True)
class TrainConfig:
    """Every constant of the algorithm. [ref: x] marks the reference code's value where ours differs."""

    # ---- run ----
    mode: Mode = "espl"
    env: str = "espl/Math-v0"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    model: str = "smollm2-135m"
    seed: int = 0
    device: str = "cpu"  # where the policy (and the base-model mutator) run: "cpu", "cuda", "cuda:1", ...
    dtype: str = "auto"  # model weights: auto (float32), float32, bfloat16, float16
    max_batch: int = 64  # sequences decoded at once (larger batches are split)
    train_problems: int = 256  # task indices 0..n-1 of the train split form the training set [ref: dataset_size 256]
    # ---- step 1: batch ----
    batch_problems: int = 2  # B [ref: 10]
    # ---- step 2: selection ----
    prompts_per_step: int = 2  # M [ref: 3]
    choose_from_newest: int = 5  # K
    selection: Literal["uniform", "ucb", "lucb", "softmax"] = "uniform"
    placement: Literal["system", "user"] = "system"  # [ref: "user", the principles in the user turn]
    fixed_principles: tuple[str, ...] = ()  # the root prompt (and the only one in mode rl); reference: empty
    # ---- step 3: rollouts ----
    rollouts_per_pair: int = 4  # N [ref: group_size 5]
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 96  # per turn [ref: 15000]
    # ---- step 4: RL update ----
    baseline: Literal["group", "marginalize"] = "group"
    loss: Literal["reinforce_is", "ppo_clip", "cispo"] = "reinforce_is"
    loss_reduction: Literal["sum", "mean"] = "sum"  # sum over tokens, as Tinker's losses do; mean: / tokens
    ppo_clip_eps: float = 0.2
    cispo_clip_low: float = 0.0
    cispo_clip_high: float = 4.0
    lora_rank: int = 16  # [ref: 32]
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # 0 keeps the update deterministic (and resume exact)
    learning_rate: float = 1e-4  # [ref: 4e-5 at 8B-30B scale; a 135M LoRA needs a larger step]
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    micro_batch: int = 8  # episodes per forward/backward (gradients accumulate to one Adam step per step)
    # ---- step 5: TrueSkill ----
    trueskill_mu: float = 25.0
    trueskill_sigma: float = 25.0 / 3
    trueskill_beta: float = 25.0 / 6
    trueskill_tau: float = 25.0 / 300
    trueskill_draw_probability: float = 0.10
    tie_tolerance: float = 0.01
    # ---- step 6: mutation ----
    # frozen base model [ref: evolution_sample_client "reference"]; llamacpp: the same frozen base model's GGUF
    # served by llama.cpp on 127.0.0.1 (several times faster on a CPU, its own threads, JSON-schema decoding)
    mutator: Literal["base", "llamacpp", "policy", "endpoint"] = "base"
    mutator_base_url: str = ""  # for mutator = "endpoint": an OpenAI-compatible server
    mutator_model: str = ""  # endpoint model name (or another local model for "base"/"llamacpp"; empty = `model`)
    # CPU threads the mutator takes: the llama.cpp server's (mutator = "llamacpp"), or the torch threads of a
    # mutator overlapping the update, which leaves it that many (0: no split, both use torch's default)
    mutator_threads: int = 1
    max_ops_per_problem: int = 2  # [ref: max_update_operations 2]
    max_principle_words: int = 32
    max_principles: int = 24
    mutation_sigma: float = 1.0
    mutator_constrained: bool = True  # grammar-constrained JSON operations where the backend supports it
    mutator_summary_tokens: int = 96
    mutator_critique_tokens: int = 160
    mutator_revision_tokens: int = 192
    overlap_mutation: bool = True  # run the mutator alongside the RL update (needs a separate mutator model)
    # ---- step 7: crossover ----
    crossover_prob: float = 0.0  # reference default: off
    crossover_sigma: float = 1.0
    mutator_crossover_tokens: int = 192
    # ---- step 8: pool ----
    max_pool_size: int = 100
    # ---- bookkeeping ----
    checkpoint_every: int = 1
    eval_every: int = 0  # evaluate the newest prompt on the test split every n steps (0: never)
    eval_problems: int = 32
    # ---- scale-out (agents/distributed.py, docs/scaling.md): where rollouts run ----
    backend: Literal["local", "ray"] = "local"
    ray_address: str = ""  # "" starts a private Ray instance on this machine; "auto" / "HOST:PORT" joins a cluster
    ray_workers: int = 2  # rollout workers (each holds its own copy of the policy)
    ray_cpus_per_worker: float = 1.0
    ray_gpus_per_worker: float = 0.0  # > 0: workers generate on their GPU (device "cuda")

    def __post_init__(self) -> None:
        for name, allowed in _LITERALS.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: must be one of {list(allowed)}, got {getattr(self, name)!r}")
        for name in ("batch_problems", "prompts_per_step", "choose_from_newest", "rollouts_per_pair", "max_new_tokens",
                     "train_problems", "micro_batch", "max_batch", "max_pool_size", "lora_rank", "max_ops_per_problem",
                     "ray_workers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.crossover_prob <= 1.0:
            raise ValueError(f"crossover_prob: must be in [0, 1], got {self.crossover_prob}")
        if self.mutator_threads < (1 if self.mutator == "llamacpp" else 0):
            raise ValueError(f"mutator_threads: must be >= {1 if self.mutator == 'llamacpp' else 0} "
                             f"(mutator = {self.mutator!r}), got {self.mutator_threads}")
        if self.mutator == "endpoint" and not self.mutator_base_url:
            raise ValueError("mutator_base_url: required when mutator = 'endpoint' (e.g. http://127.0.0.1:8080/v1)")
        object.__setattr__(self, "fixed_principles", tuple(self.fixed_principles))

    @classmethod
    def paper(cls, **overrides: Any) -> "TrainConfig":
        """The reference code's constants (GPU/Tinker scale)."""
        ref = dict(batch_problems=10, prompts_per_step=3, rollouts_per_pair=5, max_new_tokens=15000, lora_rank=32,
                   learning_rate=4e-5, placement="user", train_problems=256)
        return cls(**{**ref, **overrides})

    def trueskill(self) -> TrueSkillSettings:
        return TrueSkillSettings(self.trueskill_mu, self.trueskill_sigma, self.trueskill_beta, self.trueskill_tau,
                                 self.trueskill_draw_probability)

    def mutator_settings(self) -> MutatorSettings:
        return MutatorSettings(
            max_ops_per_problem=self.max_ops_per_problem, max_principle_words=self.max_principle_words,
            max_principles=self.max_principles, summary_tokens=self.mutator_summary_tokens,
            critique_tokens=self.mutator_critique_tokens, revision_tokens=self.mutator_revision_tokens,
            crossover_tokens=self.mutator_crossover_tokens, temperature=self.temperature, top_p=self.top_p,
            constrained=self.mutator_constrained,
        )

    # -- TOML --
    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()})

    @classmethod
    def from_sources(cls, path: str | Path | None = None, overrides: Sequence[str] = (), **explicit: Any) -> "TrainConfig":
        """Defaults <- a TOML file <- `key=value` overrides (values parsed as TOML) <- explicit keywords."""
        import tomllib

        data: dict[str, Any] = {}
        if path:
            with open(path, "rb") as f:
                data.update(tomllib.load(f))
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected key=value, e.g. --set learning_rate=2e-5")
            try:
                value = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                value = raw  # a bare word: a string
            data[key.strip()] = value
        data.update({k: v for k, v in explicit.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            import difflib

            hints = [f"{u} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(u, known, 1)) else u for u in unknown]
            raise ValueError(f"config: unknown keys {hints}; see `espl train --help` or docs/training.md")
        if "fixed_principles" in data:
            data["fixed_principles"] = tuple(data["fixed_principles"])
        return cls(**data)


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

    return HFPolicy(model=cfg.model, lora=LoraSettings(r=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout),
                    device=cfg.device, dtype=cfg.dtype, max_batch=cfg.max_batch)


def build_mutator(cfg: TrainConfig, policy: Any) -> Mutator:
    """The LLM mutator: the frozen base model (a separate copy, so it can run while the policy trains: in torch,
    or its GGUF in a llama.cpp server), the current policy, or an OpenAI-compatible endpoint."""
    if cfg.mutator == "policy":
        llm = policy
    elif cfg.mutator == "endpoint":
        from espl.agents.openai_policy import OpenAIPolicy

        llm = OpenAIPolicy(base_url=cfg.mutator_base_url, model=cfg.mutator_model or cfg.model)
    elif cfg.mutator == "llamacpp":
        from espl.agents.llamacpp import llamacpp_policy

        llm = llamacpp_policy(cfg.mutator_model or cfg.model, threads=cfg.mutator_threads)
    else:
        from espl.agents.hf import HFPolicy

        llm = HFPolicy(model=cfg.mutator_model or cfg.model, device=cfg.device, dtype=cfg.dtype, max_batch=cfg.max_batch)
    return LLMMutator(llm, cfg.mutator_settings())


def batch_indices(cfg: TrainConfig, step: int) -> list[int]:
    """Step 1: the step's B problems, from a per-epoch shuffle of the training set (stateless in `step`)."""
    per_epoch = math.ceil(cfg.train_problems / cfg.batch_problems)
    epoch, batch = divmod(step, per_epoch)
    order = list(range(cfg.train_problems))
    random.Random(derive_seed(cfg.seed, "epoch", epoch)).shuffle(order)
    return order[batch * cfg.batch_problems : (batch + 1) * cfg.batch_problems]


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
        self.rollout_fn = rollout_fn  # e.g. RayRollout(...).rollout (agents/distributed.py); None: local
        self.run_dir = Path(run_dir) if run_dir else None
        self.policy = policy if policy is not None else build_policy(cfg)
        self.evolving = cfg.mode in ("espl", "evolve")
        self.learning = cfg.mode in ("espl", "rl")
        self.mutator = mutator if mutator is not None else (build_mutator(cfg, self.policy) if self.evolving else None)
        self.pool = PromptPool(cfg.max_pool_size)
        ts = cfg.trueskill()
        self.pool.add(cfg.fixed_principles, ts.mu, ts.sigma, op="fixed" if cfg.mode == "rl" else "root")
        self.step_count = 0
        self.metrics: list[StepMetrics] = []
        self.optimizer = self._make_optimizer() if self.learning else None
        self._tasks_env: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espl-mutator")
        self._tb: Any = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if resume and ckpt.exists(self.run_dir):
                self._restore(ckpt.load(self.run_dir))
            elif resume:
                log.warning("--resume: no checkpoint in %s, starting from step 0", self.run_dir)
            (self.run_dir / "config.toml").write_text(cfg.to_toml())

    # -- plumbing --
    def _make_optimizer(self) -> Any:
        import torch

        params = [p for p in self.policy.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the policy has no trainable parameters: modes espl/rl need a LoRA-wrapped model")
        c = self.cfg
        return torch.optim.Adam(params, lr=c.learning_rate, betas=(c.adam_beta1, c.adam_beta2), eps=c.adam_eps)

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
        if self.cfg.placement == "user":  # the reference's placement: principles at the top of the user turn
            env = functools.partial(_user_placement_env, self.cfg.env)  # picklable: Ray workers build it
        return (self.rollout_fn or rollout)(env, self.policy, episodes, params, env_kwargs=kwargs)

    def _episode(self, index: int, principles: Sequence[str], seed: int) -> Any:
        from espl.agents.rollout import Episode

        return Episode(seed=index, system_prompt=prompt_text(principles, self.cfg.placement), sample_seed=seed)

    # -- one step: ESPL_SPEC steps 1-8 --
    def step(self) -> StepMetrics:
        cfg, step = self.cfg, self.step_count
        t0 = time.perf_counter()

        # 1. Sample a batch of B problems (per-epoch shuffle of the training set).
        problems = batch_indices(cfg, step)
        rng = random.Random(derive_seed(cfg.seed, "step", step))

        # 2. Select M prompts from the K newest; the newest is always included.
        k = cfg.choose_from_newest if self.evolving else 1
        selected = select_prompts(self.pool, cfg.prompts_per_step, k, cfg.selection, rng)

        # 3. Rollouts: N per (prompt, problem), B*M*N episodes, ordered [M, B, N].
        M, B, N = len(selected), len(problems), cfg.rollouts_per_pair
        params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
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
        ranked = rate_match(distinct, [float(np.mean(by_id[r.id])) for r in distinct], cfg.trueskill(), cfg.tie_tolerance, step)
        best = ranked[0]

        # 6./7. Mutate the batch's best prompt (and maybe cross over), alongside the update when possible.
        t_mut = time.perf_counter()
        job: Future | None = None
        if self.evolving:
            do_crossover = rng.random() < cfg.crossover_prob and len(distinct) >= 2  # drawn every step, as in ref
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
            overlap = cfg.overlap_mutation and self.learning and cfg.mutator != "policy" and has_work
            job = self._executor.submit(self._in_mutator_thread, run) if overlap else None
            evolved = None if overlap else run()
        t_mut = time.perf_counter() - t_mut

        # 4. RL update of the weights on all episodes (skipping all-zero-advantage groups).
        t_upd = time.perf_counter()
        adv = advantages(rewards, cfg.baseline)
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
                    mu, sigma = crossover_rating(cross[1], cfg.crossover_sigma)
                    self.pool.add(cross[0].principles, mu, sigma, [p.id for p in cross[1]], "crossover", step)
            mutation_reason = mut.reason
            rejected_ops = sum(mut.rejected.values())
            if mut.principles is not None:
                mu, sigma = mutation_rating(best, cfg.mutation_sigma)  # paper §3: child σ' = sqrt(σ² + 1)
                child_id = self.pool.add(mut.principles, mu, sigma, [best.id], "mutation", step).id
            self._log_mutation(step, best, mut, cross)

        test_reward = float("nan")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            test_reward = self.evaluate(self.pool.newest.principles, cfg.eval_problems)

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
        model, loss_fn = self.policy.model, LOSSES[self.cfg.loss]
        settings = LossSettings(self.cfg.ppo_clip_eps, self.cfg.cispo_clip_low, self.cfg.cispo_clip_high)
        total_tokens = sum(sum(t.mask[1:]) for t, _ in items)
        scale = 1.0 / total_tokens if self.cfg.loss_reduction == "mean" else 1.0
        pad = self.policy.tokenizer.pad_token_id or 0
        # The sampler's log-probs are log softmax(logits / T) (agents/hf.py), so π_θ is computed at the same T:
        # on-policy the IS ratio is exactly 1 and only sampler/trainer numerics move it.
        temperature = self.cfg.temperature if self.cfg.temperature > 0 else 1.0
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(0, len(items), self.cfg.micro_batch):
            chunk = items[i : i + self.cfg.micro_batch]
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
            winners = [pid for pid, s in scores.items() if abs(s - top) < self.cfg.tie_tolerance]
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
        if self.cfg.mutator_threads > 0:
            import torch

            torch.set_num_threads(self.cfg.mutator_threads)
        return run()

    @contextlib.contextmanager
    def _update_threads(self, job: Future | None):
        """While an overlapped mutation runs beside it on the CPU, the update leaves the mutator its threads:
        OpenMP threads that outnumber the cores spin-wait on each other (measured on 2 cores: a 3.4 s update
        took 10-16 s beside a 1-thread mutator)."""
        import torch

        on_cpu = not str(self.cfg.device).startswith("cuda")
        if job is None or not on_cpu or self.cfg.mutator_threads <= 0:  # never job.done(): timing-dependent
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(max(1, before - self.cfg.mutator_threads))
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
        params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
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
        if self.cfg.checkpoint_every and self.step_count % self.cfg.checkpoint_every == 0:
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
                 "config": asdict(self.cfg)}
        tensors = {}
        if self.learning:
            tensors = {n: p.detach().cpu().clone() for n, p in self.policy.model.named_parameters() if p.requires_grad}
        ckpt.save(self.run_dir, state, tensors, self.optimizer.state_dict() if self.optimizer else None,
                  {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()})

    def _restore(self, loaded: ckpt.Checkpoint) -> None:
        import torch

        self.step_count = int(loaded.state["step"])
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
        self._write_csv()  # drop rows of a step that was cut off after its row was written

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self.mutator is not None and hasattr(self.mutator, "close"):
            self.mutator.close()
        if self._tb:
            self._tb.close()

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
