"""`espl eval --suite/--db` through the real CLI: bad input fails before any model loads; a real tiny eval
is stored, and running it again runs nothing."""

from __future__ import annotations

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from espl.cli import app

runner = CliRunner()
TINY = '[[env]]\nid = "espl/Math-v0"\nepisodes = 2\n'


def test_unknown_suite_lists_builtins(tmp_path):
    res = runner.invoke(app, ["eval", "--suite", "math-cor", "--db", str(tmp_path / "lb.db")], terminal_width=300)
    assert res.exit_code == 2 and "unknown suite 'math-cor'" in res.output and "math-core" in res.output
    assert not (tmp_path / "lb.db").exists()


def test_suite_with_unregistered_env_fails_before_loading(tmp_path):
    suite = tmp_path / "typo.toml"
    suite.write_text('[[env]]\nid = "espl/Maths-v0"\nepisodes = 2\n')
    res = runner.invoke(app, ["eval", "--suite", str(suite), "--db", str(tmp_path / "lb.db")], terminal_width=300)
    assert res.exit_code == 2 and "espl/Maths-v0" in res.output and "espl/Math-v0" in res.output


def test_foreign_db_is_refused_untouched(tmp_path):
    other = tmp_path / "shop.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE orders (id INTEGER)")
    con.commit()
    con.close()
    before = other.read_bytes()
    res = runner.invoke(app, ["eval", "--suite", "smoke", "--db", str(other)], terminal_width=300)
    assert res.exit_code == 1 and "another application" in res.output
    assert other.read_bytes() == before


def test_suite_and_env_are_exclusive(tmp_path):
    res = runner.invoke(app, ["eval", "--suite", "smoke", "--env", "espl/Math-v0", "--db", str(tmp_path / "x.db")])
    assert res.exit_code != 0


@pytest.mark.slow
def test_real_suite_eval_then_nothing_left(tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    db = tmp_path / "lb.db"
    args = ["eval", "--suite", str(suite), "--db", str(db), "--max-new-tokens", "16", "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    assert out["episodes"] == 2 and out["env"] == ["espl/Math-v0"] and 0 <= out["mean_reward"] <= 1
    assert out["agents"][0]["envs"][0]["ran"] == 2 and out["agents"][0]["run_uuid"]
    again = json.loads(runner.invoke(app, args).stdout)
    assert again["agents"][0]["envs"][0]["ran"] == 0 and again["agents"][0]["envs"][0]["skipped"] == 2
    assert again["agents"][0]["run_uuid"] is None and again["mean_reward"] == out["mean_reward"]
    shown = json.loads(runner.invoke(app, ["leaderboard", "show", "--db", str(db), "--json"]).stdout)
    assert len(shown["rows"]) == 1 and shown["rows"][0]["score"]["episodes"] == 2


def test_server_down_is_a_clear_error(tmp_path):
    # nothing listens there: every request is refused, retried, then reported
    from tests.conftest import closed_port_url

    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    res = runner.invoke(app, ["eval", "--suite", str(suite), "--db", str(tmp_path / "lb.db"), "--base-url",
                              closed_port_url(), "--model", "m", "--api-key", "x"], terminal_width=300)
    assert res.exit_code == 1, res.output
    assert "run the same command again to resume" in res.output
    from espl.leaderboard.store import Store

    with Store(tmp_path / "lb.db") as store:
        assert [r["status"] for r in store.runs()] == ["failed"] and store.counts()["episodes"] == 0
