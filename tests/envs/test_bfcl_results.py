"""benchmarks/results/bfcl: every measured item is an item of the split the result says (held-out for the
score table), counted right, and `benchmarks/bfcl_bench.py report` renders the table from them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import espl  # noqa: F401  (registers the envs)
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "bfcl"


def test_results_are_items_of_their_split_and_the_report_renders():
    from espl.envs import bfcl
    from espl.envs.bfcl_multi_turn import MULTI_TURN_CATEGORIES, BFCLMultiTurnEnv

    require(bfcl.bfcl_available(), f"the bfcl-eval package ({bfcl.INSTALL_HINT})")
    by_name = {**{n: (bfcl.BFCLEnv, c) for c, n in bfcl.AST_CATEGORIES.items()},
               **{n: (BFCLMultiTurnEnv, c) for c, n in MULTI_TURN_CATEGORIES.items()}}
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*/*.json"))]
    assert runs
    for r in runs:
        if r["category"] == "v0":  # the mixed env over the ten single-turn categories
            ids = {it["id"] for it in bfcl.BFCLEnv(category=list(bfcl.AST_CATEGORIES), split=r["split"]).items}
        else:
            cls, category = by_name[r["category"]]
            ids = {it["id"] for it in cls(category=category, split=r["split"]).items}
        assert {i["bfcl_id"] for i in r["items"]} <= ids, (r["model"], r["category"])
        assert all(bfcl.bfcl_split(i["bfcl_id"]) == r["split"] for i in r["items"])
        assert r["episodes"] == len(r["items"]) and r["correct"] == sum(i["reward"] >= 1.0 for i in r["items"])
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bfcl_bench.py"), "report"],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("| category |") and "qwen2.5-coder-0.5b" in out
