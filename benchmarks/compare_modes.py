"""E-SPL vs RL only vs evolution only (the paper's ablation) on one sample budget, over seeds, with
held-out accuracy and 95 % confidence intervals; plus the prompt-sensitivity check (best evolved prompt vs
no prompt on the same weights).

    python benchmarks/compare_modes.py --steps 4 --seeds 0 1 2 --test-problems 64 --out runs/compare
    python benchmarks/compare_modes.py --model smollm2-135m --steps 2 --seeds 0 --test-problems 16   # smoke

Every mode runs the same B x M x N episodes per step (`rl` repeats its one fixed prompt M times), the same
steps and seeds; the mutator is the frozen base model. After training each run is evaluated on the first
`--test-problems` tasks of the env's test split, `--samples` samples each, with its final weights and:
  - deploy prompt: the best-rated prompt by μ − 2σ (espl, evolve) or the fixed prompt (rl);
  - no prompt (all modes), so "best evolved vs none" is measured on the same weights.
Accuracy CIs: Wilson 95 % over the run's problem x sample outcomes; across seeds: mean ± t(0.975, n−1) s/√n.
Writes RUN_DIR/<mode>-s<seed>/ per run, `results.json`, `table.md` and `modes.png` under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def seed_ci(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (float("nan"), float("nan"))
    m, s = statistics.mean(values), statistics.stdev(values)
    half = T975.get(len(values) - 1, 1.96) * s / math.sqrt(len(values))
    return m - half, m + half


def evaluate(trainer, principles, problems: int, samples: int) -> list[float]:
    """Per-episode success (reason == "correct") on the test split, current weights."""
    from espl.trainer.espl import derive_seed
    from espl.types import SamplingParams

    cfg = trainer.cfg
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                            seed=derive_seed("eval", cfg.seed))
    episodes = [trainer._episode(i, principles, derive_seed("eval-episode", i, s)) for i in range(problems) for s in range(samples)]
    return [1.0 if t.reason == "correct" else 0.0 for t in trainer._rollout(episodes, params, split="test")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--env", default="espl/Math-v0")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--modes", nargs="+", default=["espl", "rl", "evolve"])
    ap.add_argument("--test-problems", type=int, default=64)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="TrainConfig key=value")
    ap.add_argument("--out", type=Path, default=Path("runs/compare_modes"))
    args = ap.parse_args()

    from espl.trainer.espl import TrainConfig, Trainer

    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    done = {(r["mode"], r["seed"]) for r in results}
    for seed in args.seeds:
        for mode in args.modes:
            if (mode, seed) in done:
                continue
            cfg = TrainConfig.from_sources(None, args.overrides, mode=mode, seed=seed, model=args.model, env=args.env)
            t0 = time.perf_counter()
            trainer = Trainer(cfg, args.out / f"{mode}-s{seed}", resume=True)
            trainer.train(args.steps)
            deploy = trainer.pool.best("exploit") if mode != "rl" else trainer.pool.records[0]
            with_prompt = evaluate(trainer, deploy.principles, args.test_problems, args.samples)
            no_prompt = with_prompt if not deploy.principles else evaluate(trainer, (), args.test_problems, args.samples)
            row = {
                "mode": mode, "seed": seed, "steps": args.steps, "model": args.model, "env": args.env,
                "episodes_per_step": cfg.batch_problems * cfg.prompts_per_step * cfg.rollouts_per_pair,
                "deploy_prompt_id": deploy.id, "deploy_principles": list(deploy.principles),
                "acc": statistics.mean(with_prompt), "acc_ci": wilson(sum(with_prompt), len(with_prompt)),
                "acc_no_prompt": statistics.mean(no_prompt), "acc_no_prompt_ci": wilson(sum(no_prompt), len(no_prompt)),
                "paired_better": sum(a > b for a, b in zip(with_prompt, no_prompt)),
                "paired_worse": sum(a < b for a, b in zip(with_prompt, no_prompt)),
                "n_eval": len(with_prompt), "train_reward": [m.mean_reward for m in trainer.metrics],
                "pool_size": len(trainer.pool), "seconds": time.perf_counter() - t0,
            }
            results.append(row)
            results_path.write_text(json.dumps(results, indent=1))
            print(f"{mode:6s} seed {seed}: held-out acc {row['acc']:.3f} (no prompt {row['acc_no_prompt']:.3f}) "
                  f"deploy #{deploy.id} {list(deploy.principles)[:3]}  {row['seconds']:.0f}s", flush=True)

    lines = ["| mode | seeds | held-out acc (mean) | 95% CI over seeds | per-seed acc [Wilson 95%] | no prompt, same weights | prompt better/worse (paired) |",
             "|---|---|---|---|---|---|---|"]
    summary = {}
    for mode in args.modes:
        rows = [r for r in results if r["mode"] == mode]
        if not rows:
            continue
        accs = [r["acc"] for r in rows]
        lo, hi = seed_ci(accs)
        summary[mode] = (statistics.mean(accs), lo, hi, [r["acc_ci"] for r in rows])
        per_seed = "; ".join(f"s{r['seed']} {r['acc']:.3f} [{r['acc_ci'][0]:.2f}, {r['acc_ci'][1]:.2f}]" for r in rows)
        nop = statistics.mean(r["acc_no_prompt"] for r in rows)
        better, worse = sum(r["paired_better"] for r in rows), sum(r["paired_worse"] for r in rows)
        lines.append(f"| {mode} | {len(rows)} | {statistics.mean(accs):.3f} | [{lo:.3f}, {hi:.3f}] | {per_seed} | {nop:.3f} | {better}/{worse} |")
    table = "\n".join(lines)
    (args.out / "table.md").write_text(table + "\n")
    print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for x, (mode, (mean, lo, hi, _)) in enumerate(summary.items()):
        err = [[mean - lo], [hi - mean]] if not math.isnan(lo) else None
        ax.bar(x, mean, yerr=err, capsize=6, color=["#4c72b0", "#dd8452", "#55a868"][x % 3])
        for r in [r for r in results if r["mode"] == mode]:
            ax.plot(x, r["acc"], "k.", alpha=0.7)
    ax.set_xticks(range(len(summary)), list(summary))
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"{args.model} on {args.env}: {args.steps} steps, seeds {args.seeds}")
    fig.tight_layout()
    fig.savefig(args.out / "modes.png", dpi=110)
    print(f"wrote {args.out / 'table.md'}, {args.out / 'modes.png'}, {results_path}")


if __name__ == "__main__":
    main()
