"""benchmarks/mutator_slots.py on the packaged SmolLM2 GGUF: its JSON and the reproducibility it reports."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tests.conftest import require

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mutator_slots.py"


def test_one_slot_runs_report_equal_replies_and_write_every_run(tmp_path):
    require(importlib.util.find_spec("xllamacpp") is not None, "xllamacpp (llama.cpp server)")
    spec = importlib.util.spec_from_file_location("mutator_slots", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "slots.json"
    result = mod.main(["--model", "smollm2-135m", "--requests", "3", "--tokens", "6", "--repeats", "2",
                       "--slots", "1", "--out", str(out)])
    assert json.loads(out.read_text())["summary"] == result["summary"]
    one = result["summary"]["1"]
    assert one["replies_differing_from_first_run"] == [0]  # 1 slot: the same replies from a fresh server
    assert one["time_ratio_vs_first"] == 1.0
    assert [r["slots"] for r in result["runs"]] == [1, 1]
    assert all(len(r["replies"]) == 3 and r["tokens"] > 0 for r in result["runs"])
    assert len(set(result["runs"][0]["replies"])) > 1  # different prompts, sampled: not one reply repeated
