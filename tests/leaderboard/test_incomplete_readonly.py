"""Incomplete agents are marked (done/planned episodes) in `show`, `export` and the page; a read-only database
works for the reading commands and writing ones say "read-only"; an unwritable `html --out` is one line.
Stores of hand-built episodes (test data); the page is rendered by real headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from espl.cli import app
from espl.leaderboard.board import board_data
from espl.leaderboard.store import AgentSpec, EpisodeRecord, ReadOnlyStoreError, Store
from espl.leaderboard.suites import Suite, SuiteEntry
from tests.conftest import require
from tests.leaderboard.chromium import chromium, dump_dom

runner = CliRunner()
SUITE = Suite("two-envs", (SuiteEntry("espl/Math-v0", 6), SuiteEntry("espl/Search-v0", 3, samples=2)))  # 12 episodes


def fill(path: Path) -> None:
    """'done' ran all 12 planned episodes, 'half' (the better one) stopped after 6 (an interrupted eval)."""
    with Store(path) as store:
        for name, keep, ok in (("done", 12, 0.0), ("half", 6, 1.0)):
            aid = store.add_agent(AgentSpec(model="smollm2-135m", system_prompt=name, name=name))
            run = store.start_run(aid, SUITE, {"test": True})
            recs = [EpisodeRecord(e.env_key, e.env_id, s, k, f"{e.env_id}#{s}", ok, "correct" if ok else "wrong")
                    for e in SUITE.entries for s in e.seeds() for k in range(e.samples)]
            store.add_episodes(run, recs[:keep])
            store.finish_run(run, "complete" if keep == 12 else "interrupted")


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "board" / "lb.db"
    path.parent.mkdir()
    fill(path)
    return path


@contextlib.contextmanager
def read_only(*paths: Path):
    """Make files and folders read-only for this process: permission bits, or for root (whom permission bits
    do not stop) the immutable attribute."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, m in modes.items():
                p.chmod(m)
        return
    done = []
    try:
        for p in paths:
            res = subprocess.run(["chattr", "+i", str(p)], capture_output=True, text=True)
            if res.returncode != 0:
                require(False, f"chattr +i (root cannot make {p} read-only otherwise: {res.stderr.strip()})")
            done.append(p)
        yield
    finally:
        for p in done:
            subprocess.run(["chattr", "-i", str(p)], check=True)


def test_progress_counts_done_and_planned_episodes(db):
    with Store(db) as store:
        rows = {r["name"]: r for r in board_data(store)["rows"]}
        math_only = {r["name"]: r for r in board_data(store, "espl/Math-v0")["rows"]}
    assert rows["half"]["rank"] == 1  # still ranked on what it did ...
    assert rows["half"]["progress"] == {"done": 6, "planned": 12, "complete": False}  # ... and marked
    assert rows["done"]["progress"] == {"done": 12, "planned": 12, "complete": True}
    assert math_only["half"]["progress"] == {"done": 6, "planned": 6, "complete": True}  # per env: its 6 are there


def test_show_and_export_mark_the_incomplete_agent(db, tmp_path):
    res = runner.invoke(app, ["leaderboard", "show", "--db", str(db)], terminal_width=200)
    assert res.exit_code == 0, res.output
    half = next(line for line in res.output.splitlines() if " half" in line)
    done = next(line for line in res.output.splitlines() if " done " in line)
    assert re.search(r"^│ +1 │ half", half) and "6/12 incomplete" in half
    assert "12/12" in done and "incomplete" not in done
    assert "1 agent(s) incomplete" in res.output
    out = tmp_path / "export.json"
    res = runner.invoke(app, ["leaderboard", "export", str(out), "--db", str(db)], terminal_width=200)
    assert res.exit_code == 0 and "(1 agents incomplete)" in res.output
    agents = {a["name"]: a for a in json.loads(out.read_text())["agents"]}
    assert agents["half"]["progress"] == {"done": 6, "planned": 12, "complete": False}
    fresh = tmp_path / "fresh.db"  # the progress field is informational: import takes the export as it is
    assert runner.invoke(app, ["leaderboard", "import", str(out), "--db", str(fresh)]).exit_code == 0
    with Store(fresh) as store:
        assert {r["name"]: r["progress"]["done"] for r in board_data(store)["rows"]} == {"half": 6, "done": 12}


def test_page_marks_the_incomplete_agent(db, tmp_path):
    require(chromium() is not None, "Chromium")
    res = runner.invoke(app, ["leaderboard", "html", "--out", str(tmp_path / "site"), "--db", str(db)])
    assert res.exit_code == 0, res.output
    dom = dump_dom((tmp_path / "site" / "index.html").as_uri(), tmp_path / "profile")
    rows = re.findall(r'<tr data-agent="[0-9a-f]+".*?</tr>', dom, re.S)
    assert len(rows) == 2
    assert re.search(r'class="incomplete"[^>]*>incomplete 6/12<', rows[0])  # 'half', ranked first
    assert "incomplete" not in rows[1]


def test_a_read_only_database_is_read_and_writers_say_read_only(db, tmp_path):
    export = tmp_path / "e.json"
    with Store(db) as store:
        expected = board_data(store)["rows"]
    with read_only(db, db.parent):
        res = runner.invoke(app, ["leaderboard", "show", "--db", str(db), "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["rows"] == expected
        res = runner.invoke(app, ["leaderboard", "export", str(export), "--db", str(db)])
        assert res.exit_code == 0, res.output
        res = runner.invoke(app, ["leaderboard", "html", "--out", str(tmp_path / "site"), "--db", str(db)])
        assert res.exit_code == 0, res.output
        res = runner.invoke(app, ["leaderboard", "import", str(export), "--db", str(db)], terminal_width=300)
        assert res.exit_code == 1 and "read-only" in res.output and "corrupt" not in res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
        with pytest.raises(ReadOnlyStoreError, match="read-only"):
            Store(db)
        with Store(db, read_only=True) as store:
            with pytest.raises(ReadOnlyStoreError):
                store.add_agent(AgentSpec(model="m"))
    assert not (db.parent / "lb.db-wal").exists()  # nothing was written beside it


def test_html_out_on_a_read_only_folder_is_one_line(db, tmp_path):
    site = tmp_path / "ro-site"
    site.mkdir()
    with read_only(site):
        res = runner.invoke(app, ["leaderboard", "html", "--out", str(site / "page"), "--db", str(db)],
                            terminal_width=300)
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "--out" in lines[0] and "cannot write there" in lines[0]
