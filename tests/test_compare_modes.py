"""benchmarks/compare_modes.py: its statistics and its report, from rows of the shape its runs write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_modes.py"


@pytest.fixture(scope="module")
def cm():
    return load_script(SCRIPT)


def test_wilson_and_seed_intervals(cm):
    lo, hi = cm.wilson(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))  # textbook values
    assert cm.wilson(0, 20)[0] == pytest.approx(0.0, abs=1e-12) and cm.wilson(0, 20)[1] > 0
    lo, hi = cm.seed_ci([0.5, 0.6, 0.7])  # mean 0.6, s 0.1, t(0.975, 2) = 4.303
    assert (lo, hi) == (pytest.approx(0.6 - 4.303 * 0.1 / 3**0.5), pytest.approx(0.6 + 4.303 * 0.1 / 3**0.5))


def row(mode, seed, outcomes, no_prompt):
    acc = sum(outcomes) / len(outcomes)
    return {"mode": mode, "seed": seed, "acc": acc, "acc_ci": [0, 1], "acc_newest": acc,
            "acc_no_prompt": sum(no_prompt) / len(no_prompt), "outcomes": outcomes, "outcomes_no_prompt": no_prompt,
            "paired_better": sum(a > b for a, b in zip(outcomes, no_prompt)),
            "paired_worse": sum(a < b for a, b in zip(outcomes, no_prompt))}


def test_report_only_writes_the_table_with_paired_counts(tmp_path):
    rows = [row("espl", 0, [1, 1, 0, 0], [1, 0, 0, 0]), row("espl", 1, [1, 0, 1, 0], [1, 0, 1, 0]),
            row("rl", 0, [0, 1, 0, 0], [0, 1, 0, 0]), row("rl", 1, [1, 1, 1, 0], [1, 1, 1, 0])]
    (tmp_path / "results.json").write_text(json.dumps(rows))
    out = subprocess.run([sys.executable, str(SCRIPT), "--report-only", "--modes", "espl", "rl", "--seeds", "0", "1",
                          "--out", str(tmp_path), "--model", "m"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    table = (tmp_path / "table.md").read_text()
    assert "| espl | 2 | 0.500 |" in table and "| rl | 2 | 0.500 |" in table
    # espl - rl, task by task: seed 0 wins task 0; seed 1 loses task 1 -> 1 won / 1 lost, mean difference 0
    assert "| espl − rl | 2 | +0.000 |" in table and table.rstrip().endswith("| 1/1 | 1 |")  # 1 won, 1 lost: exact McNemar p = 1
    assert (tmp_path / "modes.png").stat().st_size > 1000


def test_report_only_tasks_rescores_each_row_on_its_first_tasks(tmp_path, cm):
    """`--tasks N`: rows evaluated on more tasks than the split has (seeds wrapped around) scored on the first N."""
    rows = [row("espl", 0, [1, 1, 0, 0, 1], [1, 0, 0, 0, 0]), row("rl", 0, [0, 1, 0, 0, 0], [0, 1, 0, 0, 1])]
    for r in rows:
        r["outcomes_newest"], r["n_eval"] = r["outcomes"], len(r["outcomes"])
    (tmp_path / "results.json").write_text(json.dumps(rows))
    rescored = [cm.first_tasks(r, 4, 1) for r in rows]
    assert [r["acc"] for r in rescored] == [0.5, 0.25] and rescored[0]["paired_better"] == 1
    assert rescored[1]["acc_no_prompt"] == 0.25 and rescored[0]["n_eval"] == 4 and rescored[0]["scored_tasks"] == 4
    with pytest.raises(SystemExit, match="has only 5"):
        cm.first_tasks(rows[0], 6, 1)
    report = tmp_path / "r4"
    out = subprocess.run([sys.executable, str(SCRIPT), "--report-only", "--tasks", "4", "--modes", "espl", "rl",
                          "--seeds", "0", "--out", str(tmp_path), "--report-dir", str(report), "--model", "m"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| espl | 1 | 0.500 |" in (report / "table.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())[0]["acc"] == 0.6  # the original rows are kept


def _write_rows(script: str, path: str, mode: str, seeds: list[int]) -> None:
    mod = load_script(Path(script))
    for seed in seeds:
        mod.merge_row(Path(path), row(mode, seed, [1, 0, 1, 1], [0, 0, 1, 0]))


def test_processes_sharing_one_report_dir_lose_no_rows(tmp_path, cm):
    # Two processes writing rows into one results.json at once (one per mode) keep every row: the file is
    # re-read under a lock on each write, and a rerun of a (mode, seed) replaces its row rather than adding one.
    import multiprocessing

    path = tmp_path / "results.json"
    cm.merge_row(path, row("evolve", 0, [0, 0, 0, 1], [0, 0, 0, 1]))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_rows, args=(str(SCRIPT), str(path), mode, list(range(20)))) for mode in ("espl", "rl")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = json.loads(path.read_text())
    assert sorted((r["mode"], r["seed"]) for r in rows) == sorted(
        [("evolve", 0)] + [(m, s) for m in ("espl", "rl") for s in range(20)])
    merged = cm.merge_row(path, row("evolve", 0, [1, 1, 1, 1], [0, 0, 0, 1]))
    assert len(merged) == 41 and [r["acc"] for r in merged if r["mode"] == "evolve"] == [1.0]
    assert not list(tmp_path.glob("*.tmp*"))
