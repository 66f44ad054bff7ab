"""The packaged models on the BFCL v4 envs (espl/BFCL-*-v0) through llama.cpp, per category, bounded.

    python benchmarks/bfcl_bench.py run --model qwen2.5-coder-0.5b --cat Simple,Multiple -n 8
    python benchmarks/bfcl_bench.py run --model qwen2.5-coder-0.5b --cat Simple,Parallel -n 3 \
        --split train --samples 4 --temperature 0.7 --max-new-tokens 96      # reward variance per group
    python benchmarks/bfcl_bench.py from-jsonl DIR/trajectories.jsonl --model M --cat Simple   # espl eval --out
    python benchmarks/bfcl_bench.py run --model smollm2-135m --cat Simple,Parallel -n 10 --hf \
        --tool-grammar required --max-new-tokens 128                      # grammar-constrained calls (HF)
    python benchmarks/bfcl_bench.py report                                   # the tables of docs/tools.md

`run` starts one llama.cpp server (127.0.0.1, 1 thread, polling off: `LlamaCppServer`) and runs the first N
items (seeds 0..N-1, or 1000.. on the train split) of each category's split through `espl.agents.evaluate`
with the OpenAI-compatible client (the `espl eval --base-url` path), greedy unless --temperature is given.
Each (model, category, split, samples, temperature) is one small JSON in benchmarks/results/bfcl/<model>/:
settings, per item the BFCL id, reward and reason (so the same items can be paired or re-scored), written
when the category is done. `--tool-grammar required|auto` decodes the calls under the grammar of each item's
tools (agents/tool_grammar.py; llama.cpp: its `grammar` field); `--hf` runs the model in transformers
(`HFPolicy`, the trainable backend) instead of llama.cpp. `report` reads them all and prints the per-category table and, for runs with
--samples > 1, the share of items whose k samples do not all get the same reward (groups an RL step learns from).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "bfcl"


def _file(out: Path, model: str, cat: str, split: str, samples: int, temperature: float, grammar: str | None = None,
          hf: bool = False) -> Path:
    tail = "" if samples == 1 and temperature == 0 else f"-k{samples}-t{temperature:g}"
    # runs with --tool-grammar (off included: the paired baseline) get their own files beside the older ones
    tail += ("-hf" if hf else "") + ("" if grammar is None else f"-grammar-{grammar}")
    return out / model / f"{cat}-{split}{tail}.json"


def result_json(model: str, cat: str, split: str, samples: int, temperature: float, max_new_tokens: int,
                trajs: list[dict], seconds: float | None, how: str, env_args: dict | None = None,
                tool_grammar: str | None = None) -> dict:
    items = [{"bfcl_id": t["info"].get("bfcl_id", t.get("task_id")), "seed": t.get("seed"), "reward": t["reward"],
              "reason": t["reason"], "calls": bool(t["info"].get("calls")), "valid_call": _valid_call(t)}
             for t in trajs]
    env = "espl/BFCL-v0" if cat == "v0" else f"espl/BFCL-{cat}-v0"  # v0: the mixed env, all ten categories
    return {"model": model, "category": cat, "env": env, "split": split, "samples": samples,
            "temperature": temperature, "max_new_tokens": max_new_tokens, "env_args": env_args or {},
            "episodes": len(items), **({} if tool_grammar is None else {"tool_grammar": tool_grammar}),
            "correct": sum(1 for i in items if i["reward"] >= 1.0),
            "valid_calls": sum(1 for i in items if i["valid_call"]), "seconds": seconds, "how": how,
            "reasons": dict(Counter(i["reason"] for i in items).most_common()), "items": items}


def _valid_call(traj: dict) -> bool:
    """The reply decoded to at least one call and every call names one of the item's functions with arguments
    that validate against its tool schema (envs/bfcl.py's conversion, no extra arguments): what the tool grammar
    guarantees. Whether the values are right is BFCL's verdict (`reward`)."""
    import jsonschema

    from espl.envs.bfcl import bfcl_tools, load_items

    info = traj["info"]
    calls = info.get("calls") or []
    if not calls or info.get("parse_errors"):
        return False
    item = next(it for it in load_items(info["bfcl_category"]) if it["id"] == info["bfcl_id"])
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in bfcl_tools(item["function"])}
    for call in calls:
        (name, args), = call.items()
        if name not in schemas:
            return False
        schema = {**schemas[name], "additionalProperties": False}
        if not jsonschema.Draft202012Validator(schema).is_valid(args):
            return False
    return True


