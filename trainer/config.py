"""`TrainConfig`: every constant of a training run, grouped by concern, typed, validated when it is built.

    [data]       step 1: which problems (train_problems, batch_problems)
    [selection]  step 2: which prompts (prompts_per_step, choose_from_newest, strategy, placement, fixed_principles)
    [rollout]    step 3: sampling (rollouts_per_pair, temperature, top_p, max_new_tokens)
    [lora] [loss] [optimizer]   step 4: the RL update of the weights
    [trueskill]  step 5: ratings
    [mutator]    step 6: the LLM that rewrites prompts
    [crossover]  step 7
    [pool]       step 8
    [evaluation] [output] [scaleout]   bookkeeping and where rollouts run

Top-level fields (mode, env, env_kwargs, model, seed, device, dtype, max_batch) say what is trained where.
Sources layer in order: defaults <- a TOML file (sections as tables) <- `--set section.field=value` (values
parsed as TOML, a bare word is a string) <- explicit keywords. Every value is checked by type and range
here, before any model loads; a bad one raises `ConfigError`, one line naming the field, the value and the
fix. The flat keys of espl-gym 0.1 (`lora_rank`, `mutator_summary_tokens`, ...) still work and log one
deprecation line naming the new key (`LEGACY_KEYS`; docs/training.md has the table).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence

log = logging.getLogger(__name__)

Mode = Literal["espl", "rl", "evolve"]
MutatorKind = Literal["base", "llamacpp", "policy", "endpoint"]
Dtype = Literal["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"]
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


class ConfigError(ValueError):
    """A bad configuration value; the message is one line: field, value, what is allowed."""


def toml_module() -> Any:
    """`tomllib` (Python >= 3.11) or its backport `tomli` (the Python 3.10 dependency in pyproject)."""
    try:
        import tomllib
    except ImportError:
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None, ge: float | None = None,
        gt: float | None = None, le: float | None = None, lt: float | None = None) -> Any:
    """A config field: its default, a one-line meaning (`espl train --show-config`) and its range."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ---- type checking and coercion ----------------------------------------------------------------------------

_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """`value` as type `hint`, or ConfigError naming `name`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if value in args:
            return value
        choices = [str(a) for a in args]
        close = [c for c in choices if c.startswith(str(value))] or difflib.get_close_matches(str(value), choices, 1, 0.5)
        hint_text = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{name} = {_show(value)}: must be one of {list(args)}{hint_text}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{name} = {_show(value)}: must be true or false, e.g. --set {name}=false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{name} = {_show(value)}: must be a whole number, e.g. --set {name}=2")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} = {_show(value)}: must be a number, e.g. --set {name}=0.5")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} = {_show(value)}: must be text; quote it in TOML, e.g. {name} = \"...\"")
        return value
    if origin is tuple:  # tuple[str, ...]: a lone string is ONE item, never its characters
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{name} = {_show(value)}: must be a list of strings, e.g. {name} = [\"Be brief.\"]")
        return tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} = {_show(value)}: must be a table of keyword arguments, e.g. "
                              f"--set {name}.max_attempts=2 or [{name}] in TOML")
        return dict(value)
    return value


def _check_fields(obj: Any, prefix: str) -> None:
    """Coerce every field of a frozen dataclass to its annotated type and check its range (in place)."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        if dataclasses.is_dataclass(hints[f.name]):
            continue
        name = f"{prefix}{f.name}"
        value = _coerce(name, getattr(obj, f.name), hints[f.name])
        m = f.metadata
        bounds = [(m.get("ge"), ">=", lambda v, b: v >= b), (m.get("gt"), ">", lambda v, b: v > b),
                  (m.get("le"), "<=", lambda v, b: v <= b), (m.get("lt"), "<", lambda v, b: v < b)]
        for bound, sign, ok in bounds:
            if bound is not None and not ok(value, bound):
                raise ConfigError(f"{name} = {_show(value)}: must be {sign} {bound:g}")
        object.__setattr__(obj, f.name, value)


