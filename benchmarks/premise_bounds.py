"""The three bounds of the premise test (issue 16): base, base + the correct principle, base + a wrong one.

    OMP_NUM_THREADS=1 python benchmarks/premise_bounds.py                       # Qwen 0.5B, 100 test tasks
    OMP_NUM_THREADS=1 python benchmarks/premise_bounds.py --model smollm2-135m --episodes 20 \\
        --conditions correct --placements system
    OMP_NUM_THREADS=1 python benchmarks/premise_bounds.py --placements system user   # the user turn too

On the first `--episodes` tasks of `espl/Premise-v0`'s test split (`--rule-seed` picks the rule), with one
model loaded once:
  - base:    no prompt;
  - correct: the env's `rule_text()` ("1 zorb is exactly 4 gliks." for rule seed 0) as the prompt;
  - wrong:   the env's `wrong_rule_text()`, the rule of the next seed with another factor.
Every condition runs the same tasks with the same sampling seeds (task i gets the i-th seed stream of
`--seed`, as `espl eval` does), so outcomes pair task by task: the JSON has each condition's rewards in task
order and the paired comparisons (both / only one / neither, exact McNemar p, 95 % interval of the
difference; agents/stats.py). With a prompt, each `--placements` entry is one condition: "system" (a system
message, what `espl eval --system-prompt` does) and "user" (the E-SPL reference's user turn, `espl eval
--placement user`). Every condition is what these `espl eval` commands run (written into the
JSON under each condition's `command`), episode for episode, since both call the same rollout with the same
batch (checked with SmolLM2 on 20 tasks: the same rewards, replies and token counts):

    espl eval --env espl/Premise-v0 --model MODEL --episodes N --max-new-tokens T --temperature X \\
        --top-p P --seed S --env-arg rule_seed=R [--system-prompt RULE [--placement user]] --json

Each condition also counts which rule the answers followed (answer = quantity x the correct factor, x the
wrong factor, or x 1), so a low score can be told apart: a wrong rule followed, or no rule at all.
Writes one JSON (`--out`, default benchmarks/results/premise/<model>.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from espl.agents.stats import wilson  # the one home of the statistics

ENV_ID = "espl/Premise-v0"
RESULTS = Path(__file__).resolve().parent / "results" / "premise"


def followed(answer: str | None, quantity: int, factor: int) -> bool:
    """Whether the number read from a reply is quantity x factor (which rule the model applied)."""
    if answer is None or answer.endswith("..."):
        return False
    try:
        return Fraction(answer) == quantity * factor
    except (ValueError, ZeroDivisionError):
        return False


def cli_command(args: argparse.Namespace, prompt: str | None, placement: str = "system") -> str:
    parts = ["espl", "eval", "--env", ENV_ID, "--model", args.model, "--episodes", str(args.episodes),
             "--max-new-tokens", str(args.max_new_tokens), "--temperature", str(args.temperature),
             "--top-p", str(args.top_p), "--seed", str(args.seed), "--env-arg", f"rule_seed={args.rule_seed}"]
    if prompt is not None:
        parts += ["--system-prompt", prompt]
        if placement != "system":
            parts += ["--placement", placement]
    return "OMP_NUM_THREADS=1 " + shlex.join(parts + ["--json"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--episodes", type=int, default=100, help="test tasks (seeds seed .. seed+N-1)")
    ap.add_argument("--rule-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0, help="first task seed and the sampling seed")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--conditions", nargs="+", default=["base", "correct", "wrong"],
                    choices=["base", "correct", "wrong"])
    ap.add_argument("--placements", nargs="+", default=["system"], choices=["system", "user"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="the JSON to write (default: results/premise/MODEL.json)")
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error(f"--episodes: must be >= 1, got {args.episodes}")

    import espl  # noqa: F401  (registers the envs)
    import gymnasium as gym

    from espl.agents.evaluate import summarize
    from espl.agents.policy import PolicySpec, build_policy
    from espl.agents.rollout import Episode, RolloutStats, rollout
    from espl.agents.stats import paired
    from espl.envs.premise import PremiseEnv, premise_rule, wrong_rule_seed
    from espl.types import SamplingParams

    # 1. the principles, from the env itself (the rule never appears in a task; tests/envs/test_premise.py)
    probe = gym.make(ENV_ID, rule_seed=args.rule_seed, split="test").unwrapped
    assert isinstance(probe, PremiseEnv)
    rule, wrong = probe.rule, premise_rule(wrong_rule_seed(args.rule_seed), probe.units)
    prompts = {"base": None, "correct": probe.rule_text(), "wrong": probe.wrong_rule_text()}

    # 2. one model for every condition: the PolicySpec `espl eval` builds for --model on the hf backend
    t0 = time.perf_counter()
    policy = build_policy(PolicySpec(backend="hf", model=args.model, device=args.device))
    load_s = time.perf_counter() - t0
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                            seed=args.seed)
    env_kwargs = {"rule_seed": args.rule_seed, "split": "test"}

    # 3. the conditions: the same tasks, the same sampling seed per task
    plan = [(c, "system") if prompts[c] is None else (c, p) for c in args.conditions for p in args.placements]
    plan = list(dict.fromkeys(plan))  # base has no prompt to place: once
    conditions: dict[str, Any] = {}
    rewards: dict[str, list[float]] = {}
    try:
        for cond, placement in plan:
            name = cond if placement == "system" else f"{cond}_{placement}"
            prompt = prompts[cond]
            episodes = [Episode(seed=args.seed + i, system_prompt=prompt, placement=placement)
                        for i in range(args.episodes)]
            stats = RolloutStats()
            t1 = time.perf_counter()
            trajs = rollout(ENV_ID, policy, episodes, params, env_kwargs=env_kwargs, stats=stats)
            stats.total_s = time.perf_counter() - t1
            result = summarize(ENV_ID, policy.name, trajs, requested=len(episodes), samples=1, stats=stats,
                               system_prompt=prompt, split="test", seed=args.seed, params=params, placement=placement)
            correct = sum(t.reward >= 1.0 for t in trajs)
            answers = [(t.info.get("answer"), int(t.info["quantity"])) for t in trajs]
            lo, hi = wilson(correct, len(trajs))
            conditions[name] = {
                "system_prompt": prompt, "placement": placement if prompt else None,
                "episodes": len(trajs), "correct": correct, "success_rate": correct / len(trajs),
                "wilson95": [lo, hi], "reasons": result.reasons,
                "answers_following": {
                    "correct_rule": sum(followed(a, q, rule.factor) for a, q in answers),
                    "wrong_rule": sum(followed(a, q, wrong.factor) for a, q in answers),
                    "one_to_one": sum(followed(a, q, 1) for a, q in answers),
                },
                "generated_tokens": result.generated_tokens, "seconds": round(stats.total_s, 1),
                "command": cli_command(args, prompt, placement),
                "sample_replies": [t.messages[-1].get("content", "")[:200] for t in trajs[:3]],
            }
            rewards[name] = [t.reward for t in trajs]
            print(f"{name:>14}: {correct}/{len(trajs)} = {correct / len(trajs):.2f} "
                  f"[{lo:.2f}, {hi:.2f}]  {result.reasons}  ({stats.total_s:.0f} s)", file=sys.stderr, flush=True)
    finally:
        policy.close()

    # 4. paired comparisons (a = before, b = after: diff = rate_b - rate_a)
    def by_task(name: str) -> dict[int, float]:
        return dict(enumerate(rewards[name]))

    pairs = [("base", "correct"), ("wrong", "correct"), ("base", "wrong"),
             ("correct", "correct_user"), ("base", "correct_user"), ("wrong_user", "correct_user")]
    comparisons = {f"{b}_vs_{a}": paired(by_task(a), by_task(b)).to_dict()
                   for a, b in pairs if a in rewards and b in rewards}

    out = {
        "env": ENV_ID, "split": "test", "env_kwargs": {"rule_seed": args.rule_seed},
        "rule": {"seed": rule.seed, "factor": rule.factor, "text": prompts["correct"]},
        "wrong_rule": {"seed": wrong.seed, "factor": wrong.factor, "text": prompts["wrong"]},
        "model": args.model, "backend": "hf", "device": args.device, "tasks": args.episodes, "seed": args.seed,
        "params": {"temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens},
        "conditions": conditions, "paired": comparisons, "rewards": rewards,
        "command": "OMP_NUM_THREADS=1 python benchmarks/premise_bounds.py " + shlex.join(argv if argv is not None
                                                                                    else sys.argv[1:]),
        "load_s": round(load_s, 1), "python": platform.python_version(), "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = args.out or RESULTS / f"{args.model}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
