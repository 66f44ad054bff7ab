"""The packaged models on the MMATH envs (espl/MATH500-v0, espl/AIME-v0, espl/CNMO-v0) through llama.cpp.

    python benchmarks/math_bench.py --model qwen2.5-coder-1.5b --out /tmp/i14/qwen15 \
        --env espl/MATH500-v0:40:512 --env espl/AIME-v0:31:512 --threads 1 --parallel 4

Each `--env ID:EPISODES:MAX_NEW_TOKENS[:FIRST_SEED]` runs the test-split tasks of seeds FIRST_SEED (default 0)
.. FIRST_SEED+EPISODES-1 (greedy unless
--temperature is given; --samples k for pass@k) on an in-process llama.cpp server (`llamacpp_policy`,
127.0.0.1, `--threads` threads, polling off) in chunks of `--chunk` episodes. After every chunk
OUT/<env>.summary.json is rewritten from all finished episodes (`partial: true` until the env is done) and
the trajectories are appended to OUT/<env>.jsonl, so a run stopped by its time cap keeps what it finished.
Each summary also records the machine load (1-minute load average) before and after the env ran.
`--export OUT ...` writes one small JSON per (model, env, budget, sampling, first seed) into
benchmarks/results/math_bench/ (the summary and, per episode, task id, seed, reward, reason, extracted answer,
finish reason and reply tokens; no messages). `--report PATH ...` prints the markdown table of
docs/benchmarks.md from OUT dirs or those JSONs: `python benchmarks/math_bench.py --report benchmarks/results/math_bench/*.json`.
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


def _episode(t: dict) -> dict:
    """The few fields of a trajectory the table needs (what benchmarks/results/math_bench/ keeps)."""
    info = t.get("info") or {}
    return {"task_id": t["task_id"], "seed": t["seed"], "reward": t["reward"], "reason": t["reason"],
            "answer": info.get("answer"), "answer_source": info.get("answer_source"),
            "finish": (info.get("finish_reasons") or [None])[-1], "reply_tokens": sum(t.get("mask") or [])}


def load_results(paths: list[Path]) -> list[dict]:
    """Result records (summary + compact episodes) from OUT dirs of runs and/or exported *.json files."""
    records = []
    for path in paths:
        if path.is_file():
            records.append(json.loads(path.read_text()))
            continue
        for summary in sorted(path.glob("*.summary.json")):
            trajs = summary.with_name(summary.name.replace(".summary.json", ".jsonl"))
            records.append({"summary": json.loads(summary.read_text()),
                            "episodes": [_episode(json.loads(line)) for line in open(trajs, encoding="utf-8")]})
    return records


def export(paths: list[Path], dest: Path) -> None:
    """Write one small JSON per (model, env, budget, first seed) into `dest` (no messages, no token ids)."""
    dest.mkdir(parents=True, exist_ok=True)
    for rec in load_results(paths):
        s = rec["summary"]
        name = (f"{s['model']}__{s['env'].replace('/', '_')}__b{s['params']['max_new_tokens']}"
                f"__t{s['params']['temperature']:g}__k{s['samples']}__seed{s['seed']}.json")
        (dest / name).write_text(json.dumps(rec, indent=1, default=str) + "\n")
        print(dest / name)


def report(paths: list[Path]) -> None:
    """One markdown row per (model, env, budget, sampling) over every finished episode in the given results."""
    from espl.agents.stats import mean_ci95, pass_at_ks

    rows: dict[tuple, dict] = {}
    for rec in load_results(paths):
        s = rec["summary"]
        p = s["params"]
        key = (s["model"], s["env"], p["max_new_tokens"], p["temperature"], s["samples"])
        row = rows.setdefault(key, {"episodes": [], "tokens": 0, "seconds": 0.0, "partial": False, "load": [],
                                    "seeds": []})
        row["episodes"] += rec["episodes"]
        row["tokens"] += s["generated_tokens"]
        row["seconds"] += s["seconds"]
        row["partial"] |= s["partial"]
        row["load"] += [s["load_1min_before"], s["load_1min_now"]]
        tasks = sorted({e["seed"] for e in rec["episodes"]})
        if tasks:
            row["seeds"].append(f"{tasks[0]}..{tasks[-1]}")
    print("| model | env (test split) | sampling | tasks (seeds) | episodes | mean ± 95 % CI | pass@k | reasons "
          "| tokens/reply | tok/s (load) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (model, env, budget, temp, k), r in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2:])):
        eps = r["episodes"]
        n = len(eps)
        mean, ci = mean_ci95([e["reward"] for e in eps])
        by_task: dict[str, list[float]] = {}
        for e in eps:
            by_task.setdefault(e["task_id"], []).append(e["reward"])
        passes = pass_at_ks(by_task)
        passk = ", ".join(f"@{kk} {v:.3f}" for kk, v in sorted(passes.items()))
        reasons: dict[str, int] = {}
        for e in eps:
            reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
        sampling = "greedy" if temp == 0 else f"T={temp:g}, top-p 0.95"
        print(f"| {model} | {env} | {sampling}, k={k}, {budget} tokens | {len(by_task)} ({', '.join(r['seeds'])}) "
              f"| {n}{' (cut by the time cap)' if r['partial'] else ''} | {mean:.3f} ± {ci:.3f} | {passk} | "
              f"{', '.join(f'{a} {b}' for a, b in sorted(reasons.items()))} | {r['tokens'] / max(n, 1):.0f} of {budget} | "
              f"{r['tokens'] / max(r['seconds'], 1e-9):.1f} ({min(r['load']):.1f}-{max(r['load']):.1f}) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", type=Path, nargs="+",
                    help="print the markdown table of these OUT dirs and/or result *.json files and exit")
    ap.add_argument("--export", type=Path, nargs="+", metavar="OUT",
                    help="write the small result JSONs of these OUT dirs into --results and exit")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "math_bench")
    ap.add_argument("--model", help="a GGUF alias (smollm2-135m, qwen2.5-coder-0.5b, ...) or path")
    ap.add_argument("--env", action="append",
                    help="ID:EPISODES:MAX_NEW_TOKENS[:FIRST_SEED] (repeatable)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=4, help="llama.cpp slots (episodes decoded together)")
    ap.add_argument("--ctx-per-slot", type=int, default=2048)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=8)
    args = ap.parse_args()
    if args.report:
        report(args.report)
        return
    if args.export:
        export(args.export, args.results)
        return
    if not (args.model and args.env and args.out):
        ap.error("--model, --env and --out are needed (or --report DIR ...)")
    args.out.mkdir(parents=True, exist_ok=True)
    policy = llamacpp_policy(args.model, threads=args.threads, parallel=args.parallel,
                             ctx_per_slot=args.ctx_per_slot)
    try:
        for item in args.env:
            env_id, *rest = item.split(":")
            episodes, budget, first = (list(map(int, rest)) + [0])[:3]
            run_env(policy, env_id, episodes, budget, first, args)
    finally:
        policy.close()


def run_env(policy, env_id: str, episodes: int, budget: int, first: int, args) -> None:
    name = env_id.replace("/", "_") + (f"_from{first}" if first else "")
    params = SamplingParams(temperature=args.temperature, top_p=1.0 if args.temperature == 0 else 0.95,
                            max_new_tokens=budget, seed=0)
    trajs, stats = [], RolloutStats()
    load_before = os.getloadavg()[0]
    (args.out / f"{name}.jsonl").write_text("")
    for start in range(0, episodes, args.chunk):
        n = min(args.chunk, episodes - start)
        r = evaluate(env_id, policy, episodes=n, seed=first + start, params=params, samples=args.samples,
                     max_batch=args.parallel)
        trajs.extend(r.trajectories)
        stats.generated_tokens += r.generated_tokens
        stats.total_s += r.seconds
        with open(args.out / f"{name}.jsonl", "a", encoding="utf-8") as f:
            for t in r.trajectories:
                f.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")
        s = summarize(env_id, args.model, trajs, requested=episodes * args.samples, samples=args.samples,
                      stats=stats, system_prompt=None, split="test", seed=first, params=params,
                      error=r.error).to_dict()
        s.update(partial=start + n < episodes, threads=args.threads, parallel=args.parallel,
                 load_1min_before=load_before, load_1min_now=os.getloadavg()[0], finished_at=time.time())
        (args.out / f"{name}.summary.json").write_text(json.dumps(s, indent=1, default=str))
        print(f"{args.model} {env_id}: {len(trajs)}/{episodes * args.samples} episodes, "
              f"mean {s['mean_reward']:.3f} +- {s['ci95']:.3f}, {s['tokens_per_s']:.1f} tok/s, "
              f"load {s['load_1min_now']:.2f}", flush=True)


if __name__ == "__main__":
    main()