class _Section:
    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        _check_fields(self, f"{self.SECTION}.")


# ---- the sections -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig(_Section):
    SECTION = "data"
    train_problems: int = opt(256, "task indices 0..n-1 of the train split form the training set; at most the split's distinct tasks [ref: 256]", ge=1)
    batch_problems: int = opt(2, "B, problems per step [ref: 10]", ge=1)


@dataclass(frozen=True)
class SelectionConfig(_Section):
    SECTION = "selection"
    prompts_per_step: int = opt(2, "M, prompts per step [ref: 3]", ge=1)
    choose_from_newest: int = opt(5, "K, prompts are chosen from the K newest", ge=1)
    strategy: Literal["uniform", "ucb", "lucb", "softmax"] = opt("uniform", "how the M prompts are chosen")
    placement: Literal["system", "user"] = opt(
        "system", "where the principles go: the system message, or the user turn in the reference's words "
                  "('Please solve the following problem: ...', problem first) [ref: user]")
    fixed_principles: tuple[str, ...] = opt((), "the root prompt (the only one in mode rl); a string is one principle")


@dataclass(frozen=True)
class RolloutConfig(_Section):
    SECTION = "rollout"
    rollouts_per_pair: int = opt(4, "N, rollouts per (prompt, problem) [ref: group_size 5]", ge=1)
    temperature: float = opt(0.7, "sampling temperature (0: greedy)", ge=0.0)
    top_p: float = opt(0.95, "nucleus sampling mass", gt=0.0, le=1.0)
    max_new_tokens: int = opt(96, "tokens per reply turn [ref: 15000]", ge=1)
    tool_grammar: Literal["off", "required", "auto", "answer", "call_then_answer"] = opt(
        "off", "tool calls decoded under a grammar of the env's tools (call_then_answer: the first reply a call, "
        "later ones answers); log-probs under the same masks (docs/tools.md)")


@dataclass(frozen=True)
class LoraConfig(_Section):
    SECTION = "lora"
    rank: int = opt(16, "LoRA rank [ref: 32]", ge=1)
    alpha: int = opt(32, "LoRA alpha (scale alpha/rank)", ge=1)
    dropout: float = opt(0.0, "LoRA dropout (0 keeps the update deterministic and resume exact)", ge=0.0, lt=1.0)


@dataclass(frozen=True)
class LossConfig(_Section):
    SECTION = "loss"
    name: Literal["reinforce_is", "ppo_clip", "cispo"] = opt("reinforce_is", "per-token RL loss (trainer/loss.py)")
    baseline: Literal["group", "marginalize"] = opt("group", "advantage baseline: the group's mean, or the problem's")
    reduction: Literal["sum", "mean"] = opt("sum", "sum over tokens (as Tinker's losses), or mean")
    ppo_clip_eps: float = opt(0.2, "ppo_clip: ratio clipped to [1 - eps, 1 + eps]", gt=0.0)
    cispo_clip_low: float = opt(0.0, "cispo: lower clip of the IS weight", ge=0.0)
    cispo_clip_high: float = opt(4.0, "cispo: upper clip of the IS weight", gt=0.0)


@dataclass(frozen=True)
class OptimizerConfig(_Section):
    SECTION = "optimizer"
    learning_rate: float = opt(1e-4, "Adam step size [ref: 4e-5 at 8B-30B; a 135M LoRA needs more]", gt=0.0)
    adam_beta1: float = opt(0.9, "Adam beta1", ge=0.0, lt=1.0)
    adam_beta2: float = opt(0.95, "Adam beta2", ge=0.0, lt=1.0)
    adam_eps: float = opt(1e-8, "Adam epsilon", gt=0.0)
    micro_batch: int = opt(8, "episodes per forward/backward (one Adam step per training step)", ge=1)
    micro_batch_tokens: int = opt(4096, "at most this many padded tokens (rows x longest) per forward/backward; a "
                                        "longer episode goes alone (memory: ~2.6 MB a token for Qwen2.5-0.5B)", ge=1)


