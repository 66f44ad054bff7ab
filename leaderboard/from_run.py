"""`espl eval --from-run RUN_DIR`: the agents a training run produced, ready to evaluate.

A RUN_DIR written by `espl train` holds `config.toml` (model, LoRA settings, prompt placement), the prompt
pool and a checkpoint (`checkpoint/state.json` with the pool of the same step, `adapter.safetensors` with
the LoRA weights). Two prompts are evaluated, each with the trained adapter:

- **newest**: the last prompt the run added to its pool;
- **best**: the highest conservative rating μ − 2σ (the trainer's "exploit" score; ties go to the newer).

When they are the same prompt it is evaluated once. The pool is read from the checkpoint, so prompts and
adapter weights come from the same step; a run without a checkpoint falls back to `pool.json` and no
adapter. `--from-run RUN_DIR/best` evaluates the run's best checkpoint instead (the step whose held-out score
was highest, kept by the in-loop evaluation): its newest and best-rated prompts and, as **heldout-best**, the
prompt that scored that best (best/best.json; none when that was the no-prompt evaluation), with that step's
adapter. The adapter's identity is the sha256 of its weights file, so two runs with equal weights and
prompt are one agent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from espl.agents.errors import AdapterMismatch
from espl.agents.policy import LoraSettings, Policy, PolicySpec, build_policy
from espl.leaderboard.runner import file_sha256

Label = Literal["newest", "best", "heldout-best"]


class RunDirError(ValueError):
    """RUN_DIR is not a run written by `espl train` (or is incomplete); the message says what is missing."""


@dataclass(frozen=True)
class TrainedPrompt:
    label: str  # "newest", "best", "heldout-best", or several joined by "+" when they are one prompt
    prompt_id: int
    principles: tuple[str, ...]
    mu: float
    sigma: float
    text: str | None  # the rendered prompt the policy sees (None: the empty root prompt)


@dataclass(frozen=True)
class TrainedRun:
    run_dir: Path
    config: Any  # espl.trainer.espl.TrainConfig
    step: int
    prompts: tuple[TrainedPrompt, ...]
    adapter_path: Path | None
    adapter_hash: str | None
    checkpoint: str = "last"  # "last" (RUN_DIR) or "best" (RUN_DIR/best)

    def agent_name(self, prompt: TrainedPrompt) -> str:
        adapter = " + adapter" if self.adapter_path else ""
        where = "/best" if self.checkpoint == "best" else ""
        return f"{self.run_dir.name}{where}@{self.step} {prompt.label} prompt #{prompt.prompt_id}{adapter}"


def read_run(run_dir: str | Path) -> TrainedRun:
    """Config, newest and best prompts, and adapter location of a RUN_DIR (no model is loaded)."""
    from espl.trainer import checkpoint as ckpt
    from espl.trainer.espl import TrainConfig
    from espl.trainer.pool import PromptPool, prompt_text

    run_dir = Path(run_dir).expanduser()
    best_record: dict[str, Any] | None = None
    state_dir: Path | None = None
    if run_dir.name == ckpt.BEST and (run_dir.parent / "config.toml").is_file():
        best_dir, run_dir = run_dir, run_dir.parent
        state_dir = best_dir
        try:
            best_record = json.loads((best_dir / ckpt.BEST_RECORD).read_text(encoding="utf-8"))
            int(best_record["step"]), best_record["prompt_id"] is None or int(best_record["prompt_id"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunDirError(f"--from-run {best_dir}: no readable {ckpt.BEST_RECORD} ({exc}); the run has not "
                              "kept a best checkpoint (evaluation.every > 0 keeps one)") from None
        if not (best_dir / "state.json").is_file():
            raise RunDirError(f"--from-run {best_dir}: no state.json; give RUN_DIR for the last checkpoint")
    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise RunDirError(f"--from-run {run_dir}: no config.toml; give a RUN_DIR written by `espl train --out` "
                          "(or RUN_DIR/best)")
    cfg = TrainConfig.from_sources(config_path)

    if best_record is None:
        state_dir = next((run_dir / n for n in (ckpt.NAME, ckpt.OLD) if (run_dir / n / "state.json").is_file()), None)
    if state_dir is not None:
        state = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
        pool_data, step = state["pool"], int(state["step"])
        adapter = state_dir / "adapter.safetensors"
        adapter_path = adapter if adapter.is_file() else None
    elif (run_dir / "pool.json").is_file():
        pool_data, step, adapter_path = json.loads((run_dir / "pool.json").read_text(encoding="utf-8")), -1, None
    else:
        raise RunDirError(f"--from-run {run_dir}: neither a checkpoint nor pool.json; has the run done a step yet?")
    pool = PromptPool.from_dict(pool_data)
    if not len(pool):
        raise RunDirError(f"--from-run {run_dir}: the prompt pool is empty")
    if step < 0:
        step = max(r.birth_step for r in pool.records)

    picks: dict[int, tuple[str, Any]] = {}  # prompt id -> (labels, record), in the order first picked
    chosen = [("newest", pool.newest), ("best", pool.best("exploit"))]
    if best_record is not None and best_record["prompt_id"] is not None:  # None: it was no prompt that scored
        heldout = next((r for r in pool.records if r.id == int(best_record["prompt_id"])), None)
        if heldout is None:
            raise RunDirError(f"--from-run {state_dir}: {ckpt.BEST_RECORD} names prompt "
                              f"#{best_record['prompt_id']}, which is not in that checkpoint's pool")
        chosen.append(("heldout-best", heldout))
    for label, record in chosen:
        labels = picks[record.id][0] + "+" + label if record.id in picks else label
        picks[record.id] = (labels, record)
    prompts = tuple(
        TrainedPrompt(label=label, prompt_id=r.id, principles=tuple(r.principles), mu=r.mu, sigma=r.sigma,
                      text=prompt_text(r.principles, cfg.selection.placement))
        for label, r in picks.values()
    )
    return TrainedRun(run_dir=run_dir, config=cfg, step=step, prompts=prompts, adapter_path=adapter_path,
                      adapter_hash=file_sha256(str(adapter_path)) if adapter_path else None,
                      checkpoint="last" if best_record is None else "best")


def policy_spec(run: TrainedRun, **spec_fields: Any) -> PolicySpec:
    """The `PolicySpec` of the run's model with its LoRA adapter weights (HF backend); `spec_fields` add
    placement (`device=...`, `dtype=...`)."""
    cfg = run.config
    if run.adapter_path is None:
        return PolicySpec(backend="hf", model=cfg.model, **spec_fields)
    return PolicySpec(backend="hf", model=cfg.model, adapter=str(run.adapter_path),
                      lora=LoraSettings(r=cfg.lora.rank, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout), **spec_fields)


def load_policy(run: TrainedRun, **spec_fields: Any) -> Policy:
    """The run's model with its LoRA adapter weights, as the trainer restores them (`build_policy`)."""
    spec = policy_spec(run, **spec_fields)
    try:
        return build_policy(spec)
    except AdapterMismatch as exc:
        raise RunDirError(f"--from-run {run.run_dir}: adapter weights do not fit {spec.model} with LoRA "
                          f"r={spec.lora.r if spec.lora else 0} ({exc})") from None


