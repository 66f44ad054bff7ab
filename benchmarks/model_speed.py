"""Decoding speed of the packaged models on the transformers (CPU) and llama.cpp paths, one thread each.

    python benchmarks/model_speed.py --model smollm2-135m --model qwen2.5-coder-0.5b \
        --model qwen2.5-coder-1.5b --path llamacpp --path transformers --out /tmp/i14/speed.json

For each model and path: one greedy reply of exactly --tokens new tokens (the stop tokens are ignored by
asking for a long answer; the count is what the backend reports) to the same MATH500-style prompt, after
one short warm-up reply; tok/s = new tokens / wall seconds of the timed reply. Also recorded: the load
time (the first transformers load of a GGUF builds the float cache and is reported separately), peak
RSS of this process, and the 1-minute load average before and after (other work on the machine).
`--report FILE ...` prints the table of docs/benchmarks.md from result files (the measured ones are in
benchmarks/results/model_speed/: `python benchmarks/model_speed.py --report benchmarks/results/model_speed/*.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

PROMPT = [{"role": "user", "content": "Explain, step by step and in detail, how to compute the sum of the first "
                                      "100 positive integers, then check the result another way."}]


def measure(model: str, path: str, tokens: int, threads: int) -> dict:
    from espl.types import SamplingParams

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    if path == "transformers":
        import torch

        torch.set_num_threads(threads)
        from espl.agents.hf import HFPolicy

        policy = HFPolicy(model)
    else:
        from espl.agents.llamacpp import llamacpp_policy

        policy = llamacpp_policy(model, threads=threads, parallel=1, ctx_per_slot=tokens + 256)
    load_s = time.perf_counter() - t0
    try:
        policy.generate([PROMPT], SamplingParams(temperature=0.0, max_new_tokens=8))  # warm-up
        before = policy.tokens_generated  # cumulative new tokens (the server's usage count for llama.cpp)
        t0 = time.perf_counter()
        out = policy.generate([PROMPT], SamplingParams(temperature=0.0, max_new_tokens=tokens))
        wall = time.perf_counter() - t0
        n = policy.tokens_generated - before
    finally:
        policy.close()
    return {"model": model, "path": path, "threads": threads, "new_tokens": n, "seconds": round(wall, 2),
            "tok_per_s": round(n / wall, 2) if wall > 0 else None, "load_s": round(load_s, 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "load_1min_before": load_before, "load_1min_after": os.getloadavg()[0],
            "finish_reason": out[0].finish_reason}


def report(files: list[Path]) -> None:
    """The markdown table of docs/benchmarks.md: one row per measurement, models in alias order."""
    rows = [r for f in files for r in json.loads(f.read_text())]
    order = ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    rows.sort(key=lambda r: (order.index(r["model"]) if r["model"] in order else len(order), r["path"] != "llamacpp"))
    print("| model | path | threads | new tokens | tok/s | load avg (1 min) | load time | peak RSS of the process |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        path = "llama.cpp" if r["path"] == "llamacpp" else "transformers (float32)"
        print(f"| {r['model']} | {path} | {r['threads']} | {r['new_tokens']} | **{r['tok_per_s']:.2f}** | "
              f"{r['load_1min_before']:.1f} -> {r['load_1min_after']:.1f} | {r['load_s']:.0f} s | {r['peak_rss_gib']:.2f} GiB |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", type=Path, nargs="+", help="print the markdown table of these result files and exit")
    ap.add_argument("--model", action="append")
    ap.add_argument("--path", action="append", choices=["transformers", "llamacpp"])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.report:
        report(args.report)
        return
    if not (args.model and args.path and args.out):
        ap.error("--model, --path and --out are needed (or --report FILE ...)")
    results = json.loads(args.out.read_text()) if args.out.is_file() else []
    for model in args.model:
        for path in args.path:
            r = measure(model, path, args.tokens, args.threads)
            print(json.dumps(r), flush=True)
            results.append(r)
            args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
