"""Real evals with the packaged SmolLM2-135M (transformers backend) on espl/Math-v0: an eval killed with
SIGKILL midway keeps its finished episodes and resumes; a second agent joins; the board and the HTML page
(rendered by headless Chromium) show the real results; a finished suite is not run again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from espl.leaderboard.board import board_data
from espl.leaderboard.html import write_html
from espl.leaderboard.runner import agent_spec, run_suite
from espl.leaderboard.store import Store
from espl.leaderboard.suites import load_suite
from espl.types import SamplingParams
from tests.conftest import require
from tests.leaderboard.chromium import chromium, dump_dom, screenshot

pytestmark = pytest.mark.slow

SUITE_TOML = """
name = "tiny-math"
[[env]]
id = "espl/Math-v0"
episodes = 4
seed = 0
"""
PARAMS = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=24, seed=0)
PROMPT = "Solve the problem. End with a line 'Answer: <number>'."

CHILD = textwrap.dedent("""
    import sys
    from espl.agents.hf import HFPolicy
    from espl.leaderboard.runner import agent_spec, run_suite
    from espl.leaderboard.store import Store
    from espl.leaderboard.suites import load_suite
    from espl.types import SamplingParams

    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=24, seed=0)
    policy = HFPolicy(model="smollm2-135m")
    with Store(sys.argv[1]) as store:
        run_suite(store, load_suite(sys.argv[2]), agent_spec("smollm2-135m", params, system_prompt=None,
                  backend="hf"), policy, params, chunk_size=1)
""")


def _stored(db) -> int:
    if not os.path.exists(db):
        return 0
    try:
        with Store(db) as store:
            return store.counts()["episodes"]
    except Exception:  # the child may be creating the schema right now
        return 0


def test_real_eval_killed_resumed_ranked_and_rendered(tmp_path):
    suite_file = tmp_path / "tiny.toml"
    suite_file.write_text(SUITE_TOML)
    db = tmp_path / "lb.db"

    # 1. a real eval in a child process, killed with SIGKILL once it has stored an episode
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(suite_file)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while _stored(db) < 1 and child.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert child.poll() is None, f"the eval ended before it could be killed:\n{child.stdout.read()[-3000:]}"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with Store(db) as store:  # the database is intact and the finished episodes are there
        kept = store.counts()["episodes"]
        assert 1 <= kept < 4
        assert [r["status"] for r in store.runs()] == ["running"]  # killed: never marked finished

    # 2. re-running the same agent runs only what is missing
    from espl.agents.hf import HFPolicy

    policy = HFPolicy(model="smollm2-135m")
    suite = load_suite(suite_file)
    plain = agent_spec("smollm2-135m", PARAMS, system_prompt=None, backend="hf")
    with Store(db) as store:
        res = run_suite(store, suite, plain, policy, PARAMS, chunk_size=2)
        assert (res.envs[0].ran, res.envs[0].skipped) == (4 - kept, kept)
        assert res.envs[0].score.episodes == 4 and sum(res.envs[0].reasons.values()) == 4
        # 3. a second agent (same model, a system prompt) on the same tasks
        prompted = agent_spec("smollm2-135m", PARAMS, system_prompt=PROMPT, backend="hf")
        run_suite(store, suite, prompted, policy, PARAMS, chunk_size=4)
        # 4. a finished suite is not run again (no model needed) and adds no agent or run
        again = run_suite(store, suite, plain, None, PARAMS)
        assert again.run_uuid is None and again.envs[0].ran == 0 and again.envs[0].skipped == 4
        assert store.counts() == {"agents": 2, "runs": 3, "episodes": 8}
        eps = store.episodes(full=True)
        meta = store.runs()[-1]["metadata"]
        board = board_data(store)

    assert {e["task_id"] for e in eps if e["agent_hash"] == plain.content_hash} == \
        {e["task_id"] for e in eps if e["agent_hash"] == prompted.content_hash}  # same tasks, comparable
    assert all(e["rendered_prompt"] and e["messages"][-1]["role"] == "assistant" for e in eps)
    assert any(PROMPT in e["rendered_prompt"] for e in eps)
    assert meta["model_revision"]["kind"] == "gguf" and len(meta["model_revision"]["sha256"]) == 64
    assert meta["packages"]["torch"] and meta["system_prompt"] == PROMPT and meta["suite"]["name"] == "tiny-math"
    assert len(board["rows"]) == 2 and all(r["rating"]["matches"] == 4 for r in board["rows"])

    # 5. the page shows the real results
    require(chromium() is not None, "Chromium")
    page = write_html(board, tmp_path / "site")
    dom = dump_dom(f"{page.as_uri()}#agent={prompted.content_hash}", tmp_path / "profile")
    assert re.findall(r'<tr data-agent="([0-9a-f]+)"', dom) == [r["agent"] for r in board["rows"]]
    assert len(re.findall(r'<rect class="bar"', dom)) == 2
    assert "Answer: &lt;number&gt;" in dom
    screenshot(page.as_uri() + f"#agent={prompted.content_hash}", tmp_path / "profile", "leaderboard-real-eval.png")
