"""Rollout speed on Ray with 1 and 2 workers vs the local rollout, side by side in one run.

    python benchmarks/ray_scaling.py                      # SmolLM2-135M, espl/Math-v0, 16 episodes x 48 tokens
    python benchmarks/ray_scaling.py --episodes 32 --max-new-tokens 64 --reps 3 --json out.json

Rows (same episodes, same seed; every row must return the same trajectories, which is checked):
- local, torch threads = 1 and = all cores: the ordinary `rollout` in this process;
- ray, 1 worker x 1 CPU and 2 workers x 1 CPU: `RayRollout` on a private local Ray instance (127.0.0.1).
Workers are started and warmed up (model loaded, one call) before timing; medians of `--reps` calls.
The speed-up from 1 to 2 workers is bounded by the cores the machine has free: report the load average too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--env", default="espl/Math-v0")
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()

    from espl.agents.distributed import loopback_only

    loopback_only()
    import torch

    from espl.agents.distributed import RayRollout, WorkerPolicy
    from espl.agents.hf import HFPolicy
    from espl.agents.rollout import Episode, RolloutStats, rollout
    from espl.types import SamplingParams

    eps = [Episode(seed=1000 + i, system_prompt="Solve it. End with 'Answer: <number>'.") for i in range(args.episodes)]
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=0)
    cores = os.cpu_count() or 1
    rows: list[dict] = []
    reference: list | None = None

    def measure(name: str, run) -> None:  # noqa: ANN001
        nonlocal reference
        run()  # warm-up
        times, tokens = [], 0
        for _ in range(args.reps):
            st = RolloutStats()
            t0 = time.perf_counter()
            trajs = run(st)
            times.append(time.perf_counter() - t0)
            tokens = st.generated_tokens
        ids = [t.token_ids for t in trajs]
        if reference is None:
            reference = ids
        row = {"row": name, "seconds": round(statistics.median(times), 2), "tokens": tokens,
               "tokens_per_s": round(tokens / statistics.median(times), 1), "same_trajectories": ids == reference,
               "loadavg_1m": round(os.getloadavg()[0], 2), "reps": [round(t, 2) for t in times]}
        rows.append(row)
        print(json.dumps(row), flush=True)

    local = HFPolicy(args.model)
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        measure(f"local, {threads} torch thread(s)",
                lambda st=None: rollout(args.env, local, eps, params, stats=st))
    torch.set_num_threads(cores)

    for workers in (1, 2):
        rr = RayRollout(WorkerPolicy.hf(args.model), num_workers=workers, cpus_per_worker=1,
                        init_kwargs={"num_cpus": max(2, workers), "log_to_driver": False})
        try:
            measure(f"ray, {workers} worker(s) x 1 CPU",
                    lambda st=None: rr.rollout(args.env, None, eps, params, stats=st))
        finally:
            rr.close()

    by = {r["row"]: r["seconds"] for r in rows}
    ray1, ray2 = by["ray, 1 worker(s) x 1 CPU"], by["ray, 2 worker(s) x 1 CPU"]
    best_local = min(v for k, v in by.items() if k.startswith("local"))
    summary = {"cores": cores, "episodes": args.episodes, "max_new_tokens": args.max_new_tokens,
               "speedup_ray_1_to_2_workers": round(ray1 / ray2, 2),
               "ray_2_workers_vs_best_local": round(best_local / ray2, 2), "rows": rows}
    print(f"\nspeed-up 1 -> 2 Ray workers: {summary['speedup_ray_1_to_2_workers']}x; "
          f"2 Ray workers vs the best local row: {summary['ray_2_workers_vs_best_local']}x "
          f"(>1: Ray faster); all rows identical trajectories: {all(r['same_trajectories'] for r in rows)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
