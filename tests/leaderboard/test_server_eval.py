"""Real `espl eval --suite` processes against a real llama.cpp server (packaged SmolLM2 on 127.0.0.1): two at
once writing one leaderboard database (both agents, runs and episodes stored and ranked); one stopped with
Ctrl-C (SIGINT) keeps its finished episodes, is marked interrupted, and the same command resumes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from espl.leaderboard.board import board_data
from espl.leaderboard.store import Store
from tests.agents.conftest import llama_server  # noqa: F401  (the real server fixture)

pytestmark = pytest.mark.slow

TINY = '[[env]]\nid = "espl/Math-v0"\nepisodes = 3\n'


def test_two_concurrent_server_evals_share_one_db(tmp_path, llama_server):  # noqa: F811
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    db = tmp_path / "lb.db"
    env = {**os.environ, "OPENAI_API_KEY": "not-needed-by-llama.cpp"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", "from espl.cli import main; main()", "eval", "--suite", str(suite), "--db", str(db),
             "--base-url", llama_server, "--model", "smollm2", "--max-new-tokens", "24", "--json",
             "--system-prompt", prompt],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for prompt in ("Answer with a number.", "Think step by step, then write 'Answer: <number>'.")
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out) for out, _ in outs]
    assert all(r["episodes"] == 3 and r["agents"][0]["envs"][0]["ran"] == 3 for r in results)
    with Store(db) as store:
        assert store.counts() == {"agents": 2, "runs": 2, "episodes": 6}
        runs = store.runs()
        board = board_data(store)
    assert all(r["status"] == "complete" for r in runs)
    revision = runs[0]["metadata"]["model_revision"]
    assert revision["kind"] == "server" and revision["base_url"].startswith("http://127.0.0.1:")
    assert {a["backend"] for a in board["rows"]} == {"openai"}
    assert [r["rank"] for r in board["rows"]] == [1, 2] and all(r["rating"]["matches"] == 3 for r in board["rows"])


def test_ctrl_c_marks_run_interrupted_and_keeps_episodes(tmp_path, llama_server):  # noqa: F811
    import signal
    import time

    suite = tmp_path / "six.toml"
    suite.write_text('[[env]]\nid = "espl/Math-v0"\nepisodes = 6\n')
    db = tmp_path / "lb.db"
    args = [sys.executable, "-c", "from espl.cli import main; main()", "eval", "--suite", str(suite), "--db", str(db),
            "--base-url", llama_server, "--model", "smollm2", "--max-new-tokens", "48", "--chunk-size", "1"]
    env = {**os.environ, "OPENAI_API_KEY": "not-needed-by-llama.cpp"}
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    def stored() -> int:
        try:
            with Store(db) as store:
                return store.counts()["episodes"]
        except Exception:  # not created yet
            return 0

    deadline = time.time() + 300
    while stored() < 1 and child.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert child.poll() is None, child.stdout.read()[-2000:]
    child.send_signal(signal.SIGINT)  # what Ctrl-C sends
    child.communicate(timeout=120)
    with Store(db) as store:
        kept = store.counts()["episodes"]
        assert [r["status"] for r in store.runs()] == ["interrupted"] and 1 <= kept < 6
    resumed = subprocess.run(args + ["--json"], capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    env_result = json.loads(resumed.stdout)["agents"][0]["envs"][0]
    assert (env_result["ran"], env_result["skipped"], env_result["score"]["episodes"]) == (6 - kept, kept, 6)