@dataclass(frozen=True)
class TrueSkillConfig(_Section):
    SECTION = "trueskill"
    mu: float = opt(25.0, "a new root prompt's rating mean")
    sigma: float = opt(25.0 / 3, "a new root prompt's rating deviation", gt=0.0)
    beta: float = opt(25.0 / 6, "performance noise", gt=0.0)
    tau: float = opt(25.0 / 300, "dynamics: sigma grows by tau each match", ge=0.0)
    draw_probability: float = opt(0.10, "prior probability of a draw", ge=0.0, lt=1.0)
    tie_tolerance: float = opt(0.01, "scores closer than this are a tie", ge=0.0)

    def settings(self) -> Any:
        from espl.trainer.pool import TrueSkillSettings

        return TrueSkillSettings(self.mu, self.sigma, self.beta, self.tau, self.draw_probability)


@dataclass(frozen=True)
class MutatorConfig(_Section):
    SECTION = "mutator"
    kind: MutatorKind = opt("base", "base: the frozen base model; llamacpp: its GGUF in a llama.cpp server; "
                                    "policy: the trained policy; endpoint: an OpenAI-compatible server")
    base_url: str = opt("", "kind = endpoint: the server, e.g. http://127.0.0.1:8080/v1")
    model: str = opt("", "the mutator's model (endpoint model name, or another local model); empty: the policy's")
    threads: int = opt(1, "CPU threads the mutator takes (llama.cpp server, or torch threads beside the update)", ge=0)
    slots: int = opt(1, "kind = llamacpp: server slots, requests decoded at once; 1: replies reproducible between "
                        "runs (a request is never batched with another); 4 was 0.89x the time at 1 thread, "
                        "6 of 8 replies differing between runs (benchmarks/mutator_slots.py)", ge=1)
    max_ops_per_problem: int = opt(2, "operations per critique [ref: max_update_operations 2]", ge=1)
    max_principle_words: int = opt(32, "words per principle of the child (a critique's may be longer: the revision "
                                       "shortens them) [ref: 32, stated in the revision prompt]", ge=1)
    max_principles: int = opt(24, "principles per prompt; a longer child is rejected; 0: no cap [ref: 0]", ge=0)
    sigma: float = opt(1.0, "a mutated child's sigma' = sqrt(sigma^2 + this^2) [paper §3]", ge=0.0)
    constrained: bool = opt(True, "grammar-constrained JSON operations where the backend supports them")
    reflection: Literal["json_only", "reason_then_json"] = opt(
        "json_only", "constrained calls: json_only (the operations alone; tiny models) or reason_then_json (an "
                     "'analysis' field first, then the operations) [ref: reason first, then JSON]")
    summary_tokens: int = opt(96, "token budget of each trajectory summary [ref: 15000]", ge=1)
    critique_tokens: int = opt(160, "token budget of each critique [ref: 15000]", ge=1)
    revision_tokens: int = opt(192, "token budget of the revision plan [ref: 15000]", ge=1)
    overlap: bool = opt(True, "run the mutator alongside the RL update (needs a separate mutator model)")
    pipeline: bool = opt(False, "run step t's mutation beside step t+1's rollouts and update; its child enters the "
                                "pool at the end of step t+1 (one step late; kinds base/llamacpp/endpoint) "
                                "[ref: the child enters at step t]")


@dataclass(frozen=True)
class CrossoverConfig(_Section):
    SECTION = "crossover"
    prob: float = opt(0.0, "probability of a crossover each step (reference default: off)", ge=0.0, le=1.0)
    sigma: float = opt(1.0, "a crossover child's extra sigma", ge=0.0)
    tokens: int = opt(192, "token budget of the crossover reply [ref: 15000]", ge=1)


