"""Evaluate a policy on an env: what `espl eval --env` runs, reusable from Python.

    result = evaluate("espl/Math-v0", HFPolicy("smollm2-135m"), episodes=64, params=SamplingParams(seed=0))
    print(result.mean_reward, result.ci95, result.pass_at_k, result.reasons)

- Tasks are the env's seeds `seed .. seed+episodes-1` of `split` (default "test"); each is run `samples`
  times (pass@k for k <= samples, unbiased estimator of Chen et al. 2021; the statistics are agents/stats.py's). An episode succeeds when its
  reward reaches `success_reward` (1.0: a correct answer in every espl env).
- mean reward ± the 95 % half-width (normal approximation over episodes), counts per `info["reason"]`,
  episodes whose prompt outgrew the model's context (`context_overflows`), generated tokens per second.
- If the policy fails midway (server down after its retries), the finished episodes are kept: the result
  has them, and `error` says what happened.
- `out=DIR` writes DIR/trajectories.jsonl chunk by chunk as episodes finish (so Ctrl-C or a crash keeps
  them) and DIR/summary.json at the end; `resume=True` continues an interrupted evaluation of DIR with the
  same options (`EpisodeLog`; what `espl eval --out DIR --continue` runs).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from espl.agents.errors import RolloutError
from espl.agents.policy import Policy
from espl.agents.rollout import Episode, EnvSource, RolloutStats, rollout, with_sample_seeds
from espl.agents.stats import SUCCESS_REWARD, Z_95, mean_ci95, pass_at_k, pass_at_ks  # noqa: F401 (re-exported)
from espl.types import SamplingParams, Trajectory

@dataclass
class EvalResult:
    """The summary of one evaluation (`to_dict()` is what `espl eval --json` prints)."""

    env: str
    model: str
    episodes: int  # episodes finished
    requested: int  # episodes asked for (tasks x samples)
    tasks: int
    samples: int
    mean_reward: float
    ci95: float
    success_rate: float
    pass_at_k: dict[int, float]
    reasons: dict[str, int]
    context_overflows: int  # episodes ended because a prompt filled the model's context (reason context_overflow)
    generated_tokens: int
    seconds: float
    tokens_per_s: float
    system_prompt: str | None
    split: str | None
    seed: int
    params: dict[str, Any]
    error: str | None = None
    placement: str | None = None  # where the system prompt went: "system" or "user" (None: no prompt)
    tool_calls: int = 0  # tool calls the episodes made (tool envs count them in each episode's info)
    tool_errors: int = 0  # ... and how many of them failed
    trajectories: list[Trajectory] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "trajectories"}
        d["pass_at_k"] = {str(k): v for k, v in self.pass_at_k.items()}
        return d

    def to_json(self) -> dict[str, Any]:
        """`to_dict` with NaN (a mean of no episodes) as None: strict JSON, what `espl eval --json` prints."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.to_dict().items()}


def summarize(env: str, model: str, trajs: Sequence[Trajectory], *, requested: int, samples: int,
              stats: RolloutStats, system_prompt: str | None, split: str | None, seed: int,
              params: SamplingParams, success_reward: float = SUCCESS_REWARD, error: str | None = None,
              placement: str = "system") -> EvalResult:
    rewards = [t.reward for t in trajs]
    mean, ci = mean_ci95(rewards)
    by_task: dict[Any, list[float]] = defaultdict(list)
    for t in trajs:
        by_task[t.seed].append(t.reward)
    passes = pass_at_ks(by_task, success_reward)
    return EvalResult(
        env=env, model=model, episodes=len(trajs), requested=requested, tasks=len(by_task), samples=samples,
        mean_reward=mean, ci95=ci,
        success_rate=(sum(r >= success_reward for r in rewards) / len(rewards)) if rewards else math.nan,
        pass_at_k=passes, reasons=dict(sorted(Counter(t.reason for t in trajs).items())),
        context_overflows=sum(bool(t.info.get("context_overflow")) for t in trajs),
        generated_tokens=stats.generated_tokens, seconds=stats.total_s,
        tokens_per_s=stats.generated_tokens / stats.total_s if stats.total_s > 0 else 0.0,
        system_prompt=system_prompt, split=split, seed=seed,
        params={"temperature": params.temperature, "top_p": params.top_p, "max_new_tokens": params.max_new_tokens,
                "seed": params.seed, "stop": list(params.stop)},
        error=error, placement=placement if system_prompt is not None else None, tool_calls=sum(int((t.info or {}).get("tool_calls", 0)) for t in trajs),
        tool_errors=sum(int((t.info or {}).get("tool_errors", 0)) for t in trajs), trajectories=list(trajs),
    )


