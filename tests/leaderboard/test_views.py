"""Views over a store of hand-built episodes (test data): board data, `espl leaderboard show|html|export|
import`, and the HTML page rendered by real headless Chromium (rows and charts drawn, prompt shown,
sorting, a prompt that tries to inject markup stays text)."""

from __future__ import annotations

import json
import random
import re
import sqlite3
from html import unescape

import pytest
from typer.testing import CliRunner

from espl.cli import app
from espl.leaderboard.board import board_data
from espl.leaderboard.html import render_html
from espl.leaderboard.store import AgentSpec, EpisodeRecord, Store
from espl.leaderboard.suites import Suite, SuiteEntry
from tests.conftest import require
from tests.leaderboard.chromium import chromium, dump_dom, screenshot

runner = CliRunner()
SUITE = Suite("two-envs", (SuiteEntry("espl/Math-v0", 24), SuiteEntry("espl/Search-v0", 24, samples=2)))
EVIL = '</script><script>document.title="pwned"</script> & <b>not bold</b>'
AGENTS = [("strong", "Think step by step.\nEnd with a line 'Answer: <number>'.", 0.8),
          ("middling", None, 0.5), ("weak", EVIL, 0.2)]


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "lb.db"
    rng = random.Random(0)
    with Store(path) as store:
        for name, prompt, skill in AGENTS:
            aid = store.add_agent(AgentSpec(model="smollm2-135m", system_prompt=prompt, name=name,
                                            sampling={"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 128}))
            run = store.start_run(aid, SUITE, {"test": True})
            recs = []
            for e in SUITE.entries:
                for seed in e.seeds():
                    for k in range(e.samples):
                        ok = rng.random() < skill
                        recs.append(EpisodeRecord(e.env_key, e.env_id, seed, k, f"{e.env_id}#{seed}", float(ok),
                                                  "correct" if ok else "wrong_answer", num_turns=1))
            store.add_episodes(run, recs)
            store.finish_run(run)
    return path


def test_board_data(db):
    with Store(db) as store:
        board = board_data(store)
        only = board_data(store, "espl/Search-v0")
        with pytest.raises(ValueError, match="no episodes of this env"):
            board_data(store, "espl/Nope-v0")
    assert [r["name"] for r in board["rows"]] == ["strong", "middling", "weak"]
    assert board["envs"] == ["espl/Math-v0", "espl/Search-v0"]
    top = board["rows"][0]
    assert top["score"]["episodes"] == 24 + 48 and set(top["per_env"]["espl/Search-v0"]["pass_at_k"]) == {"1", "2"}
    assert sum(top["per_env"]["espl/Math-v0"]["reasons"].values()) == 24
    assert only["env"] == "espl/Search-v0" and all(set(r["per_env"]) == {"espl/Search-v0"} for r in only["rows"])


def test_cli_show_table_and_json(db):
    res = runner.invoke(app, ["leaderboard", "show", "--db", str(db)], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert re.search(r"1 .*strong", res.output) and re.search(r"3 .*weak", res.output)
    res = runner.invoke(app, ["leaderboard", "show", "--db", str(db), "--json", "--env", "espl/Math-v0"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["env"] == "espl/Math-v0" and len(data["rows"]) == 3 and data["rows"][0]["rank"] == 1


def test_cli_refuses_missing_and_foreign_db(tmp_path):
    res = runner.invoke(app, ["leaderboard", "show", "--db", str(tmp_path / "none.db")])
    assert res.exit_code == 1 and "no leaderboard database" in res.output
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE notes (t TEXT)")
    con.commit()
    con.close()
    before = other.read_bytes()
    res = runner.invoke(app, ["leaderboard", "show", "--db", str(other)], terminal_width=200)
    assert res.exit_code == 1 and "another application" in res.output
    assert other.read_bytes() == before


def test_cli_export_import(db, tmp_path):
    out = tmp_path / "board.json"
    assert runner.invoke(app, ["leaderboard", "export", str(out), "--db", str(db)]).exit_code == 0
    fresh = tmp_path / "fresh.db"
    res = runner.invoke(app, ["leaderboard", "import", str(out), "--db", str(fresh)], terminal_width=300)
    assert res.exit_code == 0 and "3 new agents, 3 new runs, 216 new episodes" in res.output
    res = runner.invoke(app, ["leaderboard", "import", str(out), "--db", str(fresh)], terminal_width=300)
    assert "0 new agents, 0 new runs, 0 new episodes" in res.output
    with Store(db) as a, Store(fresh) as b:
        assert board_data(a)["rows"] == board_data(b)["rows"]
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    assert runner.invoke(app, ["leaderboard", "import", str(bad), "--db", str(fresh)]).exit_code == 1


def test_page_is_self_contained(db):
    with Store(db) as store:
        page = render_html(board_data(store))
    assert not re.search(r"""\b(src|href)\s*=""", page)  # nothing loaded from anywhere
    assert re.findall(r"https?://[^\s\"']+", page) == ["http://www.w3.org/2000/svg"]  # an XML namespace name
    assert "</script><script>document.title" not in page  # the prompt cannot end the data block


def test_page_renders_in_headless_chromium(db, tmp_path):
    require(chromium() is not None, "Chromium")
    res = runner.invoke(app, ["leaderboard", "html", "--out", str(tmp_path / "site"), "--db", str(db)])
    assert res.exit_code == 0, res.output
    page = tmp_path / "site" / "index.html"
    with Store(db) as store:
        rows = board_data(store)["rows"]
    weak = rows[2]["agent"]
    url = f"{page.as_uri()}#agent={weak}"
    dom = dump_dom(url, tmp_path / "profile")

    assert 'data-rendered="true"' in dom  # the script ran to its end
    assert re.findall(r'<tr data-agent="([0-9a-f]+)"', dom) == [r["agent"] for r in rows]
    bars = [dict(re.findall(r'([\w-]+)="([^"]*)"', tag)) for tag in re.findall(r'<rect class="bar"[^>]*>', dom)]
    assert len(bars) == 3 * 2 and all(float(b["width"]) >= 1 for b in bars)  # one bar per agent per env, drawn
    widths = {b["data-agent"]: float(b["width"]) for b in bars[:3]}  # first chart (Math-v0): longest = best
    best = max(rows, key=lambda r: r["per_env"]["espl/Math-v0"]["mean"])["agent"]
    assert max(widths, key=widths.get) == best
    prompt = re.search(r'<pre id="d-prompt">(.*?)</pre>', dom, re.S).group(1)
    assert unescape(prompt) == EVIL  # shown as text on selection, not run as markup
    assert "<title>espl-gym leaderboard</title>" in dom  # the injected script did not run

    asc = dump_dom(f"{page.as_uri()}#sort=env:espl/Math-v0&dir=asc", tmp_path / "profile")
    order = re.findall(r'<tr data-agent="([0-9a-f]+)"', asc)
    means = {r["agent"]: r["per_env"]["espl/Math-v0"]["mean"] for r in rows}
    assert [means[a] for a in order] == sorted(means.values())

    shot = screenshot(url, tmp_path / "profile", "leaderboard-page.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
