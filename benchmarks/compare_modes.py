"""E-SPL vs RL only vs evolution only (the paper's ablation) on one sample budget, over seeds, with
held-out accuracy and 95 % confidence intervals; plus the prompt-sensitivity check (best evolved prompt vs
no prompt on the same weights).

    python benchmarks/compare_modes.py --steps 4 --seeds 0 1 2 --test-problems 64 --out runs/compare
    python benchmarks/compare_modes.py --model smollm2-135m --steps 2 --seeds 0 --test-problems 16   # smoke

Every mode runs the same B x M x N episodes per step (`rl` repeats its one fixed prompt M times), the same
steps and seeds; the mutator is the frozen base model. After training each run is evaluated on the first
`--test-problems` tasks of the env's test split, `--samples` samples each, with its final weights, by the
trainer's own held-out evaluation (trainer/heldout.py: the one after the last step, the same sampling seeds
for every run and prompt, so outcomes pair task by task), with:
  - deploy prompt: the best-rated prompt by μ − 2σ (espl, evolve) or the fixed prompt (rl);
  - the newest prompt;
  - no prompt (all modes), so "best evolved vs none" is measured on the same weights.
Accuracy CIs: Wilson 95 % over the run's problem x sample outcomes; across seeds: mean ± t(0.975, n−1) s/√n.
Writes RUN_DIR/<mode>-s<seed>/ per run, `results.json`, `table.md` and `modes.png` under --out.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import statistics
import time
from pathlib import Path

from espl.agents.stats import mcnemar_exact, wilson  # the one home of the statistics

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def seed_ci(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (float("nan"), float("nan"))
    m, s = statistics.mean(values), statistics.stdev(values)
    half = T975.get(len(values) - 1, 1.96) * s / math.sqrt(len(values))
    return m - half, m + half


def run_one(args: argparse.Namespace, mode: str, seed: int) -> dict:
    """Train one (mode, seed) run, evaluate its best-rated prompt, its newest prompt and no prompt on its final
    weights (each distinct prompt once: `Trainer.held_out`); the result row."""
    from espl.trainer import checkpoint as ckpt
    from espl.trainer.espl import TrainConfig, Trainer

    # the held-out set of this benchmark is the trainer's: evaluated after the last step (and every
    # evaluation.every steps, as any run, unless --set changes it), all three prompts in every mode
    held_out = [f"evaluation.problems={args.test_problems}", f"evaluation.samples={args.samples}",
                'evaluation.prompts=["newest", "best", "none"]']
    cfg = TrainConfig.from_sources(None, held_out + list(args.overrides), mode=mode, seed=seed, model=args.model,
                                   env=args.env)
    t0 = time.perf_counter()
    run_dir = args.out / f"{mode}-s{seed}"
    trainer = Trainer(cfg, run_dir, resume=ckpt.exists(run_dir))
    trainer.train(args.steps)  # until args.steps steps are done in total (a resumed run continues)
    t_train = time.perf_counter() - t0
    results = {r.prompt: r for r in trainer.held_out()}  # the last step's evaluation, else a fresh one
    deploy, newest = results["best"], results["newest"]  # in mode rl both are the fixed prompt (pool.records[0])
    best, newest_rec = trainer.pool.get(deploy.prompt_id), trainer.pool.get(newest.prompt_id)
    # per-episode success (reward >= 1: a correct answer on the first attempt in espl/Math-v0), task-major
    with_prompt, newest_out, no_prompt = deploy.successes, newest.successes, results["none"].successes
    return {
        "mode": mode, "seed": seed, "steps": args.steps, "model": args.model, "env": args.env,
        "device": cfg.device, "dtype": cfg.dtype,
        "episodes_per_step": cfg.data.batch_problems * cfg.selection.prompts_per_step * cfg.rollout.rollouts_per_pair,
        "deploy_prompt_id": best.id, "deploy_principles": list(best.principles),
        "deploy_mu": best.mu, "deploy_sigma": best.sigma,
        "newest_prompt_id": newest_rec.id, "newest_principles": list(newest_rec.principles),
        "acc": statistics.mean(with_prompt), "acc_ci": wilson(sum(with_prompt), len(with_prompt)),
        "acc_newest": statistics.mean(newest_out), "acc_newest_ci": wilson(sum(newest_out), len(newest_out)),
        "acc_no_prompt": statistics.mean(no_prompt), "acc_no_prompt_ci": wilson(sum(no_prompt), len(no_prompt)),
        "paired_better": sum(a > b for a, b in zip(with_prompt, no_prompt)),
        "paired_worse": sum(a < b for a, b in zip(with_prompt, no_prompt)),
        "n_eval": len(with_prompt), "train_reward": [m.mean_reward for m in trainer.metrics],
        "pool_size": len(trainer.pool), "seconds_train": t_train, "seconds": time.perf_counter() - t0,
        "outcomes": with_prompt, "outcomes_newest": newest_out, "outcomes_no_prompt": no_prompt,
    }


def merge_row(results_path: Path, row: dict) -> list[dict]:
    """Write `row` into results.json, replacing any row of its (mode, seed), and return the rows on disk.

    Merge on write: other processes may share the report dir (one per seed or mode), so the file is re-read
    under an exclusive lock and replaced atomically; no process's row is lost to another's older list."""
    with open(results_path.with_name(results_path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        on_disk = json.loads(results_path.read_text()) if results_path.is_file() else []
        merged = [r for r in on_disk if (r["mode"], r["seed"]) != (row["mode"], row["seed"])] + [row]
        tmp = results_path.with_name(f"{results_path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(merged, indent=1))
        os.replace(tmp, results_path)
    return merged


def first_tasks(row: dict, tasks: int, samples: int) -> dict:
    """The row scored on its first `tasks` held-out tasks only (outcomes are task-major, `samples` per task)."""
    keep = tasks * samples
    if keep > len(row["outcomes"]):
        raise SystemExit(f"--tasks {tasks}: {row['mode']} seed {row['seed']} has only {len(row['outcomes']) // samples}")
    out = {**row, "outcomes": row["outcomes"][:keep], "outcomes_newest": row["outcomes_newest"][:keep],
           "outcomes_no_prompt": row["outcomes_no_prompt"][:keep], "n_eval": keep, "scored_tasks": tasks}
    for key, outcomes in (("acc", out["outcomes"]), ("acc_newest", out["outcomes_newest"]),
                          ("acc_no_prompt", out["outcomes_no_prompt"])):
        out[key], out[key + "_ci"] = statistics.mean(outcomes), wilson(sum(outcomes), len(outcomes))
    out["paired_better"] = sum(a > b for a, b in zip(out["outcomes"], out["outcomes_no_prompt"]))
    out["paired_worse"] = sum(a < b for a, b in zip(out["outcomes"], out["outcomes_no_prompt"]))
    return out


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
    ap.add_argument("--out", type=Path, default=Path("runs/compare_modes"), help="run dirs (checkpoints) and reports")
    ap.add_argument("--report-dir", type=Path, default=None, help="results.json, table.md, modes.png (default: --out)")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process (one GPU "
                    "is shared; on a CPU keep 1)")
    ap.add_argument("--report-only", action="store_true", help="only write table.md and modes.png from results.json")
    ap.add_argument("--tasks", type=int, default=None, help="--report-only: score only the first N held-out tasks "
                    "(a results.json from before the distinct-task check, with more tasks than the test split has)")
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    report = args.report_dir or args.out
    args.out.mkdir(parents=True, exist_ok=True)
    report.mkdir(parents=True, exist_ok=True)

    if args.worker:  # one run in its own process (--jobs > 1): its row goes to RUN_DIR/result.json
        mode, seed = args.worker[0], int(args.worker[1])
        row = run_one(args, mode, seed)
        (args.out / f"{mode}-s{seed}" / "result.json").write_text(json.dumps(row))
        return

    results_path = report / "results.json"
    if args.tasks is not None:  # reads --out's results.json, writes the rescored rows to --report-dir's
        if not args.report_only or report == args.out:
            raise SystemExit("--tasks: with --report-only and another --report-dir (the rows are rescored, not "
                             "overwritten); a new run is checked against the split's size")
        results = [first_tasks(r, args.tasks, args.samples) for r in json.loads((args.out / "results.json").read_text())]
        results_path.write_text(json.dumps(results, indent=1))
    else:
        results = json.loads(results_path.read_text()) if results_path.is_file() else []
    done = {(r["mode"], r["seed"]) for r in results}
    todo = [] if args.report_only else [(mode, seed) for seed in args.seeds for mode in args.modes if (mode, seed) not in done]

    def record(row: dict) -> None:
        results[:] = merge_row(results_path, row)
        print(f"{row['mode']:6s} seed {row['seed']}: held-out acc {row['acc']:.3f} (no prompt {row['acc_no_prompt']:.3f}) "
              f"deploy #{row['deploy_prompt_id']} {row['deploy_principles'][:3]}  train {row['seconds_train']:.0f}s "
              f"total {row['seconds']:.0f}s", flush=True)

    if args.jobs <= 1:
        for mode, seed in todo:
            record(run_one(args, mode, seed))
    elif todo:
        import subprocess
        import sys
        from concurrent.futures import ThreadPoolExecutor, as_completed

        from espl.agents.models import load_model

        load_model(args.model)  # builds the float-weight cache once, before the workers all need it
        argv = [sys.executable, __file__, "--model", args.model, "--env", args.env, "--steps", str(args.steps),
                "--test-problems", str(args.test_problems), "--samples", str(args.samples), "--out", str(args.out)]
        for o in args.overrides:
            argv += ["--set", o]
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // args.jobs)))

        def launch(mode: str, seed: int) -> tuple[Path, int]:
            run_dir = args.out / f"{mode}-s{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / "worker.log", "w") as log_file:
                proc = subprocess.run(argv + ["--worker", mode, str(seed)], stdout=log_file, stderr=subprocess.STDOUT,
                                      env=env)
            return run_dir, proc.returncode

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each thread waits on one worker process
            for done_run in as_completed([pool.submit(launch, mode, seed) for mode, seed in todo]):
                run_dir, returncode = done_run.result()
                if returncode == 0 and (run_dir / "result.json").is_file():
                    record(json.loads((run_dir / "result.json").read_text()))
                else:
                    tail = (run_dir / "worker.log").read_text()[-3000:]
                    print(f"{run_dir.name}: worker failed (exit {returncode})\n{tail}", flush=True)

    lines = ["| mode | seeds | held-out acc, best prompt (μ−2σ) | 95% CI over seeds | per-seed acc [Wilson 95%] | newest prompt | no prompt, same weights | best prompt better/worse than none (paired) | exact McNemar p |",
             "|---|---|---|---|---|---|---|---|---|"]
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
        newest = statistics.mean(r.get("acc_newest", r["acc"]) for r in rows)
        lines.append(f"| {mode} | {len(rows)} | {statistics.mean(accs):.3f} | [{lo:.3f}, {hi:.3f}] | {per_seed} | {newest:.3f} | {nop:.3f} | {better}/{worse} | {mcnemar_exact(better, worse):.3g} |")
    lines += ["", "| pair | seeds | mean difference | 95% CI over seeds | problems won/lost (paired, pooled) | exact McNemar p |", "|---|---|---|---|---|---|"]
    by_key = {(r["mode"], r["seed"]): r for r in results}
    for i, a in enumerate(args.modes):
        for b in args.modes[i + 1:]:
            seeds = [sd for sd in args.seeds if (a, sd) in by_key and (b, sd) in by_key]
            if not seeds:
                continue
            diffs = [by_key[(a, sd)]["acc"] - by_key[(b, sd)]["acc"] for sd in seeds]
            won = sum(x > y for sd in seeds for x, y in zip(by_key[(a, sd)]["outcomes"], by_key[(b, sd)]["outcomes"]))
            lost = sum(x < y for sd in seeds for x, y in zip(by_key[(a, sd)]["outcomes"], by_key[(b, sd)]["outcomes"]))
            lo, hi = seed_ci(diffs)
            lines.append(f"| {a} − {b} | {len(seeds)} | {statistics.mean(diffs):+.3f} | [{lo:+.3f}, {hi:+.3f}] | {won}/{lost} | {mcnemar_exact(won, lost):.3g} |")
    table = "\n".join(lines)
    (report / "table.md").write_text(table + "\n")
    print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colors = ["#4c72b0", "#dd8452", "#55a868"]
    for x, (mode, (mean, lo, hi, _)) in enumerate(summary.items()):
        rows = [r for r in results if r["mode"] == mode]
        err = [[mean - max(lo, 0.0)], [min(hi, 1.0) - mean]] if not math.isnan(lo) else None
        ax.bar(x - 0.2, mean, width=0.4, yerr=err, capsize=5, color=colors[x % 3], label="best prompt" if x == 0 else None)
        ax.bar(x + 0.2, statistics.mean(r["acc_no_prompt"] for r in rows), width=0.4, color=colors[x % 3], alpha=0.45,
               hatch="//", label="no prompt, same weights" if x == 0 else None)
        for r in rows:
            ax.plot(x - 0.2, r["acc"], "k.", alpha=0.7)
            ax.plot(x + 0.2, r["acc_no_prompt"], "k.", alpha=0.7)
    ax.set_xticks(range(len(summary)), list(summary))
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy (95% CI over seeds, clipped)")
    ax.legend(loc="upper right", fontsize=8)
    seeds = sorted({r["seed"] for r in results})
    ax.set_title(f"{Path(args.model).name} on {args.env}: {args.steps} steps, seeds {seeds}", fontsize=10)
    fig.tight_layout()
    fig.savefig(report / "modes.png", dpi=110)
    print(f"wrote {report / 'table.md'}, {report / 'modes.png'}, {results_path}")


if __name__ == "__main__":
    main()
