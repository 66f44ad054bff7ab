"""The PNGs of a run dir (`espl plot RUN_DIR`), and the pool a run dir holds (`espl prompts RUN_DIR`).

- reward.png: mean training reward per step, and the newest prompt's held-out reward where evaluated;
- ratings.png: TrueSkill mu +- sigma over steps of the `top` prompts by mu - 2 sigma;
- heldout.png: held-out mean reward (and pass@k at the largest k) per evaluated prompt, from RUN_DIR/evals.jsonl,
  with the step of the best checkpoint.

Only data files are read (CSV, JSON); matplotlib (Agg) is imported when a plot is drawn.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from espl.trainer.pool import PromptPool


class RunFilesError(ValueError):
    """A run dir lacks a file the command needs, or holds one it cannot read; the message says which."""


def read_pool(run_dir: Path) -> PromptPool:
    """RUN_DIR/pool.json as a `PromptPool` (live and evicted prompts)."""
    path = run_dir / "pool.json"
    if not path.is_file():
        raise RunFilesError(f"no pool.json in {run_dir} (is it a RUN_DIR written by `espl train`?)")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("prompts"), list):
            raise ValueError("no 'prompts' list")
        return PromptPool.from_dict({"max_size": 100, "next_id": 0, **data})
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise RunFilesError(f"{path} is not a readable pool ({type(exc).__name__}: {exc}); a run's "
                            "checkpoint/state.json holds the pool of its last checkpoint too") from None


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise RunFilesError(f"no metrics.csv in {run_dir} (is it a RUN_DIR written by `espl train`?)")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _finish(fig: Any, ax: Any, path: Path, **legend: Any) -> Path:
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(**legend)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reward(run_dir: Path, rows: list[dict[str, str]], out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([int(r["step"]) for r in rows], [float(r["mean_reward"]) for r in rows], marker="o",
            label="train mean reward")
    test = [(int(r["step"]), float(r["test_reward"])) for r in rows if r.get("test_reward") not in (None, "", "nan")]
    test = [(s, v) for s, v in test if not math.isnan(v)]
    if test:
        ax.plot(*zip(*test), marker="s", label="test reward (newest prompt)")
    ax.set_xlabel("step"), ax.set_ylabel("reward"), ax.set_title(f"reward per step: {run_dir.name}")
    return _finish(fig, ax, out / "reward.png")


def plot_ratings(pool: PromptPool, out: Path, top: int) -> Path:
    import matplotlib.pyplot as plt

    records = [*pool.evicted, *pool.records]
    best = sorted(records, key=lambda r: r.exploit, reverse=True)[:top]
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in best:
        hist = r.rating_history or [(r.birth_step, r.mu, r.sigma)]
        xs = [h[0] + 1 for h in hist]  # ratings after step s are plotted at s + 1 (birth at -1 -> 0)
        mu = [h[1] for h in hist]
        sd = [h[2] for h in hist]
        line, = ax.plot(xs, mu, marker=".", label=f"#{r.id} ({r.op})")
        ax.fill_between(xs, [m - s for m, s in zip(mu, sd)], [m + s for m, s in zip(mu, sd)], alpha=0.15,
                        color=line.get_color())
    ax.set_xlabel("step"), ax.set_ylabel("TrueSkill μ ± σ"), ax.set_title("prompt ratings")
    return _finish(fig, ax, out / "ratings.png", fontsize=7, ncol=2)


def plot_heldout(run_dir: Path, out: Path) -> Path | None:
    """heldout.png from RUN_DIR/evals.jsonl; None when the run has no evaluation."""
    import matplotlib.pyplot as plt

    from espl.trainer.checkpoint import read_best
    from espl.trainer.heldout import read_evals

    evals = read_evals(run_dir)
    if not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label in dict.fromkeys(r["prompt"] for r in evals):
        rows_of = sorted((r for r in evals if r["prompt"] == label and r["mean"] is not None), key=lambda r: r["step"])
        if not rows_of:
            continue
        marker = {"newest": "o", "best": "s", "none": "^"}.get(label, "o")  # equal scores stay visible
        line, = ax.plot([r["step"] for r in rows_of], [r["mean"] for r in rows_of], marker=marker,
                        fillstyle="none", markersize=8, label=f"{label}: mean reward")
        k = max(int(k) for k in rows_of[-1]["pass_at_k"])
        if k > 1:
            ax.plot([r["step"] for r in rows_of], [r["pass_at_k"].get(str(k), math.nan) for r in rows_of],
                    linestyle="--", marker=".", color=line.get_color(), label=f"{label}: pass@{k}")
    best = read_best(run_dir)
    if best is not None:
        ax.axvline(best["step"], color="grey", linestyle=":", label=f"best checkpoint (step {best['step']})")
    ax.set_xlabel("step"), ax.set_ylabel("held-out reward / pass@k")
    ax.set_title(f"held-out evaluation: {evals[-1]['tasks']} test tasks x {evals[-1]['samples']} samples")
    return _finish(fig, ax, out / "heldout.png", fontsize=7)


def plot_run(run_dir: str | Path, out: str | Path | None = None, top: int = 8) -> list[Path]:
    """Write the run's PNGs into `out` (default RUN_DIR/plots); returns their paths (RunFilesError when
    metrics.csv or pool.json is missing or unreadable, before anything is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    run_dir = Path(run_dir)
    rows, pool = read_metrics(run_dir), read_pool(run_dir)
    target = Path(out) if out is not None else run_dir / "plots"
    target.mkdir(parents=True, exist_ok=True)
    written = [plot_reward(run_dir, rows, target), plot_ratings(pool, target, top)]
    heldout = plot_heldout(run_dir, target)
    return written + ([heldout] if heldout is not None else [])
