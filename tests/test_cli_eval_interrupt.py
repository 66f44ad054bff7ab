"""Ctrl-C during `espl eval --out D` (issue 13.5): finished episodes are on disk, the message says how to
continue, and `--continue` completes the evaluation. Real tiny model (SmolLM2-135M) in a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def _lines(path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_ctrl_c_keeps_finished_episodes_and_continue_completes(tmp_path):
    out = tmp_path / "d"
    args = [sys.executable, "-m", "espl", "eval", "--env", "espl/Math-v0", "-n", "12", "--max-batch", "4",
            "--max-new-tokens", "12", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        deadline = time.time() + 600
        while _lines(out / "trajectories.jsonl") < 4 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    kept = (out / "trajectories.jsonl").read_text().splitlines()
    assert proc.returncode == 130, err[-2000:]
    assert 4 <= len(kept) < 12 and len(kept) % 4 == 0  # before: exit 130, nothing printed, nothing written
    assert f"interrupted: {len(kept)} of 12 episodes are in" in err and "--continue" in err, err[-2000:]
    assert "Traceback" not in err

    res = subprocess.run(args + ["--continue", "--json"], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = (out / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 12 and lines[: len(kept)] == kept
    assert sorted({json.loads(line)["seed"] for line in lines}) == list(range(12))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 12


def test_eval_summary_counts_tool_calls(tmp_path):
    """Issue 13.9: the eval summary (JSON and summary.json) counts tool calls and tool errors."""
    out = tmp_path / "t"
    args = [sys.executable, "-m", "espl", "eval", "--env", "espl/ToolMath-v0", "-n", "2", "--max-new-tokens", "32",
            "--out", str(out), "--json"]
    res = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    infos = [json.loads(line)["info"] for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert summary["tool_calls"] == sum(i.get("tool_calls", 0) for i in infos)
    assert summary["tool_errors"] == sum(i.get("tool_errors", 0) for i in infos)
    assert json.loads((out / "summary.json").read_text())["tool_calls"] == summary["tool_calls"]


def test_eval_output_is_quiet_by_default_and_verbose_with_v(tmp_path):
    """Issue 13.9: no "Loading weights" bar or library FutureWarnings by default; -v shows them."""
    args = [sys.executable, "-m", "espl", "eval", "--env", "espl/Math-v0", "-n", "1", "--max-new-tokens", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    quiet = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "Loading weights" not in quiet.stderr + quiet.stdout and "Warning" not in quiet.stderr
    assert "INFO " not in quiet.stderr
    loud = subprocess.run(args + ["-v"], capture_output=True, text=True, env=env, timeout=600)
    # -v turns the library loggers and bars back on; whether transformers draws a "Loading weights" bar depends
    # on the load path (none for the float cache, or when an earlier process disabled HF bars in the env), so
    # the check is the INFO log line of the load, which only -v shows
    assert loud.returncode == 0 and "INFO espl.agents.models: loaded smollm2-135m" in loud.stderr