@dataclass(frozen=True)
class PoolConfig(_Section):
    SECTION = "pool"
    max_size: int = opt(100, "prompts kept (FIFO beyond) [ref: 100]", ge=1)


EVAL_PROMPTS: tuple[str, ...] = ("newest", "best", "none")


@dataclass(frozen=True)
class EvaluationConfig(_Section):
    """Held-out evaluation inside the training loop (trainer/heldout.py, docs/training.md "Held-out evaluation")."""

    SECTION = "evaluation"
    every: int = opt(5, "held-out evaluation every n steps and after the last step (0: never) [ref: every step]", ge=0)
    problems: int = opt(32, "the fixed held-out set: test-split tasks 0..n-1 [ref: the whole test set]", ge=1)
    samples: int = opt(1, "k, samples per held-out task; pass@1..k is reported [ref: 10]", ge=1)
    prompts: tuple[str, ...] = opt((), "which prompts: newest, best (mu - 2 sigma), none (no prompt); empty: all "
                                       "three in modes espl/evolve, the fixed prompt (= newest) in mode rl")

    def __post_init__(self) -> None:
        super().__post_init__()
        for p in self.prompts:
            if p not in EVAL_PROMPTS:
                close = difflib.get_close_matches(p, EVAL_PROMPTS, 1, 0.5)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"evaluation.prompts: {p!r} is not one of {list(EVAL_PROMPTS)}{hint}, e.g. "
                                  "--set 'evaluation.prompts=[\"newest\", \"none\"]'")
        if len(set(self.prompts)) != len(self.prompts):
            raise ConfigError(f"evaluation.prompts = {list(self.prompts)}: each prompt at most once")

    def prompt_labels(self, mode: str) -> tuple[str, ...]:
        """The prompts an evaluation runs: `prompts`, or by default all three (espl/evolve) or, in mode rl, the
        fixed prompt alone (the pool of an rl run holds only it, so newest = best = fixed)."""
        if self.prompts:
            return self.prompts
        return ("newest",) if mode == "rl" else EVAL_PROMPTS


@dataclass(frozen=True)
class OutputConfig(_Section):
    SECTION = "output"
    checkpoint_every: int = opt(1, "checkpoint every n steps (0: never)", ge=0)
    trajectory_samples: int = opt(4, "episodes per step kept in RUN_DIR/samples.jsonl (0: none)", ge=0)


@dataclass(frozen=True)
class ScaleoutConfig(_Section):
    SECTION = "scaleout"
    backend: Literal["local", "ray"] = opt("local", "where rollouts run (docs/scaling.md)")
    ray_address: str = opt("", "empty: a private Ray instance here; auto / HOST:PORT joins a cluster")
    workers: int = opt(2, "Ray rollout workers (each holds a copy of the policy)", ge=1)
    cpus_per_worker: float = opt(1.0, "CPUs per Ray worker", gt=0.0)
    gpus_per_worker: float = opt(0.0, "GPUs per Ray worker (> 0: workers generate on their GPU)", ge=0.0)


SECTIONS: dict[str, type] = {c.SECTION: c for c in (
    DataConfig, SelectionConfig, RolloutConfig, LoraConfig, LossConfig, OptimizerConfig, TrueSkillConfig,
    MutatorConfig, CrossoverConfig, PoolConfig, EvaluationConfig, OutputConfig, ScaleoutConfig)}

