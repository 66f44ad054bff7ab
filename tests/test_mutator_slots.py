"""benchmarks/mutator_slots.py on the packaged SmolLM2 GGUF: its JSON and the reproducibility it reports."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import load_script, require

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mutator_slots.py"


def test_one_slot_runs_report_equal_replies_and_write_every_run(tmp_path):
    require(importlib.util.find_spec("xllamacpp") is not None, "xllamacpp (llama.cpp server)")
    out = tmp_path / "slots.json"
    result = load_script(SCRIPT).main(["--model", "smollm2-135m", "--requests", "3", "--tokens", "6",
                                       "--repeats", "2", "--slots", "1", "2", "--out", str(out)])
    assert json.loads(out.read_text())["summary"] == result["summary"]
    one, two = result["summary"]["1"], result["summary"]["2"]
    assert one["replies_differing_from_first_run"] == [0]  # 1 slot: the same replies from a fresh server
    assert len(two["replies_differing_from_first_run"]) == 1  # its second run against its first
    assert two["time_ratio_vs_first"] == pytest.approx(two["median_seconds"] / one["median_seconds"])
    assert [r["slots"] for r in result["runs"]] == [1, 2, 1, 2]  # interleaved: load drift hits both alike
    assert all(len(r["replies"]) == 3 and r["tokens"] > 0 for r in result["runs"])
    assert len(set(result["runs"][0]["replies"])) > 1  # different prompts, sampled: not one reply repeated