def run(args: argparse.Namespace) -> None:
    from espl.agents.evaluate import evaluate
    from espl.agents.llamacpp import LlamaCppServer
    from espl.agents.models import resolve_model
    from espl.agents.openai_policy import OpenAIPolicy
    from espl.envs.bfcl import AST_CATEGORIES, BFCLEnv
    from espl.envs.bfcl_multi_turn import MULTI_TURN_CATEGORIES, BFCLMultiTurnEnv
    from espl.types import SamplingParams

    names = {"v0": (BFCLEnv, "v0"), **{v: (BFCLEnv, k) for k, v in AST_CATEGORIES.items()},
             **{v: (BFCLMultiTurnEnv, k) for k, v in MULTI_TURN_CATEGORIES.items()}}
    cats = args.cat.split(",")
    for cat in cats:
        if cat not in names:
            sys.exit(f"--cat: unknown category {cat!r}; one of {', '.join(names)}")
    multi = any(c.startswith("MultiTurn") for c in cats)
    kwargs = {k: int(v) for k, v in (a.split("=", 1) for a in args.env_arg)}
    server: Any = contextlib.nullcontext()
    if args.hf:
        from espl.agents.hf import HFPolicy

        policy: Any = HFPolicy(args.model)
        how = "benchmarks/bfcl_bench.py run --hf (transformers, HFPolicy, OMP_NUM_THREADS as set)"
    else:
        server = LlamaCppServer(resolve_model(args.model).gguf_path, threads=args.threads, parallel=1 if multi else 2,
                                ctx_per_slot=16384 if multi else 8192)
        policy = OpenAIPolicy(server.url, model=args.model, tool_format="hermes", timeout_s=900, max_concurrency=2)
        policy.grammar_dialect = "llguidance"  # this server is the packaged llama.cpp (as llamacpp_policy sets)
        how = "benchmarks/bfcl_bench.py run (llama.cpp, 1 thread, poll off, OpenAI client)"
    with server:
        for cat in cats:
            cls, c = names[cat]
            count = args.n if cat == "v0" else min(args.n, len(cls(category=c, split=args.split).items))
            params = SamplingParams(temperature=args.temperature, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=0,
                                    tool_grammar=args.tool_grammar or "off")
            t = time.time()
            res = evaluate("espl/BFCL-v0" if cat == "v0" else f"espl/BFCL-{cat}-v0", policy, episodes=count, params=params, samples=args.samples,
                           seed=1000 if args.split == "train" else 0, split=args.split, env_kwargs=kwargs,
                           max_batch=args.max_batch or (1 if multi else 2))
            d = result_json(args.model, cat, args.split, args.samples, args.temperature, args.max_new_tokens,
                            [tr.to_dict() for tr in res.trajectories], round(time.time() - t), how, kwargs,
                            args.tool_grammar)
            path = _file(Path(args.out), args.model, cat, args.split, args.samples, args.temperature,
                         args.tool_grammar, args.hf)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(d, indent=1) + "\n")
            print(json.dumps({k: d.get(k) for k in ("model", "category", "split", "tool_grammar", "episodes", "correct",
                                                    "valid_calls", "seconds")}),
                  flush=True)