# espl-gym 0.1's flat keys -> the new dotted key (still accepted, with one deprecation line each)
LEGACY_KEYS: dict[str, str] = {
    "train_problems": "data.train_problems", "batch_problems": "data.batch_problems",
    "prompts_per_step": "selection.prompts_per_step", "choose_from_newest": "selection.choose_from_newest",
    "selection": "selection.strategy", "placement": "selection.placement",
    "fixed_principles": "selection.fixed_principles",
    "rollouts_per_pair": "rollout.rollouts_per_pair", "temperature": "rollout.temperature", "top_p": "rollout.top_p",
    "max_new_tokens": "rollout.max_new_tokens",
    "baseline": "loss.baseline", "loss": "loss.name", "loss_reduction": "loss.reduction",
    "ppo_clip_eps": "loss.ppo_clip_eps", "cispo_clip_low": "loss.cispo_clip_low", "cispo_clip_high": "loss.cispo_clip_high",
    "lora_rank": "lora.rank", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
    "learning_rate": "optimizer.learning_rate", "adam_beta1": "optimizer.adam_beta1",
    "adam_beta2": "optimizer.adam_beta2", "adam_eps": "optimizer.adam_eps", "micro_batch": "optimizer.micro_batch",
    "trueskill_mu": "trueskill.mu", "trueskill_sigma": "trueskill.sigma", "trueskill_beta": "trueskill.beta",
    "trueskill_tau": "trueskill.tau", "trueskill_draw_probability": "trueskill.draw_probability",
    "tie_tolerance": "trueskill.tie_tolerance",
    "mutator": "mutator.kind", "mutator_base_url": "mutator.base_url", "mutator_model": "mutator.model",
    "mutator_threads": "mutator.threads", "max_ops_per_problem": "mutator.max_ops_per_problem",
    "max_principle_words": "mutator.max_principle_words", "max_principles": "mutator.max_principles",
    "mutation_sigma": "mutator.sigma", "mutator_constrained": "mutator.constrained",
    "mutator_summary_tokens": "mutator.summary_tokens", "mutator_critique_tokens": "mutator.critique_tokens",
    "mutator_revision_tokens": "mutator.revision_tokens", "overlap_mutation": "mutator.overlap",
    "crossover_prob": "crossover.prob", "crossover_sigma": "crossover.sigma", "mutator_crossover_tokens": "crossover.tokens",
    "max_pool_size": "pool.max_size",
    "checkpoint_every": "output.checkpoint_every",
    "eval_every": "evaluation.every", "eval_problems": "evaluation.problems",
    "backend": "scaleout.backend", "ray_address": "scaleout.ray_address", "ray_workers": "scaleout.workers",
    "ray_cpus_per_worker": "scaleout.cpus_per_worker", "ray_gpus_per_worker": "scaleout.gpus_per_worker",
}

# A resumed run may not change these: its checkpoint (adapter, optimizer, pool) would no longer mean anything.
RESUME_FIXED: tuple[str, ...] = ("mode", "env", "env_kwargs", "model", "lora.rank", "lora.alpha", "lora.dropout",
                                 "selection.placement", "selection.fixed_principles")


def check_env(env_id: str, env_kwargs: Mapping[str, Any], *, field_name: str = "env",
              kwargs_name: str = "env_kwargs") -> None:
    """The env id is registered (else "did you mean") and takes these keyword arguments (ConfigError)."""
    import gymnasium as gym

    import espl  # noqa: F401  (registers the espl envs and plugins)
    from espl.envs.registration import env_class, get_spec

    try:
        get_spec(env_id)
    except gym.error.Error as exc:
        raise ConfigError(f"{field_name} = {env_id!r}: {exc}") from None
    try:
        cls = env_class(env_id)
    except (ImportError, AttributeError):
        return  # a broken plugin: gym.make will say so when the env is built
    params = inspect.signature(cls.__init__).parameters.values()  # type: ignore[misc]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = sorted(p.name for p in params if p.name != "self" and p.kind in (
        inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD))
    for key in env_kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, 1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{kwargs_name}.{key}: {env_id} takes no such argument; {hint}it accepts {accepted}")