_TASK_COUNTS: dict[tuple[str, str], int | None] = {}  # (env id, its kwargs as JSON) -> distinct_tasks


def distinct_tasks(env: EnvSource, env_kwargs: dict[str, Any] | None = None) -> int | None:
    """How many distinct tasks the env has with these keyword arguments (its split included): its
    `num_tasks()`, None when unbounded (a generated split, or an env that is not a `MultiTurnEnv`). Counted
    once per process for an env id and kwargs (building an env can take seconds: Math-v0's test list)."""
    from espl.agents.rollout import _make_env
    from espl.envs.core import MultiTurnEnv

    key = (env, json.dumps(env_kwargs or {}, sort_keys=True, default=repr)) if isinstance(env, str) else None
    if key is not None and key in _TASK_COUNTS:
        return _TASK_COUNTS[key]
    instance = _make_env(env, dict(env_kwargs or {}))
    try:
        inner = instance.unwrapped
        count = inner.num_tasks() if isinstance(inner, MultiTurnEnv) else None
    finally:
        instance.close()
    if key is not None:
        _TASK_COUNTS[key] = count
    return count


def env_display_name(env: EnvSource) -> str:
    """How logs and results name an env source: its id, else the factory's name, else its repr."""
    if isinstance(env, str):
        return env
    return getattr(env, "__name__", None) or repr(env)  # a callable factory: functions and classes have a name


def check_distinct(env: EnvSource, tasks: int, env_kwargs: dict[str, Any] | None = None, *,
                   field_name: str = "episodes") -> None:
    """ValueError naming `field_name` when `tasks` tasks (seeds 0.. or seed..) would repeat some: a split of
    fewer distinct tasks wraps its seeds around, and a repeated task would be counted twice in every mean,
    interval and paired test."""
    count = distinct_tasks(env, env_kwargs)
    if count is not None and tasks > count:
        name = env_display_name(env)
        split = (env_kwargs or {}).get("split", "default")
        raise ValueError(f"{field_name}: {tasks} tasks asked of {name}'s {split} split, which has {count} distinct "
                         f"ones (seeds wrap around after them, so tasks would count twice); use at most {count}")


class EvalLogError(ValueError):
    """`resume` of an evaluation directory that cannot be continued (the message says why and what to do)."""


class EpisodeLog:
    """DIR/trajectories.jsonl written chunk by chunk while an evaluation runs, so an interrupt or a crash keeps
    the finished episodes; `resume` skips them (DIR/progress.json must hold the same options). Episodes get
    their sampling seeds from their index in the whole evaluation before it is chunked, so a continued
    evaluation samples what an uninterrupted one would."""

    def __init__(self, out: Path, options: dict[str, Any], resume: bool):
        self.out, self.path, self.meta = out, out / "trajectories.jsonl", out / "progress.json"
        self.done: list[Trajectory] = []
        out.mkdir(parents=True, exist_ok=True)
        if resume:
            if not self.meta.is_file() or not self.path.is_file():
                raise EvalLogError(f"--continue: {out} holds no interrupted evaluation (no progress.json / "
                                   "trajectories.jsonl)")
            before = json.loads(self.meta.read_text(encoding="utf-8"))
            changed = sorted(k for k in set(before) | set(options) if before.get(k) != options.get(k))
            if changed:
                raise EvalLogError(f"--continue: {out} was evaluated with other options ({', '.join(changed)} "
                                   "differ); give the same options, or another --out")
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    self.done.append(Trajectory.from_dict(json.loads(line)))
                except (json.JSONDecodeError, TypeError):
                    break  # a line cut off by a kill: that episode runs again
        self.meta.write_text(json.dumps(options, default=str), encoding="utf-8")
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(t.to_dict(), ensure_ascii=False) + "\n" for t in self.done)
        self.written = len(self.done)

    def wrap(self, rollout_fn: Callable[..., list[Trajectory]] | None, chunk: int) -> Callable[..., list[Trajectory]]:
        """`rollout_fn` (default: the local rollout) run `chunk` episodes at a time, each chunk appended to the
        log as it finishes, the episodes already logged skipped."""
        base = rollout_fn or rollout

        def run(env, policy, episodes, params, *, env_kwargs=None, max_batch=None, progress=None, stats=None):
            eps = with_sample_seeds(episodes, params)
            results = list(self.done[: len(eps)])
            for start in range(len(results), len(eps), chunk):
                part = eps[start : start + chunk]
                report = (lambda d, t, s=start: progress(s + d, len(eps))) if progress else None
                try:
                    got = base(env, policy, part, params, env_kwargs=env_kwargs, max_batch=max_batch,
                               progress=report, stats=stats)
                except RolloutError as exc:
                    finished = dict(enumerate(results))
                    finished.update({start + i: t for i, t in exc.trajectories.items()})
                    raise RolloutError(str(exc), finished, exc.cause) from exc.cause
                with open(self.path, "a", encoding="utf-8") as f:
                    f.writelines(json.dumps(t.to_dict(), ensure_ascii=False) + "\n" for t in got)
                results.extend(got)
                self.written = len(results)
            return results

        return run

    def write_summary(self, result: EvalResult) -> None:
        (self.out / "summary.json").write_text(json.dumps(result.to_dict(), indent=2, default=str), encoding="utf-8")