@dataclass(frozen=True)
class SuiteJob:
    """One agent to run on a suite: its leaderboard identity, the policy that plays it, and the metadata
    stored with its run (for a training run: the run dir, step, prompt id, label and rating)."""

    agent: Any  # espl.leaderboard.store.AgentSpec
    policy: PolicySpec
    extra: dict[str, Any]


def run_jobs(run: TrainedRun, params: Any, *, device: str = "cpu") -> list[SuiteJob]:
    """The run's newest and best prompts, each with the trained adapter, as suite jobs (`params`:
    SamplingParams of the evaluation). The jobs share one PolicySpec, so the model loads once."""
    from espl.leaderboard.runner import agent_spec

    trained = policy_spec(run, device=device)
    adapter = str(run.adapter_path) if run.adapter_path else None
    return [SuiteJob(
        agent_spec(run.config.model, params, system_prompt=p.text, backend="hf",
                   placement=run.config.selection.placement, adapter=adapter, adapter_hash=run.adapter_hash,
                   name=run.agent_name(p)),
        trained,
        {"from_run": {"run_dir": str(run.run_dir), "step": run.step, "prompt_id": p.prompt_id, "label": p.label,
                      "mu": p.mu, "sigma": p.sigma}},
    ) for p in run.prompts]


def own_suite(run: TrainedRun, episodes: int = 32) -> Any:
    """The suite of a run's own env on its test split (`espl eval --from-run` without `--suite`)."""
    from espl.leaderboard.suites import Suite, SuiteEntry

    return Suite(name=f"{run.run_dir.name}-test", source=str(run.run_dir), entries=(
        SuiteEntry(run.config.env, episodes=episodes, split="test", env_kwargs=dict(run.config.env_kwargs)),))
