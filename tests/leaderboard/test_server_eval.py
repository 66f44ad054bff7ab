"""Two real `espl eval --suite` processes at once, both against a real llama.cpp server (packaged SmolLM2
on 127.0.0.1), writing one leaderboard database: both agents, runs and episodes are stored and ranked."""

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
    for p, (out, err) in zip(procs, outs):
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