def from_jsonl(args: argparse.Namespace) -> None:
    trajs = [json.loads(line) for line in open(args.path, encoding="utf-8") if line.strip()]
    d = result_json(args.model, args.cat, args.split, args.samples, args.temperature, args.max_new_tokens, trajs,
                    None, f"summarized from {os.path.basename(os.path.dirname(args.path))}/trajectories.jsonl "
                          "(espl eval --out / evaluate, llama.cpp, 1 thread)",
                    {k: int(v) for k, v in (a.split("=", 1) for a in args.env_arg)})
    path = _file(Path(args.out), args.model, args.cat, args.split, args.samples, args.temperature)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d, indent=1) + "\n")
    print(path)


def report(args: argparse.Namespace) -> None:
    runs = [json.loads(p.read_text()) for p in sorted(Path(args.out).glob("*/*.json"))]
    constrained = [r for r in runs if "tool_grammar" in r]
    runs = [r for r in runs if "tool_grammar" not in r]  # the llama.cpp baseline table: runs from before the flag
    greedy = [r for r in runs if r["samples"] == 1 and r["temperature"] == 0 and r["split"] == "test"]
    models = sorted({r["model"] for r in greedy})
    cats = sorted({r["category"] for r in greedy}, key=lambda c: (c.startswith("MultiTurn"), c.startswith("Live"), c))
    if models:
        print("| category | " + " | ".join(models) + " |")
        print("| --- |" + " --- |" * len(models))
    for cat in cats:
        cells = []
        for m in models:
            r = next((r for r in greedy if r["model"] == m and r["category"] == cat), None)
            cells.append("" if r is None else f"{r['correct']}/{r['episodes']} ({r['correct'] / r['episodes']:.2f})")
        print(f"| {cat} | " + " | ".join(cells) + " |")
    if constrained:
        print("\n| model | backend | category | tool grammar | valid calls | correct |")
        print("| --- | --- | --- | --- | --- | --- |")
    for r in sorted(constrained, key=lambda r: (r["model"], r["category"], "hf" not in r["how"], r["tool_grammar"])):
        n = r["episodes"]
        print(f"| {r['model']} | {'hf' if '--hf' in r['how'] else 'llama.cpp'} | {r['category']} | "
              f"{r['tool_grammar']} | {r['valid_calls']}/{n} | {r['correct']}/{n} |")
    grouped = [r for r in runs if r["samples"] > 1]
    if grouped:
        print("\n| model | category | items x samples | T | max tokens | reward rate | groups with reward variance |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in grouped:
        by: dict = {}
        for i in r["items"]:
            by.setdefault(i["seed"], []).append(i["reward"])
        varied = sum(1 for v in by.values() if len(set(v)) > 1)
        rate = sum(i["reward"] for i in r["items"]) / max(1, len(r["items"]))
        print(f"| {r['model']} | {r['category']} | {len(by)} x {r['samples']} | {r['temperature']:g} | "
              f"{r['max_new_tokens']} | {rate:.2f} | {varied}/{len(by)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "from-jsonl"):
        p = sub.add_parser(name)
        if name == "from-jsonl":
            p.add_argument("path")
        p.add_argument("--model", required=True)
        p.add_argument("--cat", required=True,
                       help="category names as in the env ids: Simple,LiveMultiple,... (v0: the mixed espl/BFCL-v0)")
        p.add_argument("-n", type=int, default=8, help="items per category (the first N of the split)")
        p.add_argument("--split", default="test")
        p.add_argument("--samples", type=int, default=1)
        p.add_argument("--temperature", type=float, default=0.0)
        p.add_argument("--max-new-tokens", type=int, default=384)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--env-arg", action="append", default=[], help="KEY=INT env kwarg (max_steps_per_turn=5)")
        p.add_argument("--tool-grammar", default=None, choices=("off", "required", "auto", "call_then_answer"),
                       help="decode tool calls under the grammar of the item's tools (agents/tool_grammar.py)")
        p.add_argument("--hf", action="store_true", help="run the model in transformers (HFPolicy), not llama.cpp")
        p.add_argument("--max-batch", type=int, default=None, help="episodes live at once (default: 2)")
        p.add_argument("--out", default=str(RESULTS))
    sub.add_parser("report").add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    {"run": run, "from-jsonl": from_jsonl, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
