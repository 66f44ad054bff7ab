"""Which tool a trained tool-RL run's policy calls first on held-out tasks, against its base weights.

    python benchmarks/tool_choice.py --run runs/toolmath_py/run --items 200 --env-kwargs '{"python_tool": "on"}'

Loads the run's last checkpoint (`Trainer(..., resume=True)`: model, LoRA adapter and config), rolls out the
first `--items` test tasks of the run's env greedily under the run's `rollout.tool_grammar` and token budget,
with the adapter and then with it disabled (the base weights), and counts (first tool called, correct or
not). With greedy decoding and the same grammar the correct counts are those of `benchmarks/tool_rl.py`'s
after / before evaluations of the same run. Prints and writes one JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="the trainer's run dir (benchmarks/tool_rl.py: OUT/run)")
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--env-kwargs", default="{}", help="JSON object, as given to benchmarks/tool_rl.py")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from espl.agents.rollout import Episode, rollout
    from espl.trainer.espl import Trainer, resumed_config
    from espl.types import SamplingParams

    cfg = resumed_config(args.run, None, [])
    trainer = Trainer(cfg, args.run, resume=True)
    params = SamplingParams(temperature=0.0, max_new_tokens=cfg.rollout.max_new_tokens, seed=0,
                            tool_grammar=cfg.rollout.tool_grammar)
    episodes = [Episode(seed=i) for i in range(args.items)]
    env_kwargs = {**cfg.env_kwargs, **json.loads(args.env_kwargs), "split": "test"}
    result: dict = {"run": str(args.run), "env": cfg.env, "env_kwargs": env_kwargs, "items": args.items,
                    "tool_grammar": cfg.rollout.tool_grammar, "max_new_tokens": cfg.rollout.max_new_tokens}
    for label in ("trained", "base"):
        if label == "base":
            trainer.policy.set_adapter_enabled(False)
        counts: Counter = Counter()
        for t in rollout(cfg.env, trainer.policy, episodes, params, env_kwargs=env_kwargs):
            calls = [c["function"]["name"] for m in t.messages if m["role"] == "assistant"
                     for c in (m.get("tool_calls") or [])]
            counts[f"{calls[0] if calls else 'none'}/{'correct' if t.reward >= 1 else 'wrong'}"] += 1
        result[label] = dict(sorted(counts.items()))
        print(label, result[label], flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