@dataclass(frozen=True)
class TrainConfig:
    """Every constant of the algorithm. [ref: x] marks the reference code's value where ours differs."""

    mode: Mode = opt("espl", "espl: prompts evolve and weights learn; rl: fixed prompt; evolve: no weight update")
    env: str = opt("espl/Math-v0", "env id (`espl envs list`)")
    env_kwargs: dict[str, Any] = opt(help="keyword arguments of the env, e.g. env_kwargs.max_attempts=2", factory=dict)
    model: str = opt("smollm2-135m", "policy model: alias, hub id or path")
    seed: int = opt(0, "run seed: every random draw derives from it", ge=0)
    device: str = opt("cpu", "where the policy (and a base-model mutator) run: cpu, cuda, cuda:N, mps")
    dtype: Dtype = opt("auto", "model weights: auto (float32), float32, bfloat16, float16")
    max_batch: int = opt(64, "sequences decoded at once (larger batches are split)", ge=1)
    kv_cache: Literal["auto", "dynamic", "static"] = opt(
        "auto", "the HF policy's decode KV cache: dynamic, static (pre-allocated; compiled on CUDA), or auto "
                "(dynamic until the static path is measured on a GPU; docs/performance.md)")
    data: DataConfig = opt(factory=DataConfig)
    selection: SelectionConfig = opt(factory=SelectionConfig)
    rollout: RolloutConfig = opt(factory=RolloutConfig)
    lora: LoraConfig = opt(factory=LoraConfig)
    loss: LossConfig = opt(factory=LossConfig)
    optimizer: OptimizerConfig = opt(factory=OptimizerConfig)
    trueskill: TrueSkillConfig = opt(factory=TrueSkillConfig)
    mutator: MutatorConfig = opt(factory=MutatorConfig)
    crossover: CrossoverConfig = opt(factory=CrossoverConfig)
    pool: PoolConfig = opt(factory=PoolConfig)
    evaluation: EvaluationConfig = opt(factory=EvaluationConfig)
    output: OutputConfig = opt(factory=OutputConfig)
    scaleout: ScaleoutConfig = opt(factory=ScaleoutConfig)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name}: must be a {cls.__name__} (or a [{name}] table), got {_show(getattr(self, name))}")
        _check_fields(self, "")
        if not _DEVICE.match(self.device):
            raise ConfigError(f"device = {self.device!r}: not a device; use cpu, cuda, cuda:N (e.g. cuda:0) or mps")
        if not self.model.strip():
            raise ConfigError("model = '': give a model alias (smollm2-135m), hub id or path")
        m = self.mutator
        if m.threads < 1 and m.kind == "llamacpp":
            raise ConfigError(f"mutator.threads = {m.threads}: must be >= 1 with mutator.kind = 'llamacpp'")
        if m.pipeline and m.kind == "policy":
            raise ConfigError("mutator.pipeline = true: needs a frozen mutator (mutator.kind = base, llamacpp or "
                              "endpoint); the policy's weights change while its mutation would run")
        if m.kind == "endpoint" and not m.base_url:
            raise ConfigError("mutator.base_url: required with mutator.kind = 'endpoint' (e.g. http://127.0.0.1:8080/v1)")
        if self.loss.cispo_clip_high <= self.loss.cispo_clip_low:
            raise ConfigError(f"loss.cispo_clip_high = {self.loss.cispo_clip_high}: must be > loss.cispo_clip_low "
                              f"({self.loss.cispo_clip_low})")
        check_env(self.env, self.env_kwargs)

    def __getattr__(self, name: str) -> Any:
        """Read access by an espl-gym 0.1 flat name (`cfg.lora_rank` = `cfg.lora.rank`) for code written
        against it; section names (`loss`, `mutator`, `selection`, `trueskill`) are the sections now."""
        new = LEGACY_KEYS.get(name)
        if new is None or name.startswith("__"):
            raise AttributeError(f"TrainConfig has no field {name!r}; `espl train --show-config` lists them")
        section, _, key = new.partition(".")
        return getattr(object.__getattribute__(self, section), key)

    # -- views --
    @property
    def evolving(self) -> bool:
        return self.mode in ("espl", "evolve")

    @property
    def learning(self) -> bool:
        return self.mode in ("espl", "rl")

    def to_dict(self) -> dict[str, Any]:
        """Nested plain data (tuples as lists): what config.toml and the checkpoint hold."""
        def plain(v: Any) -> Any:
            return list(v) if isinstance(v, tuple) else v

        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = {g.name: plain(getattr(v, g.name)) for g in fields(v)} if f.name in SECTIONS else plain(v)
        return out

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, e.g. {"mutator.kind": "base", ...}."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if key in SECTIONS:
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with dotted-key changes: cfg.replace(**{"rollout.max_new_tokens": 8})."""
        return TrainConfig.from_dict({**self.to_dict(), **_nest(changes, warn=False)})

    def mutator_settings(self) -> Any:
        from espl.trainer.mutator import MutatorSettings

        m = self.mutator
        return MutatorSettings(
            max_ops_per_problem=m.max_ops_per_problem, max_principle_words=m.max_principle_words,
            max_principles=m.max_principles, summary_tokens=m.summary_tokens, critique_tokens=m.critique_tokens,
            revision_tokens=m.revision_tokens, crossover_tokens=self.crossover.tokens,
            temperature=self.rollout.temperature, top_p=self.rollout.top_p, constrained=m.constrained,
            reflection=m.reflection,
        )

    # -- building --
    @classmethod
    def paper(cls, **overrides: Any) -> "TrainConfig":
        """The reference code's configuration (GPU/Tinker scale); `overrides` as dotted keys. Every mutator call
        samples with the rollouts' parameters there (max_tokens 15000, T 0.7, top-p 0.95); it reasons before its
        JSON; there is no cap on principles; the newest prompt is evaluated after every step with 10 samples
        per task (`evaluation.problems`, the reference's whole test set, depends on the env: set it)."""
        ref = {"data.batch_problems": 10, "selection.prompts_per_step": 3, "rollout.rollouts_per_pair": 5,
               "rollout.max_new_tokens": 15000, "lora.rank": 32, "optimizer.learning_rate": 4e-5,
               "selection.placement": "user", "data.train_problems": 256,
               "mutator.summary_tokens": 15000, "mutator.critique_tokens": 15000, "mutator.revision_tokens": 15000,
               "crossover.tokens": 15000, "mutator.reflection": "reason_then_json", "mutator.max_principles": 0,
               "evaluation.every": 1, "evaluation.samples": 10, "evaluation.prompts": ["newest"]}
        return cls.from_dict({**ref, **overrides})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, warn: bool = True) -> "TrainConfig":
        """From nested tables, dotted keys, or (deprecated, one log line each when `warn`) 0.1's flat keys."""
        nested = _nest(data, warn=warn)
        top: dict[str, Any] = {}
        for key, value in nested.items():
            if key in SECTIONS:
                if isinstance(value, SECTIONS[key]):
                    top[key] = value
                    continue
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{key} = {_show(value)}: {key} is a section; set its fields, e.g. "
                                      f"--set {key}.{fields(SECTIONS[key])[0].name}=...")
                known = {f.name for f in fields(SECTIONS[key])}
                for sub in value:
                    if sub not in known:
                        _unknown(f"{key}.{sub}")
                top[key] = SECTIONS[key](**value)
            else:
                top[key] = value
        return cls(**top)

    @classmethod
    def from_sources(cls, path: str | Path | None = None, overrides: Sequence[str] = (), base: "TrainConfig | None" = None,
                     **explicit: Any) -> "TrainConfig":
        """`base` (default: the defaults) <- a TOML file <- `key=value` overrides <- explicit keywords (None: unset)."""
        data: dict[str, Any] = base.to_dict() if base is not None else {}
        layers = []
        if path:
            layers.append(read_toml(path))
        layers.append(parse_overrides(overrides))
        layers.append({k: v for k, v in explicit.items() if v is not None})
        for layer in layers:
            _merge(data, _nest(layer, warn=True))
        return cls.from_dict(data, warn=False)


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; ConfigError (one line) when it is missing, not UTF-8 or not TOML."""
    tomllib = toml_module()
    try:
        text = Path(path).read_bytes().decode("utf-8")
        return tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--config {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`key=value` strings (key dotted) -> {key: value}; a value is read as TOML, else it is a bare string."""
    tomllib = toml_module()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set optimizer.learning_rate=2e-5")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()  # a bare word or sentence: a string ("Be brief." stays one string)
        out[key] = value
    return out


