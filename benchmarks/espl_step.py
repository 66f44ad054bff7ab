"""Step time of E-SPL vs RL only on the same batches, and of our RL step vs TRL's GRPOTrainer + LoRA.

    python benchmarks/espl_step.py                  # E-SPL vs RL, default config, 3 steps each, interleaved
    python benchmarks/espl_step.py --trl            # + our RL step vs TRL GRPOTrainer on one budget
    python benchmarks/espl_step.py --steps 4 --set rollout.max_new_tokens=64
    python benchmarks/espl_step.py --steps 5 --variants rl,pipeline-llamacpp,pipeline-llamacpp-1.5b
    python benchmarks/espl_step.py --determinism    # is the llama.cpp mutator deterministic given its seed?

Part 1 (goal: E-SPL / RL <= 1.15x): three trainers on the same seed (so the same problems each step):
`rl`, `espl` with the mutator overlapping the RL update (`mutator.overlap=true`) in 1 torch thread (the
default `mutator.threads=1`) and in all (`mutator.threads=0`), `espl` sequential, and
`espl` whose mutator is the same frozen base model's GGUF in a llama.cpp server (`mutator.kind=llamacpp`).
Their steps are interleaved (rl, espl, espl-seq, rl, ...) so machine load drifts hit all alike; medians
exclude the first (warm-up) step. `--variants` picks some (keys: rl, overlap, overlap-all-threads, sequential,
llamacpp, pipeline-llamacpp, pipeline-llamacpp-1.5b); the `pipeline-*` ones run step t's mutation beside step
t+1's rollouts and update (`mutator.pipeline=true`) with the mutator in its own llama.cpp server: the policy's
own GGUF (SmolLM2-135M) or the packaged Qwen2.5-Coder-1.5B. Each mutation's own wall time is measured too
(`mutate` timed), which with the rl step's time says what a mutator computing elsewhere would give.
`--determinism` runs one llama.cpp mutation twice with the same seed and says whether every reply matched
(what an exact resume of a pipelined run needs).

Part 2 (goal: ours / TRL <= 0.6x): the same model (SmolLM2-135M), LoRA r16 alpha32 all-linear, 2 prompts
x 4 completions, <= 64 new tokens, temperature 0.7, top-p 0.95, lr 1e-4, seed 0, on espl/Math-v0 tasks;
TRL with and without gradient checkpointing (its default is on), ours as it is and with every micro-batch
checkpointed (`HFPolicy.checkpoint_min_tokens = 0`). TRL's step = generation + reward +
loss + backward + optimizer, ours = rollouts + update. Needs `trl` and `datasets`
(`pip install --no-deps trl` keeps the installed torch; `pip install datasets`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any


def median_after_warmup(xs: list[float]) -> float:
    return statistics.median(xs[1:] if len(xs) > 1 else xs)


class TimedMutator:
    """A `Mutator` that times each `mutate` of the one it wraps (wall seconds, in the thread it runs in)."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, []

    def mutate(self, parent, groups, seed):
        t = time.perf_counter()
        try:
            return self.inner.mutate(parent, groups, seed)
        finally:
            if any(g.mixed for g in groups):  # one without a mixed problem returns at once: not a mutation
                self.seconds.append(time.perf_counter() - t)

    def crossover(self, parents, wins, seed):
        return self.inner.crossover(parents, wins, seed)

    def close(self):
        self.inner.close()


VARIANTS: dict[str, tuple[str, dict]] = {  # key -> (label, TrainConfig keywords)
    "rl": ("rl", {"mode": "rl"}),
    "overlap": ("espl (overlap)", {"mutator.overlap": True}),
    "overlap-all-threads": ("espl (overlap, all threads)", {"mutator.overlap": True, "mutator.threads": 0}),
    "sequential": ("espl (sequential)", {"mutator.overlap": False}),
    "llamacpp": ("espl (llama.cpp)", {"mutator.overlap": True, "mutator.kind": "llamacpp"}),
    "pipeline-llamacpp": ("espl (pipeline, llama.cpp 135M)", {"mutator.pipeline": True, "mutator.kind": "llamacpp"}),
    "pipeline-llamacpp-1.5b": ("espl (pipeline, llama.cpp 1.5B)", {"mutator.pipeline": True, "mutator.kind": "llamacpp",
                                                                   "mutator.model": "qwen2.5-coder-1.5b"}),
}
DEFAULT_VARIANTS = ("rl", "overlap", "overlap-all-threads", "sequential", "llamacpp")


