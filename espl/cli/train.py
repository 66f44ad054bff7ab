"""`espl train`, `espl prompts RUN_DIR`, `espl plot RUN_DIR`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Literal, NoReturn, Optional, cast

import typer
from rich.console import Console

console = Console()


def fail(message: str) -> NoReturn:
    """An expected error: one line, exit code 2 (the code of every espl command for bad input)."""
    from rich.markup import escape

    Console(stderr=True).print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def _show_config() -> None:
    from rich.table import Table

    from espl.trainer.config import describe_fields

    table = Table(title="TrainConfig: --set KEY=VALUE, or [section] tables in a --config TOML file",
                  show_lines=False)
    for col in ("key", "type", "default", "meaning"):
        table.add_column(col, overflow="fold")
    for row in describe_fields():
        table.add_row(*row)
    Console(width=max(console.width, 160)).print(table)


def train(
    steps: int = typer.Option(10, "--steps", help="Train until this many steps are done in total."),
    out: Path = typer.Option(Path("runs/espl"), "--out", help="RUN_DIR: config, metrics, pool, TensorBoard, checkpoint."),
    mode: Optional[str] = typer.Option(None, "--mode", help="espl (default) | rl (fixed prompt) | evolve (no weight update)."),
    config: Optional[Path] = typer.Option(None, "--config", help="A TOML file of TrainConfig fields, one table per section."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="section.key=value override (repeatable), e.g. "
                                                                 "--set loss.name=cispo; --show-config lists the keys."),
    resume: bool = typer.Option(False, "--resume", metavar="", help="Continue RUN_DIR's run from its checkpoint, with its config "
                                                        "(--set changes steps, cadence, logging; recorded in the run)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Run seed."),
    model: Optional[str] = typer.Option(None, "--model", help="Policy model alias, hub id or path (default smollm2-135m)."),
    env: Optional[str] = typer.Option(None, "--env", help="Env id (default espl/Math-v0); multi-turn tool envs work too."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Where rollouts run: local (default) | ray (docs/scaling.md)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join (auto, HOST:PORT); default: a private one here."),
    ray_workers: Optional[int] = typer.Option(None, "--ray-workers", help="Rollout workers on Ray (default 2)."),
    show_config: bool = typer.Option(False, "--show-config", metavar="", help="List every config key with its default and meaning, then exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", metavar="", help="Show library progress bars and warnings too."),
) -> None:
    """Train with E-SPL (or its ablations) on embedded defaults: SmolLM2-135M, espl/Math-v0, CPU."""
    if show_config:
        _show_config()
        return
    from espl.cli.output import quiet_libraries, step_line

    quiet_libraries(verbose)
    from espl.trainer.checkpoint import CheckpointError
    from espl.trainer.config import ConfigError
    from espl.trainer.espl import TrainConfig, Trainer, resumed_config

    explicit: dict[str, Any] = {"mode": mode, "seed": seed, "model": model, "env": env, "scaleout.backend": backend,
                "scaleout.ray_address": ray_address, "scaleout.workers": ray_workers}
    try:
        if resume:
            cfg = resumed_config(out, config, set_ or (), **explicit)
        else:
            if (out / "checkpoint").exists() or (out / "checkpoint.prev").exists():
                fail(f"--out {out} already holds a run; pass --resume to continue it or choose another --out")
            cfg = TrainConfig.from_sources(config, set_ or (), **explicit)
    except (ConfigError, CheckpointError) as exc:
        fail(str(exc))

    console.print(f"[bold]espl train[/bold] mode={cfg.mode} env={cfg.env} model={cfg.model} "
                  f"B={cfg.data.batch_problems} M={cfg.selection.prompts_per_step} N={cfg.rollout.rollouts_per_pair}"
                  f"{' backend=ray' if cfg.scaleout.backend == 'ray' else ''} -> {out}", soft_wrap=True)
    try:
        trainer = Trainer(cfg, out, resume=resume)
    except (ConfigError, CheckpointError) as exc:
        fail(str(exc))
    if resume:
        source = trainer.resumed_from
        fallback = f" from {source} (the latest checkpoint is unusable)" if source and source.name != "checkpoint" else ""
        console.print(f"resumed at step {trainer.step_count}{fallback}", soft_wrap=True, markup=False)

    def on_step(m) -> None:
        console.print(step_line(m, steps), soft_wrap=True, markup=False, highlight=False)

    try:
        trainer.train(steps, on_step)
    except KeyboardInterrupt:
        console.print(f"interrupted in step {trainer.step_count + 1}/{steps}; the checkpoint holds "
                      f"{trainer.checkpointed_steps} finished steps. Continue with: espl train --out {out} --resume "
                      f"--steps {steps}", soft_wrap=True, markup=False)
        raise typer.Exit(130) from None
    console.print(f"done: {trainer.step_count} steps; `espl prompts {out}` shows the prompts, `espl plot {out}` draws curves, "
                  f"`espl report {out}` writes one HTML page of the run", soft_wrap=True)
    best = trainer.best_record
    if best is not None:
        console.print(f"best held-out checkpoint: after step {best['step'] + 1}, {best['prompt']} prompt mean reward "
                      f"{best['score']:.3f} -> {out / 'best'}", soft_wrap=True, markup=False)


def prompts(
    run_dir: Path = typer.Argument(..., help="A RUN_DIR written by `espl train`."),
    top: int = typer.Option(5, "--top", help="How many prompts to show."),
    by: str = typer.Option("exploit", "--by", help="Rank by exploit (μ−2σ), mu, or explore (μ+2σ)."),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print the ranked prompts as JSON."),
) -> None:
    """The top prompts of a run with their ratings, score history and lineage."""
    from espl.trainer.plots import RunFilesError, read_pool

    if by not in ("exploit", "mu", "explore"):
        fail(f"--by {by!r}: must be one of ['explore', 'exploit', 'mu']")
    try:
        pool = read_pool(run_dir)
    except RunFilesError as exc:
        fail(str(exc))
    ranked = pool.ranked(cast("Literal['mu', 'exploit', 'explore']", by), top)  # checked just above
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in ranked], indent=2, ensure_ascii=False))
        return
    for rank, r in enumerate(ranked, 1):
        chain = " <- ".join([f"#{r.id}"] + [f"#{a.id} ({a.op})" for a in pool.lineage(r)])
        scores = ", ".join(f"{s:.2f}" for _, s in r.scores[-8:]) or "-"
        console.rule(f"{rank}. prompt #{r.id}  μ {r.mu:.2f}  σ {r.sigma:.2f}  {r.op} at step {r.birth_step}")
        console.print(f"lineage: {chain}")
        console.print(f"scores (last 8): {scores}")
        if not r.principles:
            console.print("[dim](no principles: the empty root prompt)[/dim]")
        for i, p in enumerate(r.principles):
            console.print(f"  [G{i}] {p}", markup=False)


def plot(
    run_dir: Path = typer.Argument(..., help="A RUN_DIR written by `espl train`."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write PNGs (default RUN_DIR/plots)."),
    top: int = typer.Option(8, "--top", help="Rating curves for this many prompts (best by μ−2σ)."),
) -> None:
    """PNGs: reward per step, rating μ ± σ per prompt over steps, and the held-out curves (RUN_DIR/evals.jsonl)."""
    from espl.trainer.plots import RunFilesError, plot_run

    try:
        written = plot_run(run_dir, out, top)
    except RunFilesError as exc:
        fail(str(exc))
    for p in written:
        console.print(f"wrote {p}")
