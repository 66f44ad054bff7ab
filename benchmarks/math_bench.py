"""The packaged models on the MMATH envs (espl/MATH500-v0, espl/AIME-v0, espl/CNMO-v0) through llama.cpp.

    python benchmarks/math_bench.py --model qwen2.5-coder-1.5b --out /tmp/i14/qwen15 \
        --env espl/MATH500-v0:40:512 --env espl/AIME-v0:31:512 --threads 1 --parallel 4

Each `--env ID:EPISODES:MAX_NEW_TOKENS` runs the test-split tasks of seeds 0..EPISODES-1 (greedy unless
--temperature is given; --samples k for pass@k) on an in-process llama.cpp server (`llamacpp_policy`,
127.0.0.1, `--threads` threads, polling off) in chunks of `--chunk` episodes. After every chunk
OUT/<env>.summary.json is rewritten from all finished episodes (`partial: true` until the env is done) and
the trajectories are appended to OUT/<env>.jsonl, so a run stopped by its time cap keeps what it finished.
Each summary also records the machine load (1-minute load average) before and after the env ran.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from espl.agents.evaluate import evaluate, summarize
from espl.agents.llamacpp import llamacpp_policy
from espl.agents.rollout import RolloutStats
from espl.types import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a GGUF alias (smollm2-135m, qwen2.5-coder-0.5b, ...) or path")
    ap.add_argument("--env", action="append", required=True, help="ID:EPISODES:MAX_NEW_TOKENS (repeatable)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=4, help="llama.cpp slots (episodes decoded together)")
    ap.add_argument("--ctx-per-slot", type=int, default=2048)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=8)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    policy = llamacpp_policy(args.model, threads=args.threads, parallel=args.parallel,
                             ctx_per_slot=args.ctx_per_slot)
    try:
        for item in args.env:
            env_id, episodes, budget = item.rsplit(":", 2)
            run_env(policy, env_id, int(episodes), int(budget), args)
    finally:
        policy.close()


def run_env(policy, env_id: str, episodes: int, budget: int, args) -> None:
    name = env_id.replace("/", "_")
    params = SamplingParams(temperature=args.temperature, top_p=1.0 if args.temperature == 0 else 0.95,
                            max_new_tokens=budget, seed=0)
    trajs, stats = [], RolloutStats()
    load_before = os.getloadavg()[0]
    (args.out / f"{name}.jsonl").write_text("")
    for start in range(0, episodes, args.chunk):
        n = min(args.chunk, episodes - start)
        r = evaluate(env_id, policy, episodes=n, seed=start, params=params, samples=args.samples,
                     max_batch=args.parallel)
        trajs.extend(r.trajectories)
        stats.generated_tokens += r.generated_tokens
        stats.total_s += r.seconds
        with open(args.out / f"{name}.jsonl", "a", encoding="utf-8") as f:
            for t in r.trajectories:
                f.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")
        s = summarize(env_id, args.model, trajs, requested=episodes * args.samples, samples=args.samples,
                      stats=stats, system_prompt=None, split="test", seed=0, params=params,
                      error=r.error).to_dict()
        s.update(partial=start + n < episodes, threads=args.threads, parallel=args.parallel,
                 load_1min_before=load_before, load_1min_now=os.getloadavg()[0], finished_at=time.time())
        (args.out / f"{name}.summary.json").write_text(json.dumps(s, indent=1, default=str))
        print(f"{args.model} {env_id}: {len(trajs)}/{episodes * args.samples} episodes, "
              f"mean {s['mean_reward']:.3f} +- {s['ci95']:.3f}, {s['tokens_per_s']:.1f} tok/s, "
              f"load {s['load_1min_now']:.2f}", flush=True)


if __name__ == "__main__":
    main()
