"""Does tool RL learn? Held-out accuracy of one policy before and after `espl train` (RL only) on a tool env,
paired on the same items and sampling seeds, with the exact McNemar p-value and a 95 % interval.

    python benchmarks/tool_rl.py --out runs/tool_rl                       # BFCL live_simple+multiple+live_multiple
    python benchmarks/tool_rl.py --steps 2 --test-items 16 --out /tmp/t   # a smoke run
    python benchmarks/tool_rl.py --out runs/short --steps 4 --test-items 220 --env-kwargs '{"category":
        ["live_simple", "multiple", "simple_python"]}'   # the shorter prompts of docs/tools.md (+ its --set's)
    python benchmarks/tool_rl.py --env espl/ToolMath-v0 --env-kwargs '{}' --out runs/toolmath_rl

One process: the trainer (`espl.trainer.espl.Trainer`, the same one `espl train` builds, from the same
`TrainConfig` with `--set` overrides) evaluates its policy on the first `--test-items` tasks of the env's
test split (`espl.agents.evaluate.evaluate`, greedy by default), trains `--steps` steps on the train split,
and evaluates again with the trained adapter on the same tasks with the same sampling seeds. Writes
OUT/result.json (settings, per-item rewards before and after, the paired statistics of agents/stats.py,
per-step training metrics of every trained step, from OUT/run/metrics.csv) and prints a summary. The trainer's run dir is OUT/run (checkpoints, metrics, so
an interrupted run resumes with `--resume`: the before-evaluation is kept in OUT/before.json, with the
settings it was made under; a before.json copied into a new OUT is reused by `--resume` when they match).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

BFCL_MID = ["live_simple", "multiple", "live_multiple"]  # categories where the 0.5B is right only sometimes

DEFAULTS = [  # the recipe (each overridable with --set); sizes for this 2-core CPU
    "mode=rl", "model=qwen2.5-coder-0.5b", "data.batch_problems=8", "selection.prompts_per_step=1",
    "rollout.rollouts_per_pair=4", "rollout.max_new_tokens=128", "optimizer.learning_rate=1e-4",
    "optimizer.micro_batch=4", "data.train_problems=512", "output.checkpoint_every=1",
    "output.trajectory_samples=8", "evaluation.every=0",  # this script evaluates before and after itself
]


def evaluate_items(trainer: Any, n: int, temperature: float, max_new_tokens: int, seed: int) -> dict[str, Any]:
    """Per-task rewards (key: task index, value: reward, plus the item id where the env records one)."""
    from espl.agents.evaluate import evaluate
    from espl.types import SamplingParams

    cfg = trainer.cfg
    params = SamplingParams(temperature=temperature, top_p=1.0 if temperature == 0 else cfg.rollout.top_p,
                            max_new_tokens=max_new_tokens, seed=seed,
                            tool_grammar=cfg.rollout.tool_grammar)  # evaluated as it is trained
    t0 = time.perf_counter()
    result = evaluate(cfg.env, trainer.policy, episodes=n, params=params, seed=0, split="test",
                      env_kwargs=dict(cfg.env_kwargs), max_batch=cfg.max_batch)
    items = {str(t.seed): {"reward": t.reward, "reason": t.reason, "id": (t.info or {}).get("bfcl_id")}
             for t in result.trajectories}
    return {"mean": result.mean_reward, "ci95": result.ci95, "n": result.episodes, "reasons": result.reasons,
            "seconds": time.perf_counter() - t0, "items": items, "error": result.error}


def trained_steps(run_dir: Path) -> list[dict[str, Any]]:
    """Every trained step's metrics from the run's metrics.csv, the steps of an earlier process that this one
    resumed from included (the step loop below sees only its own)."""
    from espl.trainer.plots import RunFilesError, read_metrics

    try:
        rows = read_metrics(run_dir)
    except RunFilesError:  # no step trained yet (--steps 0)
        return []
    keep = ("mean_reward", "skip_ratio", "loss", "time_rollout", "time_update", "time_total")
    return [{"step": int(row["step"]), **{k: float(row[k]) for k in keep if row.get(k)}} for row in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--env", default="espl/BFCL-v0")
    ap.add_argument("--env-kwargs", default=json.dumps({"category": BFCL_MID}), help="JSON object")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--test-items", type=int, default=200)
    ap.add_argument("--eval-temperature", type=float, default=0.0)
    ap.add_argument("--eval-max-new-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="TrainConfig key=value")
    ap.add_argument("--resume", action="store_true", help="continue OUT/run from its last checkpoint")
    args = ap.parse_args()

    from espl.agents.stats import paired
    from espl.trainer import checkpoint as ckpt
    from espl.trainer.config import TrainConfig
    from espl.trainer.espl import Trainer, resumed_config

    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.out / "run"
    overrides = [*DEFAULTS, f"env={args.env}", f"seed={args.seed}", *args.overrides]
    cfg = TrainConfig.from_sources(None, overrides, env_kwargs=json.loads(args.env_kwargs))
    resume = args.resume and ckpt.exists(run_dir)  # killed before the first step: start the training afresh
    if resume:
        cfg = resumed_config(run_dir)
    trainer = Trainer(cfg, run_dir, resume=resume)
    before_file = args.out / "before.json"
    eval_args = (args.test_items, args.eval_temperature, args.eval_max_new_tokens, args.seed)
    # what the before-evaluation depends on: a kept one (--resume, or one copied into a new OUT) must match
    settings = {"env": cfg.env, "env_kwargs": dict(cfg.env_kwargs), "model": cfg.model, "items": args.test_items,
                "temperature": args.eval_temperature, "max_new_tokens": args.eval_max_new_tokens, "seed": args.seed,
                "tool_grammar": cfg.rollout.tool_grammar}
    if args.resume and before_file.is_file():
        before = json.loads(before_file.read_text())
        kept = before.get("settings")
        if kept != settings:
            raise SystemExit(f"{before_file}: its settings {kept} are not this run's {settings}; "
                             "evaluate afresh with another --out")
    else:
        if trainer.step_count:
            raise SystemExit(f"{run_dir} has trained steps: the 'before' evaluation would not be of the base "
                             "policy; use --resume or another --out")
        before = {**evaluate_items(trainer, *eval_args), "settings": settings}
        before_file.write_text(json.dumps(before, indent=1))
    print(f"before: {before['mean']:.3f} +- {before['ci95']:.3f} on {before['n']} items ({before['seconds']:.0f} s)",
          flush=True)
    while trainer.step_count < args.steps:
        m = trainer.step()
        print(f"step {m.step}: reward {m.mean_reward:.3f} skip {m.skip_ratio:.2f} loss {m.loss:.3f} "
              f"({m.time_total:.0f} s)", flush=True)
    after = evaluate_items(trainer, *eval_args)
    trainer.close()
    stats = paired({k: v["reward"] for k, v in before["items"].items()},
                   {k: v["reward"] for k, v in after["items"].items()})
    result = {"env": cfg.env, "env_kwargs": cfg.env_kwargs, "model": cfg.model, "steps": args.steps,
              "overrides": overrides, "eval": {"items": args.test_items, "temperature": args.eval_temperature,
                                               "max_new_tokens": args.eval_max_new_tokens, "seed": args.seed},
              "before": before, "after": after, "paired": stats.to_dict(), "train_steps": trained_steps(run_dir)}
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    lo, hi = stats.ci95
    print(f"after: {after['mean']:.3f} on {after['n']} items; paired n={stats.n}: {stats.rate_a:.3f} -> "
          f"{stats.rate_b:.3f} (diff {stats.diff:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}]), gained {stats.only_b}, "
          f"lost {stats.only_a}, exact McNemar p = {stats.p_value:.4f}")


if __name__ == "__main__":
    main()