def all_keys() -> list[str]:
    top = [f.name for f in fields(TrainConfig) if f.name not in SECTIONS]
    return top + [f"{s}.{f.name}" for s, c in SECTIONS.items() for f in fields(c)]


def _unknown(key: str) -> None:
    known = all_keys() + list(LEGACY_KEYS)
    close = difflib.get_close_matches(key, known, 1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(f"{key}: unknown config key{hint}; `espl train --show-config` lists them all")


def _nest(data: Mapping[str, Any], *, warn: bool) -> dict[str, Any]:
    """Flat/dotted/legacy keys -> nested dicts of the new layout."""
    out: dict[str, Any] = {}
    top_fields = {f.name for f in fields(TrainConfig)}
    for key, value in data.items():
        if key in LEGACY_KEYS and not (key in SECTIONS and isinstance(value, Mapping)):
            new = LEGACY_KEYS[key]
            if warn:
                log.warning("config key %r is deprecated; use %r (docs/training.md, 'Config keys')", key, new)
            key = new
        head, dot, rest = key.partition(".")
        if head not in top_fields:
            _unknown(key)
        if not dot:
            if isinstance(value, Mapping) and isinstance(out.get(head), dict):
                _merge(out[head], dict(value))
            else:
                out[head] = dict(value) if isinstance(value, Mapping) else value
            continue
        if head not in SECTIONS and head != "env_kwargs":
            _unknown(key)
        slot = out.setdefault(head, {})
        if not isinstance(slot, dict):
            slot = out[head] = {}
        parts = rest.split(".")
        for p in parts[:-1]:
            slot = slot.setdefault(p, {})
        slot[parts[-1]] = value
    return out


def _merge(into: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if key in SECTIONS and isinstance(value, Mapping) and isinstance(into.get(key), dict):
            into[key].update(value)
        elif key == "env_kwargs" and isinstance(value, Mapping) and isinstance(into.get(key), dict):
            into[key] = {**into[key], **value}
        else:
            into[key] = value


def describe_fields() -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, meaning) of every field, for `espl train --show-config`."""
    rows = []
    for f in fields(TrainConfig):
        if f.name in SECTIONS:
            cls = SECTIONS[f.name]
            hints = typing.get_type_hints(cls)
            for g in fields(cls):
                rows.append((f"{f.name}.{g.name}", _type_name(hints[g.name]), _default(g), g.metadata.get("help", "")))
        else:
            rows.append((f.name, _type_name(typing.get_type_hints(TrainConfig)[f.name]), _default(f), f.metadata.get("help", "")))
    return rows


def _default(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc, operator]
    return repr(list(value) if isinstance(value, tuple) else value)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(str(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return "list[str]"
    if typing.get_origin(hint) is dict:
        return "table"
    return getattr(hint, "__name__", str(hint))


def resume_changes(original: TrainConfig, requested: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (original, requested) for every field that differs; ConfigError when one of
    `RESUME_FIXED` differs (the checkpoint would not mean the same thing)."""
    a, b = original.flat(), requested.flat()
    changes = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    for key in RESUME_FIXED:
        if key in changes:
            old, new = changes[key]
            raise ConfigError(f"{key}: a resumed run keeps {_show(old)} (asked: {_show(new)}); its checkpoint was "
                              f"trained with it; start a new run with another --out to change it")
    return changes