def espl_vs_rl(steps: int, overrides: list[str], keys: list[str], blocks: bool = False) -> None:
    from espl.trainer.espl import TrainConfig, Trainer, build_mutator, build_policy

    unknown = [k for k in keys if k not in VARIANTS]
    if unknown or "rl" not in keys:
        raise SystemExit(f"--variants: {unknown or 'rl is needed (the baseline)'}; choose from {list(VARIANTS)}")
    # no held-out evaluation inside the timed steps (rl evaluates one prompt, espl three): --set can turn it on
    variants = {VARIANTS[k][0]: TrainConfig.from_sources(None, ["evaluation.every=0", *overrides],
                                                         **{"mode": "espl", **VARIANTS[k][1]})
                for k in keys}
    trainers, timed = {}, {}
    for name, cfg in variants.items():
        policy = build_policy(cfg)
        if cfg.evolving:
            timed[name] = TimedMutator(build_mutator(cfg, policy))
        trainers[name] = Trainer(cfg, None, policy=policy, mutator=timed.get(name))
    times: dict[str, dict[str, list[float]]] = {n: {"total": [], "rollout": [], "update": [], "mutation": []} for n in trainers}
    # interleaved: (step, variant); --blocks: (variant, step), so a pipelined variant's in-flight mutation (in its
    # llama.cpp server) overlaps only its own next step, never another variant's timed step
    order = ([(n, s) for n in trainers for s in range(steps)] if blocks else
             [(n, s) for s in range(steps) for n in trainers])
    for name, step in order:
        tr = trainers[name]
        m = tr.step()
        for key in ("total", "rollout", "update", "mutation"):
            times[name][key].append(getattr(m, f"time_{key}"))
        print(f"  step {step} {name:31s} total {m.time_total:6.1f}s  rollout {m.time_rollout:6.1f}  update "
              f"{m.time_update:6.1f}  mutation {m.time_mutation:6.1f}  ({m.mutation})", flush=True)
    for tr in trainers.values():
        tr.close()
    cfg = variants["rl"]
    print(f"\nE-SPL vs RL, B={cfg.data.batch_problems} M={cfg.selection.prompts_per_step} N={cfg.rollout.rollouts_per_pair} "
          f"max_new_tokens={cfg.rollout.max_new_tokens}, {steps} steps each (medians after the first):")
    base = median_after_warmup(times["rl"]["total"])
    base_mean = statistics.mean(times["rl"]["total"][1:] or times["rl"]["total"])
    for name, t in times.items():
        med = {k: median_after_warmup(v) for k, v in t.items()}
        mean = statistics.mean(t["total"][1:] or t["total"])
        print(f"  {name:31s} median {med['total']:6.1f} s/step  ratio {med['total'] / base:5.2f}x | mean {mean:6.1f} s "
              f"ratio {mean / base_mean:5.2f}x  (median rollout {med['rollout']:.1f} / update {med['update']:.1f} / "
              f"mutation wait {med['mutation']:.1f})")
    for name, tm in timed.items():
        if tm.seconds:
            crit = statistics.median([t - w for t, w in zip(times[name]["total"][1:], times[name]["mutation"][1:])] or [0])
            print(f"  {name:31s} {len(tm.seconds)} mutations, wall median {statistics.median(tm.seconds):.1f} s "
                  f"(all: {[round(s, 1) for s in tm.seconds]}); its step without the mutation wait: median {crit:.1f} s "
                  f"= {crit / base:.2f}x rl (what a mutator computing elsewhere, faster than a step, would give)")
    print("  (steps without a mixed problem have no mutation: the mean counts the mutation steps' share, the median "
          "may not)")


