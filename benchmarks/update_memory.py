"""Peak memory of one RL update forward + backward on a long episode, with and without activation
checkpointing (`HFPolicy(activation_checkpointing=...)`), each measurement in its own process (peak RSS).

    python benchmarks/update_memory.py --model qwen2.5-coder-0.5b --lengths 512 1536 --threads 1

One episode of L token ids (the last `--generated` counted in the loss, as a reply), LoRA r16 (the trainer's
default), `trajectory_logprobs` + backward of the summed log-probs. Prints one line per (L, checkpointing) and
a JSON list at the end (`--json FILE` writes it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def measure(model: str, length: int, generated: int, checkpointing: bool, threads: int) -> dict:
    import resource
    import time

    import torch

    from espl.agents.hf import HFPolicy, LoraSettings
    from espl.types import Trajectory

    torch.set_num_threads(threads)
    policy = HFPolicy(model, lora=LoraSettings(r=16, alpha=32), activation_checkpointing=checkpointing)
    traj = Trajectory(env_id="bench", task_id="0", messages=[], reward=1.0, reason="",
                      token_ids=[100 + (i % 5000) for i in range(length)], logprobs=[0.0] * length,
                      mask=[0] * (length - generated) + [1] * generated)
    policy.set_training(True)
    t0 = time.perf_counter()
    lp = policy.trajectory_logprobs([traj], [1.0], 1.0)
    (lp.logprobs * lp.mask).sum().backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    return {"model": model, "length": length, "checkpointing": checkpointing, "peak_rss_gib": round(peak, 2),
            "seconds": round(seconds, 1), "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1536])
    ap.add_argument("--generated", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: "L,0|1" measured in this process
    args = ap.parse_args()
    if args.one:
        length, on = args.one.split(",")
        print(json.dumps(measure(args.model, int(length), args.generated, on == "1", args.threads)))
        return
    rows = []
    for length in args.lengths:
        for on in (False, True):
            out = subprocess.run([sys.executable, __file__, "--model", args.model, "--generated", str(args.generated),
                                  "--threads", str(args.threads), "--one", f"{length},{int(on)}"],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"L={length} checkpointing={'on ' if on else 'off'}: peak RSS {row['peak_rss_gib']:.2f} GiB, "
                  f"{row['seconds']:.0f} s", flush=True)
    print(json.dumps(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
