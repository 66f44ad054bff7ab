"""Decode chunks by prompt length vs in arrival order, side by side in one run (agents/hf.py `_chunks`).

A batch of prompts of very different lengths (BFCL's live_multiple: 300 to 3,200 tokens, each item with its
own function docs) used to be decoded as one left-padded chunk, so its prefill computed every row at the
longest row's length. `HFPolicy._chunks` takes the shortest prompts first and, on CPU, cuts a chunk before its
padded prefill exceeds PAD_SLACK times its real tokens. This script times `HFPolicy.generate_tokens` on the
same rendered prompts (the env's tools in the template, as a rollout renders them), the same seeds and
sampling, under both chunkings alternately, and reports the median seconds, the ratio, the padded prefill
tokens of each, and how many rows came out token-identical (each row samples from its own seed, so only the
float numerics of a different batch shape can change a token).

    python benchmarks/padding.py                                   # qwen2.5-coder-0.5b, 64 BFCL items, greedy
    python benchmarks/padding.py --model smollm2-135m --items 32 --repeats 3 --json /tmp/padding.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def in_order(policy):
    """The chunking before `_chunks`: arrival order, cut at max_batch only."""
    return lambda rows, lengths: [rows[i:i + policy.max_batch] for i in range(0, len(rows), policy.max_batch)]


def padded(chunks, lengths) -> int:
    return sum(len(c) * max(lengths[i] for i in c) for c in chunks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--env", default="espl/BFCL-v0")
    ap.add_argument("--env-kwargs", default=json.dumps({"category": ["live_simple", "multiple", "live_multiple"],
                                                        "split": "test"}))
    ap.add_argument("--items", type=int, default=64, help="prompts, all in one generate call")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()

    import gymnasium as gym
    import torch

    import espl  # noqa: F401  (registers the envs)
    from espl.agents.hf import HFPolicy
    from espl.types import SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    policy = HFPolicy(args.model, max_batch=args.items)
    env = gym.make(args.env, **json.loads(args.env_kwargs))
    prompts = []
    for i in range(args.items):
        obs, _ = env.reset(seed=i)
        prompts.append(policy.renderer.start(obs, getattr(env.unwrapped, "tools", None) or None).ids)
    lengths = [len(p) for p in prompts]
    params = SamplingParams(temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=0)
    by_length = policy._chunks
    variants = {"by length": by_length, "in order": in_order(policy)}
    rows = list(range(len(prompts)))
    res = {"model": args.model, "env": args.env, "items": args.items, "prompt_tokens": sum(lengths),
           "torch_threads": torch.get_num_threads(), "load_average_before": os.getloadavg(),
           "padded_prefill_tokens": {k: padded(f(rows, lengths), lengths) for k, f in variants.items()},
           "chunks": {k: len(f(rows, lengths)) for k, f in variants.items()}, "seconds": {k: [] for k in variants}}
    print(f"{args.items} prompts, {sum(lengths)} tokens (min {min(lengths)}, max {max(lengths)}); padded prefill: "
          + ", ".join(f"{k} {v} ({v / sum(lengths):.2f}x, {res['chunks'][k]} chunks)"
                      for k, v in res["padded_prefill_tokens"].items()), flush=True)
    outs = {}
    for r in range(args.repeats):
        for k, f in (variants.items() if r % 2 == 0 else reversed(variants.items())):
            policy._chunks = f
            t = time.perf_counter()
            outs[k] = policy.generate_tokens(prompts, params)
            res["seconds"][k].append(time.perf_counter() - t)
            print(f"  repeat {r}: {k} {res['seconds'][k][-1]:.1f} s", flush=True)
    policy._chunks = by_length
    med = {k: statistics.median(v) for k, v in res["seconds"].items()}
    same = sum(a.token_ids == b.token_ids for a, b in zip(outs["by length"], outs["in order"]))
    res.update(median_s=med, speedup=med["in order"] / med["by length"], rows_identical=same,
               load_average_after=os.getloadavg())
    print(f"median: by length {med['by length']:.1f} s, in order {med['in order']:.1f} s: "
          f"{res['speedup']:.2f}x; {same}/{len(prompts)} rows token-identical; load {os.getloadavg()[0]:.1f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