def evaluate(
    env: EnvSource,
    policy: Policy | None,
    *,
    episodes: int = 32,
    params: SamplingParams | None = None,
    system_prompt: str | None = None,
    samples: int = 1,
    seed: int = 0,
    split: str | None = "test",
    env_kwargs: dict[str, Any] | None = None,
    max_batch: int | None = None,
    success_reward: float = SUCCESS_REWARD,
    progress: Callable[[int, int], None] | None = None,
    rollout_fn: Callable[..., list[Trajectory]] | None = None,
    placement: Literal["system", "user"] = "system",
) -> EvalResult:
    """Run `episodes` tasks x `samples` of `env` with `policy` and summarise (see the module docstring).

    `split=None` leaves the env's own default split (for envs without splits). `rollout_fn` replaces the
    local `rollout` (same signature), e.g. `RayRollout(...).rollout` to run the episodes on a Ray cluster
    (then `policy` may be None: the workers hold the policies). `placement` is where `system_prompt` goes:
    "system" (a system message) or "user" (the first user turn, in the E-SPL reference's text; `Episode`).
    """
    if episodes < 1:
        raise ValueError(f"episodes: must be >= 1, got {episodes}")
    if samples < 1:
        raise ValueError(f"samples: must be >= 1, got {samples}")
    if seed < 0:
        raise ValueError(f"seed: must be >= 0 (task seeds are seed .. seed+episodes-1), got {seed}")
    if placement not in ("system", "user"):
        raise ValueError(f"placement: must be system or user, got {placement!r}")
    params = params or SamplingParams(seed=seed)
    kwargs = dict(env_kwargs or {})
    if split is not None:
        kwargs.setdefault("split", split)
    check_distinct(env, episodes, kwargs)
    eps = [Episode(seed=seed + i, system_prompt=system_prompt, placement=placement) for i in range(episodes) for _ in range(samples)]
    stats = RolloutStats()
    env_name = env_display_name(env)
    model = policy.name if policy is not None else "(ray workers)"
    t0 = time.perf_counter()
    error = None
    try:
        run: Callable[..., list[Trajectory]] = rollout_fn or rollout  # a RayRollout takes policy=None
        trajs = run(env, policy, eps, params, env_kwargs=kwargs, max_batch=max_batch, progress=progress, stats=stats)
    except RolloutError as exc:
        trajs = [exc.trajectories[i] for i in sorted(exc.trajectories)]
        error = str(exc)
    stats.total_s = stats.total_s or (time.perf_counter() - t0)
    return summarize(env_name, model, trajs, requested=len(eps), samples=samples, stats=stats,
                     system_prompt=system_prompt, split=kwargs.get("split"), seed=seed, params=params,
                     success_reward=success_reward, error=error, placement=placement)
