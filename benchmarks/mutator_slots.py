"""llama.cpp mutator server: 1 slot vs 4 slots, wall time and reproducibility, side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/mutator_slots.py                      # the packaged 1.5B, 1 thread
    python benchmarks/mutator_slots.py --model smollm2-135m --requests 4 --tokens 16 --repeats 1

`mutator.slots` sets how many requests the llama.cpp mutator server decodes at once (`n_parallel`). With
more than one, a request shares its decoding batch with whichever others are in flight, and its sampled
reply can differ between runs; with one, a reply depends only on its prompt and seed. This measures what
that costs: the same `--requests` chat requests (prompts of different lengths, like the mutator's trajectory
summaries; per-request seeds, temperature 1) sent at once through the mutator's own path
(`build_policy(mutator_spec(cfg))`: a fresh server per run), for each slot count, `--repeats` times,
interleaved (1, 4, 1, 4, ...) so that load drifts hit both alike. Reports each run's wall seconds and
generated tokens, the median wall time per slot count and their ratio, and how many replies differ from
that slot count's first run. Writes JSON to `--out` (default benchmarks/results/mutator_slots/MODEL.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def requests(n: int) -> list[list[dict]]:
    """`n` summary-like requests of different prompt lengths (40 to ~40 + 60 n words)."""
    trace = ("Problem: A crate holds {q} zorbs of salt. How many gliks is that? Rollout: I multiply {q} by "
             "the factor and answer {a} gliks. Reward {r}. ")
    return [[{"role": "user", "content": "Summarise what the agent did and whether it worked, in two sentences.\n"
              + "".join(trace.format(q=q, a=q * (2 + i % 3), r=i % 2) for q in range(1, 2 + 3 * i))}]
            for i in range(n)]


def run_once(model: str, slots: int, threads: int, convs: list[list[dict]], tokens: int) -> dict:
    from espl.agents.policy import SamplingParams, build_policy
    from espl.trainer.config import TrainConfig
    from espl.trainer.espl import mutator_spec

    cfg = TrainConfig.from_dict({"mutator.kind": "llamacpp", "mutator.model": model,
                                 "mutator.slots": slots, "mutator.threads": threads})
    policy = build_policy(mutator_spec(cfg))
    try:
        params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=tokens, seed=7)
        before = policy.tokens_generated
        t = time.perf_counter()
        replies = [c.text for c in policy.generate(convs, params)]
        seconds = time.perf_counter() - t
        return {"slots": slots, "seconds": seconds, "tokens": policy.tokens_generated - before, "replies": replies}
    finally:
        policy.close()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b", help="a GGUF alias or path (the mutator's model)")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64, help="max new tokens per reply")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (mutator.threads)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--slots", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    convs = requests(args.requests)
    runs = [run_once(args.model, s, args.threads, convs, args.tokens)
            for _ in range(args.repeats) for s in args.slots]
    summary = {}
    for s in args.slots:
        mine = [r for r in runs if r["slots"] == s]
        summary[str(s)] = {
            "median_seconds": statistics.median(r["seconds"] for r in mine),
            "median_tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in mine),
            "replies_differing_from_first_run": [sum(a != b for a, b in zip(mine[0]["replies"], r["replies"]))
                                                 for r in mine[1:]],
        }
    base = summary[str(args.slots[0])]["median_seconds"]
    for s in args.slots:
        summary[str(s)]["time_ratio_vs_first"] = summary[str(s)]["median_seconds"] / base
    result = {"model": args.model, "requests": args.requests, "tokens": args.tokens, "threads": args.threads,
              "repeats": args.repeats, "load_avg_1m_at_end": os.getloadavg()[0], "cpus": os.cpu_count(),
              "summary": summary, "runs": runs}
    name = Path(args.model).name.removesuffix(".gguf")
    out = args.out or Path(__file__).parent / "results" / "mutator_slots" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    for s, v in summary.items():
        print(f"slots {s}: median {v['median_seconds']:.1f} s ({v['median_tokens_per_s']:.1f} tok/s), "
              f"x{v['time_ratio_vs_first']:.2f}; replies differing from its first run: "
              f"{v['replies_differing_from_first_run']} of {args.requests}")
    print(f"-> {out}")
    return result


if __name__ == "__main__":
    main()
