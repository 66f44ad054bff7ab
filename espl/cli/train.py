"""`espl train`, `espl prompts RUN_DIR`, `espl plot RUN_DIR`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

console = Console()


def train(
    steps: int = typer.Option(10, "--steps", help="Train until this many steps are done in total."),
    out: Path = typer.Option(Path("runs/espl"), "--out", help="RUN_DIR: config, metrics, pool, TensorBoard, checkpoint."),
    mode: Optional[str] = typer.Option(None, "--mode", help="espl (default) | rl (fixed prompt) | evolve (no weight update)."),
    config: Optional[Path] = typer.Option(None, "--config", help="A TOML file of TrainConfig fields."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="key=value override (repeatable), e.g. --set loss=cispo."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR's checkpoint (exactly)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Run seed."),
    model: Optional[str] = typer.Option(None, "--model", help="Policy model alias, hub id or path (default smollm2-135m)."),
    env: Optional[str] = typer.Option(None, "--env", help="Env id (default espl/Math-v0); multi-turn tool envs work too."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Where rollouts run: local (default) | ray (docs/scaling.md)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join (auto, HOST:PORT); default: a private one here."),
    ray_workers: Optional[int] = typer.Option(None, "--ray-workers", help="Rollout workers on Ray (default 2)."),
) -> None:
    """Train with E-SPL (or its ablations) on embedded defaults: SmolLM2-135M, espl/Math-v0, CPU."""
    import logging

    from espl.trainer.espl import TrainConfig, Trainer

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if resume and config is None and not set_ and (out / "config.toml").is_file():
        config = out / "config.toml"  # a resumed run keeps its own configuration unless told otherwise
    try:
        cfg = TrainConfig.from_sources(config, set_ or (), mode=mode, seed=seed, model=model, env=env, backend=backend,
                                       ray_address=ray_address, ray_workers=ray_workers)
    except (ValueError, TypeError, OSError) as exc:
        console.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2)
    if (out / "checkpoint").exists() and not resume:
        console.print(f"[red]{out} already holds a run[/red]; pass --resume to continue it or choose another --out")
        raise typer.Exit(2)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console.print(f"[bold]espl train[/bold] mode={cfg.mode} env={cfg.env} model={cfg.model} "
                  f"B={cfg.batch_problems} M={cfg.prompts_per_step} N={cfg.rollouts_per_pair} -> {out}")
    rollout_fn, close = None, lambda: None
    policy = None
    if cfg.backend == "ray":
        from espl.agents.distributed import RayRollout, WorkerPolicy
        from espl.trainer.espl import build_policy

        policy = build_policy(cfg)  # trained here; each worker builds its own copy and gets the adapter each step
        rr = RayRollout(WorkerPolicy.from_policy(policy, device="cuda" if cfg.ray_gpus_per_worker > 0 else "cpu"),
                        address=cfg.ray_address or None, num_workers=cfg.ray_workers,
                        cpus_per_worker=cfg.ray_cpus_per_worker, gpus_per_worker=cfg.ray_gpus_per_worker)
        rollout_fn, close = rr.rollout, rr.close
        console.print(f"rollouts on Ray: {cfg.ray_workers} workers ({cfg.ray_address or 'a private instance on 127.0.0.1'})")
    trainer = Trainer(cfg, out, resume=resume, policy=policy, rollout_fn=rollout_fn)
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("steps", total=steps, completed=trainer.step_count)

        def on_step(m) -> None:
            progress.console.print(
                f"step {m.step:4d}  reward {m.mean_reward:.3f}  pool {m.pool_size:3d}  best μ {m.best_mu:.2f}±{m.best_sigma:.2f}"
                f"  skip {m.skip_ratio:.2f}  mutation {m.mutation}  time {m.time_total:.1f}s "
                f"(rollout {m.time_rollout:.1f} / update {m.time_update:.1f} / mutation {m.time_mutation:.1f})"
            )
            progress.update(task, completed=m.step + 1)

        try:
            trainer.train(steps, on_step)
        finally:
            close()
    console.print(f"done: {trainer.step_count} steps; `espl prompts {out}` shows the prompts, `espl plot {out}` draws curves")


def _load_pool(run_dir: Path) -> dict:
    path = run_dir / "pool.json"
    if not path.is_file():
        console.print(f"[red]no pool.json in {run_dir}[/red] (is it a RUN_DIR written by `espl train`?)")
        raise typer.Exit(2)
    return json.loads(path.read_text(encoding="utf-8"))


def prompts(
    run_dir: Path = typer.Argument(..., help="A RUN_DIR written by `espl train`."),
    top: int = typer.Option(5, "--top", help="How many prompts to show."),
    by: str = typer.Option("exploit", "--by", help="Rank by exploit (μ−2σ), mu, or explore (μ+2σ)."),
    as_json: bool = typer.Option(False, "--json", help="Print the ranked prompts as JSON."),
) -> None:
    """The top prompts of a run with their ratings, score history and lineage."""
    keys = {"exploit": lambda r: r["mu"] - 2 * r["sigma"], "mu": lambda r: r["mu"], "explore": lambda r: r["mu"] + 2 * r["sigma"]}
    if by not in keys:
        console.print(f"[red]--by: must be one of {sorted(keys)}, got {by!r}[/red]")
        raise typer.Exit(2)
    data = _load_pool(run_dir)
    everyone = {r["id"]: r for r in data.get("evicted", []) + data["prompts"]}
    ranked = sorted(data["prompts"], key=keys[by], reverse=True)[:top]
    if as_json:
        typer.echo(json.dumps(ranked, indent=2, ensure_ascii=False))
        return
    for rank, r in enumerate(ranked, 1):
        lineage, cur = [], r
        while cur["parents"]:
            parent = everyone.get(cur["parents"][0])
            if parent is None:
                break
            lineage.append(f"#{parent['id']} ({parent['op']})")
            cur = parent
        scores = ", ".join(f"{s:.2f}" for _, s in r["scores"][-8:]) or "-"
        console.rule(f"{rank}. prompt #{r['id']}  μ {r['mu']:.2f}  σ {r['sigma']:.2f}  {r['op']} at step {r['birth_step']}")
        chain = " <- ".join(["#" + str(r["id"])] + lineage)
        console.print(f"lineage: {chain}")
        console.print(f"scores (last 8): {scores}")
        if not r["principles"]:
            console.print("[dim](no principles: the empty root prompt)[/dim]")
        for i, p in enumerate(r["principles"]):
            console.print(f"  [G{i}] {p}", markup=False)


def plot(
    run_dir: Path = typer.Argument(..., help="A RUN_DIR written by `espl train`."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write PNGs (default RUN_DIR/plots)."),
    top: int = typer.Option(8, "--top", help="Rating curves for this many prompts (best by μ−2σ)."),
) -> None:
    """PNGs: reward per step and rating μ ± σ per prompt over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_path = run_dir / "metrics.csv"
    if not metrics_path.is_file():
        console.print(f"[red]no metrics.csv in {run_dir}[/red]")
        raise typer.Exit(2)
    with open(metrics_path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = out or run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    steps = [int(r["step"]) for r in rows]
    written = []

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [float(r["mean_reward"]) for r in rows], marker="o", label="train mean reward")
    test = [(int(r["step"]), float(r["test_reward"])) for r in rows if r.get("test_reward") not in (None, "", "nan")]
    test = [(s, v) for s, v in test if not math.isnan(v)]
    if test:
        ax.plot(*zip(*test), marker="s", label="test reward (newest prompt)")
    ax.set_xlabel("step"), ax.set_ylabel("reward"), ax.set_title(f"reward per step: {run_dir.name}")
    ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    fig.savefig(out / "reward.png", dpi=110)
    plt.close(fig)
    written.append(out / "reward.png")

    data = _load_pool(run_dir)
    records = data.get("evicted", []) + data["prompts"]
    best = sorted(records, key=lambda r: r["mu"] - 2 * r["sigma"], reverse=True)[:top]
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in best:
        hist = r.get("rating_history") or [[r["birth_step"], r["mu"], r["sigma"]]]
        xs = [h[0] + 1 for h in hist]  # ratings after step s are plotted at s + 1 (birth at -1 -> 0)
        mu = [h[1] for h in hist]
        sd = [h[2] for h in hist]
        line, = ax.plot(xs, mu, marker=".", label=f"#{r['id']} ({r['op']})")
        ax.fill_between(xs, [m - s for m, s in zip(mu, sd)], [m + s for m, s in zip(mu, sd)], alpha=0.15, color=line.get_color())
    ax.set_xlabel("step"), ax.set_ylabel("TrueSkill μ ± σ"), ax.set_title("prompt ratings")
    ax.grid(alpha=0.3), ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "ratings.png", dpi=110)
    plt.close(fig)
    written.append(out / "ratings.png")
    for p in written:
        console.print(f"wrote {p}")
