"""Rollout throughput, measured side by side in one run (ratios, medians over --repeats):

1. rollout tokens/s vs bare `model.generate` on the same prompts and batch size (goal >= 0.9x),
2. batched rollout vs one-at-a-time rollouts (goal >= 5x),
3. env + reward + parsing + template time as a fraction of rollout time (goal < 3 %),
4. the shared-prefix KV cache: time per problem with and without it (same batch, same system prompt),
5. optionally (--success N) the model's base success rate on the env with default sampling.

    python benchmarks/rollout.py                      # SmolLM2-135M on espl/Math-v0, batch 32, 64 new tokens
    python benchmarks/rollout.py --batch 64 --max-new-tokens 128 --success 128
    python benchmarks/rollout.py --model qwen2.5-coder-0.5b --success 64
    python benchmarks/rollout.py --kv-compare 1,8,32 --threads 1   # KV cache kinds side by side (below)

--kv-cache picks HFPolicy's decode cache for the rollout rows (dynamic / static / auto). --kv-compare B1,B2,..
instead measures, per batch size and in one run, `HFPolicy.generate_tokens` with the dynamic cache, the static
cache, and the static cache with the compiled decode step (--compile; its first call compiles and is not timed)
against bare `generate` with the dynamic cache and `generate(cache_implementation="static")`, then exits.

Tokens counted are "useful" ones: per row up to and including its end-of-turn token (bare `generate` keeps
stepping finished rows until the longest is done; that cost is what a batch pays, so it is counted in its
time, not in its tokens). Prompts are Math-v0 test problems under one ~150-token system prompt, the
E-SPL situation where every rollout of a step shares its system prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

SYSTEM_PROMPT = (
    "You are a meticulous competition mathematician. Read the problem twice and identify exactly what is "
    "asked before computing anything. Work step by step: write each intermediate result on its own line, "
    "check every arithmetic operation by estimating its magnitude, and keep units and signs explicit. When "
    "the problem involves several quantities, name them with short variables first. If a step depends on an "
    "assumption, state it. Prefer exact fractions to decimals unless the problem asks for a decimal. Before "
    "you answer, substitute your result back into the problem to verify it. Never stop at a partial result. "
    "Finish with one final line of the form 'Answer: <answer>' containing only the final value."
)


def useful_lengths(rows, stop_ids):
    out = []
    for row in rows:
        n = 0
        for t in row:
            n += 1
            if t in stop_ids:
                break
        out.append(n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--env", default="espl/Math-v0")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--single", type=int, default=4, help="episodes for the one-at-a-time baseline")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--success", type=int, default=0, help="also measure the success rate on N test episodes")
    ap.add_argument("--success-max-new-tokens", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the results to this JSON file")
    ap.add_argument("--random-init", metavar="DIR", default=None,
                    help="a randomly initialised model from DIR's config.json + tokenizer (throughput only: where "
                         "the weights cannot travel, e.g. a GPU box; it never says end-of-turn, so every row runs "
                         "to --max-new-tokens)")
    ap.add_argument("--kv-cache", choices=("dynamic", "static", "auto"), default="auto",
                    help="HFPolicy's KV cache for the rollout rows (auto: the device's default, see agents/hf.py)")
    ap.add_argument("--kv-compare", default=None, metavar="BATCHES",
                    help="compare the KV cache kinds at these batch sizes (comma-separated), then exit")
    ap.add_argument("--compile", action="store_true", help="--kv-compare: also the static cache + compiled step")
    args = ap.parse_args()

    import torch

    import espl  # noqa: F401  (registers the envs)
    from espl.agents.evaluate import evaluate
    from espl.agents.hf import HFPolicy
    from espl.agents.rollout import Episode, RolloutStats, rollout
    from espl.types import SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.random_init:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(0)
        cfg = AutoConfig.from_pretrained(args.random_init)
        base = AutoModelForCausalLM.from_config(cfg).to(args.device).eval()
        rtok = AutoTokenizer.from_pretrained(args.random_init)
        rtok.padding_side = "left"
        policy = HFPolicy(base, tokenizer=rtok, device=args.device, max_batch=max(args.batch, 1))
        args.model = f"random-init:{args.random_init}"
    else:
        policy = HFPolicy(args.model, device=args.device, max_batch=max(args.batch, 1))
    policy.kv_cache = args.kv_cache
    if args.kv_compare:
        args.batch = max(int(b) for b in args.kv_compare.split(","))
        policy.max_batch = args.batch
    print(f"model {args.model} loaded in {time.perf_counter() - t0:.1f} s on {args.device}; "
          f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}", flush=True)
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=0)
    env_kwargs = {"split": "test"}
    episodes = [Episode(seed=i, system_prompt=SYSTEM_PROMPT) for i in range(args.batch)]

    # the exact prompts the rollout renders, for the bare-generate baseline
    import gymnasium as gym

    env_source = args.env
    if ":" in args.env and "/" not in args.env:  # module:Class (an env class outside the registry)
        import importlib

        mod, _, cls = args.env.partition(":")
        env_source = getattr(importlib.import_module(mod), cls)
        env_kwargs = {}
    env = gym.make(env_source, **env_kwargs) if isinstance(env_source, str) else env_source(**env_kwargs)
    prompts = []
    for ep in episodes:
        obs, _ = env.reset(seed=ep.seed, options={"system_prompt": ep.system_prompt})
        prompts.append(policy.renderer.start(obs).ids)
    env.close()
    sys_tokens = len(policy.renderer.encode(SYSTEM_PROMPT))
    print(f"batch {args.batch}, system prompt {sys_tokens} tokens, prompts {min(map(len, prompts))}-"
          f"{max(map(len, prompts))} tokens, {args.max_new_tokens} new tokens max", flush=True)
    stop_ids = policy.stop_ids
    tok = policy.tokenizer

    def bare_generate() -> tuple[int, float]:
        enc = tok.pad({"input_ids": [list(p) for p in prompts]}, return_tensors="pt", padding=True)
        enc = {k: v.to(policy.device) for k, v in enc.items()}
        torch.manual_seed(0)
        t = time.perf_counter()
        with torch.no_grad():
            out = policy.model.generate(**enc, do_sample=True, temperature=0.7, top_p=0.95, top_k=0,
                                        max_new_tokens=args.max_new_tokens, eos_token_id=sorted(stop_ids),
                                        pad_token_id=tok.pad_token_id)
        dt = time.perf_counter() - t
        rows = out[:, enc["input_ids"].shape[1]:].tolist()
        return sum(useful_lengths(rows, stop_ids)), dt

    def run_rollout(eps, max_batch=None, sharing=None) -> RolloutStats:
        policy.prefix_sharing = sharing
        st = RolloutStats()
        rollout(env_source, policy, eps, params, env_kwargs=env_kwargs, max_batch=max_batch, stats=st)
        policy.prefix_sharing = None
        return st

    if args.kv_compare:
        kv_compare(policy, prompts, [int(b) for b in args.kv_compare.split(",")], args)
        return

    # correctness on this device: greedy decoding of the rollout's decoder equals transformers' own
    chk = policy.generate_tokens(prompts[:4], SamplingParams(temperature=0, max_new_tokens=16))
    same = 0
    for c in chk:
        ids = torch.tensor([list(c.prompt_ids)], device=policy.device)
        ref = policy.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                                    eos_token_id=sorted(stop_ids), pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
        same += list(c.token_ids) == [int(t) for t in ref][: len(c.token_ids)]
    print(f"greedy check: {same}/{len(chk)} rows token-identical to model.generate", flush=True)

    # warm-up: first calls pay one-off costs (kernels, env construction)
    policy.generate([[{"role": "user", "content": "hi"}]], SamplingParams(max_new_tokens=2, seed=0))
    run_rollout(episodes[:2])

    bare, roll, noshare, overhead = [], [], [], []
    for r in range(args.repeats):
        n, dt = bare_generate()
        bare.append(n / dt)
        st = run_rollout(episodes)
        roll.append(st.generated_tokens / st.total_s)
        overhead.append((st.env_s + st.render_s) / st.total_s)
        st2 = run_rollout(episodes, sharing=False)
        noshare.append((st2.total_s, st.total_s, st2.generated_tokens / st2.total_s))
        print(f"  repeat {r + 1}: bare generate {bare[-1]:.1f} tok/s | rollout {roll[-1]:.1f} tok/s "
              f"(env+template {overhead[-1]:.2%}) | rollout without prefix sharing {noshare[-1][2]:.1f} tok/s",
              flush=True)
    st1 = run_rollout(episodes[: args.single], max_batch=1)
    single = st1.generated_tokens / st1.total_s

    med = statistics.median
    res = {
        "model": args.model, "device": args.device, "batch": args.batch, "max_new_tokens": args.max_new_tokens,
        "system_prompt_tokens": sys_tokens, "torch_threads": torch.get_num_threads(),
        "bare_generate_tok_s": med(bare), "rollout_tok_s": med(roll), "one_at_a_time_tok_s": single,
        "rollout_vs_bare": med(roll) / med(bare), "rollout_vs_one_at_a_time": med(roll) / single,
        "env_overhead_fraction": med(overhead),
        "prefix_sharing_speedup": med(a / b for a, b, _ in noshare), "greedy_check_rows_identical": same,
    }
    print("\nresults (medians):")
    print(f"  rollout / bare model.generate, batch {args.batch}: {res['rollout_vs_bare']:.2f}x   (goal >= 0.9x)")
    print(f"  batched rollout / one-at-a-time rollouts:    {res['rollout_vs_one_at_a_time']:.1f}x   (goal >= 5x)")
    print(f"  env + reward + parsing + template share:      {res['env_overhead_fraction']:.2%}  (goal < 3 %)")
    print(f"  shared-prefix KV cache: rollout {res['prefix_sharing_speedup']:.2f}x faster than without")

    if args.success:
        sp = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=args.success_max_new_tokens, seed=0)
        for prompt_name, prompt in (("no system prompt", None), ("the benchmark system prompt", SYSTEM_PROMPT)):
            r = evaluate(env_source, policy, episodes=args.success, params=sp, system_prompt=prompt, split="test",
                         max_batch=args.batch)
            key = "success_no_prompt" if prompt is None else "success_with_prompt"
            res[key] = {"success_rate": r.success_rate, "mean_reward": r.mean_reward, "ci95": r.ci95,
                        "reasons": r.reasons, "episodes": r.episodes, "tokens_per_s": r.tokens_per_s}
            print(f"  success on {args.env} test ({args.success} episodes, {prompt_name}, "
                  f"{args.success_max_new_tokens} tokens): {r.success_rate:.1%}; mean reward {r.mean_reward:.3f} "
                  f"± {r.ci95:.3f}; {r.reasons}", flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(res, f, indent=2)


def kv_compare(policy, prompts, batches, args) -> None:
    """tokens/s of our decode loop per KV cache kind vs bare `generate` (dynamic, static), same prompts and
    sampling, medians over --repeats; useful tokens only (see the module docstring)."""
    import torch

    from espl.types import SamplingParams

    tok, stop_ids = policy.tokenizer, policy.stop_ids
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=0)

    def ours(rows, kind, compiled) -> float:
        policy.kv_cache, policy.compile_decode = kind, compiled
        policy.generate_tokens(rows, params)
        assert not policy._compile_failed, "torch.compile of the decode step failed (see the log)"
        return policy.last_stats.generated_tokens / policy.last_stats.seconds

    def bare(rows, cache) -> float:
        enc = tok.pad({"input_ids": [list(p) for p in rows]}, return_tensors="pt", padding=True)
        enc = {k: v.to(policy.device) for k, v in enc.items()}
        extra = {"cache_implementation": "static"} if cache == "static" else {}
        torch.manual_seed(0)
        t = time.perf_counter()
        with torch.no_grad():
            out = policy.model.generate(**enc, do_sample=True, temperature=0.7, top_p=0.95, top_k=0,
                                        max_new_tokens=args.max_new_tokens, eos_token_id=sorted(stop_ids),
                                        pad_token_id=tok.pad_token_id, **extra)
        dt = time.perf_counter() - t
        return sum(useful_lengths(out[:, enc["input_ids"].shape[1]:].tolist(), stop_ids)) / dt

    variants = {"ours dynamic": lambda r: ours(r, "dynamic", False), "ours static": lambda r: ours(r, "static", False),
                "generate dynamic": lambda r: bare(r, "dynamic"), "generate static": lambda r: bare(r, "static")}
    if args.compile:
        variants["ours static+compile"] = lambda r: ours(r, "static", True)
    # same seeds, both caches: the tokens must agree (what makes the comparison one of speed alone)
    policy.kv_cache = "dynamic"
    a = policy.generate_tokens(prompts[:4], params)
    policy.kv_cache = "static"
    b = policy.generate_tokens(prompts[:4], params)
    same = sum(x.token_ids == y.token_ids for x, y in zip(a, b))
    print(f"static vs dynamic: {same}/{len(a)} rows token-identical", flush=True)
    res: dict = {"model": args.model, "device": args.device, "torch_threads": torch.get_num_threads(),
                 "max_new_tokens": args.max_new_tokens, "load_average": os.getloadavg(),
                 "static_rows_identical": same, "batches": {}}
    for batch in batches:
        rows = prompts[:batch]
        times: dict[str, list[float]] = {k: [] for k in variants}
        for k, f in variants.items():  # warm-up per batch size (the first variant), and the compile (compiled)
            if k == "ours dynamic" or "compile" in k:
                t = time.perf_counter()
                f(rows)
                print(f"  batch {batch}: {k} warm-up {time.perf_counter() - t:.1f} s", flush=True)
        for _ in range(args.repeats):
            for k, f in variants.items():
                times[k].append(f(rows))
        med = {k: statistics.median(v) for k, v in times.items()}
        best_hf = max(med["generate dynamic"], med["generate static"])
        res["batches"][batch] = {"tok_s": med, "all": times, "best_hf": best_hf}
        print(f"batch {batch}: " + " | ".join(f"{k} {v:.1f} tok/s" for k, v in med.items()), flush=True)
        print("  vs generate dynamic: " + ", ".join(f"{k} {v / med['generate dynamic']:.2f}x"
                                                     for k, v in med.items() if k.startswith("ours"))
              + "; vs the best HF path: " + ", ".join(f"{k} {v / best_hf:.2f}x"
                                                        for k, v in med.items() if k.startswith("ours")), flush=True)
    if args.json_out:
        with open(args.json_out, "w") as out:
            json.dump(res, out, indent=2)


if __name__ == "__main__":
    main()