def ours_vs_trl(steps: int) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    import gymnasium as gym

    from espl.agents.models import load_model
    from espl.trainer.espl import TrainConfig, Trainer, batch_indices

    cfg = TrainConfig.from_dict({"mode": "rl", "data.batch_problems": 2, "selection.prompts_per_step": 1,
                                 "rollout.rollouts_per_pair": 4, "rollout.max_new_tokens": 64, "rollout.temperature": 0.7,
                                 "rollout.top_p": 0.95, "lora.rank": 16, "lora.alpha": 32,
                                 "optimizer.learning_rate": 1e-4, "seed": 0})
    env: Any = gym.make(cfg.env).unwrapped  # a MultiTurnEnv (make_task, task_messages)
    # the same prompts in the same order: our batches, flattened
    indices = [i for s in range(steps) for i in batch_indices(cfg, s)]
    tasks = [env.make_task(i) for i in indices]
    rows = [{"prompt": env.task_messages(t), "task_index": i} for t, i in zip(tasks, indices)]

    def reward(completions, task_index, **_):
        out = []
        for comp, idx in zip(completions, task_index):
            text = comp[-1]["content"] if isinstance(comp, list) else comp
            out.append(float(env.evaluate({"role": "assistant", "content": text}, env.make_task(idx), 1).reward))
        return out

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._t = [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t)

    results: dict[str, float] = {}
    # ours as it is (HFPolicy checkpoints a micro-batch's layers only from `checkpoint_min_tokens` padded
    # tokens; these micro-batches hold ~500) and with every micro-batch checkpointed (what it did before)
    for name, min_tokens in (("ours (rl step)", None), ("ours, every micro-batch checkpointed", 0)):
        ours = Trainer(cfg, None)
        if min_tokens is not None:
            ours.policy.checkpoint_min_tokens = min_tokens
        t_ours = []
        for _ in range(steps):
            t_ours.append(ours.step().time_total)
        ours.close()
        results[name] = median_after_warmup(t_ours)
        print(f"  {name}: {[round(t, 1) for t in t_ours]}", flush=True)

    for checkpointing in (False, True):
        model, tok = load_model("smollm2-135m")
        torch.manual_seed(0)
        timer = StepTimer()
        with tempfile.TemporaryDirectory() as out:
            args = GRPOConfig(
                output_dir=out, per_device_train_batch_size=8, num_generations=4, max_completion_length=64,
                temperature=0.7, top_p=0.95, learning_rate=1e-4, max_steps=steps, logging_steps=1, report_to=[],
                gradient_checkpointing=checkpointing, use_cpu=True, bf16=False, save_strategy="no", seed=0,
                beta=0.0, shuffle_dataset=False, disable_tqdm=True,
            )
            trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
                                  processing_class=tok, peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                                               lora_dropout=0.0, task_type="CAUSAL_LM"),
                                  callbacks=[timer])
            trainer.train()
        name = f"TRL GRPOTrainer (gradient checkpointing {'on' if checkpointing else 'off'})"
        results[name] = median_after_warmup(timer.times)
        print(f"  {name}: {[round(t, 1) for t in timer.times]}", flush=True)

    print(f"\nours vs TRL, SmolLM2-135M LoRA r16, 2 prompts x 4 completions, <= 64 new tokens, {steps} steps (medians after the first):")
    ref = results["ours (rl step)"]
    for name, t in results.items():
        print(f"  {name:48s} {t:6.1f} s/step   ours/this = {ref / t:4.2f}x")


def determinism(model: str, threads: int) -> None:
    """One real mutation with the llama.cpp mutator, twice on the same inputs and seed (rollouts of the default
    policy on the default env); prints whether every call's reply matched."""
    from espl.trainer.espl import TrainConfig, Trainer, build_mutator

    cfg = TrainConfig.from_dict({"mutator.kind": "llamacpp", "mutator.model": model, "mutator.threads": threads,
                                 "mutator.pipeline": True, "evaluation.every": 0})
    tr = Trainer(cfg, None, mutator=TimedMutator(build_mutator(cfg, None)))
    inputs = None
    for _ in range(6):  # until a step has a mixed problem (a mutation with work)
        tr.step()
        pending = tr._pending[-1][0]
        if pending.has_work:
            inputs = pending
            break
    if inputs is None:
        raise SystemExit("no step with a mixed problem in 6 steps; try another --set seed=")
    mutator = tr.mutator
    first = tr._pending[-1][1].result().mutation  # the pipelined run of it, alone on the server once done
    runs = [first] + [mutator.mutate(inputs.parent.principles, list(inputs.groups), inputs.seed) for _ in range(2)]
    for i in (1, 2):
        same = [a == b for a, b in zip(runs[0].calls, runs[i].calls)]
        print(f"llama.cpp mutator {model} ({threads} thread(s)), step {inputs.step}'s mutation, run {i + 1} vs run 1 "
              f"(seed {inputs.seed}): {sum(same)}/{len(same)} calls identical (of {len(runs[i].calls)}), child "
              f"identical: {runs[0].principles == runs[i].principles} ({runs[0].reason} / {runs[i].reason})")
    print(f"  mutation wall times: {[round(s, 1) for s in mutator.seconds]} s")
    tr.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="TrainConfig section.key=value for part 1 (e.g. rollout.max_new_tokens=48)")
    ap.add_argument("--trl", action="store_true", help="also run part 2 (TRL GRPOTrainer)")
    ap.add_argument("--only-trl", action="store_true", help="run part 2 only")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"part 1's variants, comma-separated: {list(VARIANTS)}")
    ap.add_argument("--blocks", action="store_true", help="part 1: each variant's steps in a row, not interleaved")
    ap.add_argument("--determinism", action="store_true", help="only check that the llama.cpp mutator repeats itself")
    ap.add_argument("--mutator-model", default="smollm2-135m", help="--determinism: the mutator's GGUF model")
    args = ap.parse_args()
    import torch

    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    if args.determinism:
        determinism(args.mutator_model, 1)
        return
    if not args.only_trl:
        espl_vs_rl(args.steps, args.overrides, [k.strip() for k in args.variants.split(",") if k.strip()],
                   args.blocks)
    if args.trl or args.only_trl:
        ours_vs_trl(args.steps)


if __name__ == "__main__":
    main()
