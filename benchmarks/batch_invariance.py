"""Does an episode's sample depend on which other episodes share its batch? (what distributed rollouts need)

    python benchmarks/batch_invariance.py [--model smollm2-135m] [--dtypes float32,bfloat16] [--device cpu]

8 chat prompts, each with its own sampling seed, generated three ways with `HFPolicy.generate_tokens`:
one batch of 8, two batches of 4, eight batches of 1. Prints, per dtype, how many of the 8 token sequences
are identical to the batch-of-8 ones and where the others first differ. Per-row seeds remove every
dependence on the batch in the sampler; what remains is the model's float rounding, which in reduced
precision depends on the batch shape.
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()

    from espl.agents.hf import HFPolicy, mix_seed
    from espl.types import SamplingParams

    convs = [[{"role": "system", "content": "Solve it. End with 'Answer: <number>'."},
              {"role": "user", "content": f"What is {i * 7 + 3} times {i + 2}, minus {i}?"}] for i in range(8)]
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=1)
    seeds = [mix_seed(99, i) for i in range(8)]
    for dtype in args.dtypes.split(","):
        pol = HFPolicy(args.model, dtype=dtype, device=args.device)
        ids = [pol.renderer.start(c, None).ids for c in convs]
        whole = pol.generate_tokens(ids, params, seeds=seeds)
        halves = pol.generate_tokens(ids[:4], params, seeds=seeds[:4]) + pol.generate_tokens(ids[4:], params, seeds=seeds[4:])
        single = [pol.generate_tokens([ids[i]], params, seeds=[seeds[i]])[0] for i in range(8)]
        for name, other in (("2 batches of 4", halves), ("8 batches of 1", single)):
            first_diff = [next((k for k, (s, t) in enumerate(zip(a.token_ids, b.token_ids)) if s != t), None)
                          for a, b in zip(whole, other)]
            same = sum(d is None and len(a.token_ids) == len(b.token_ids) for d, a, b in zip(first_diff, whole, other))
            print(f"{dtype:9s} batch of 8 vs {name}: {same}/8 identical; first differing token: {first_diff}")


if __name__ == "__main__":
    main()
