"""The SQLite store: identity of agents, resumable episodes, 8 concurrent writers, foreign/corrupt files,
export/import. Episodes here are hand-built records (test data), written through the real store."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sqlite3

import pytest

from tests.conftest import require

from espl.leaderboard.store import (
    APPLICATION_ID, AgentSpec, EpisodeRecord, Store, StoreError, default_db_path,
)
from espl.leaderboard.suites import Suite, SuiteEntry

SUITE = Suite(name="t", entries=(SuiteEntry("espl/Math-v0", episodes=6, seed=10, samples=2),))
ENTRY = SUITE.entries[0]


def record(seed: int, sample: int = 0, reward: float = 1.0, entry: SuiteEntry = ENTRY) -> EpisodeRecord:
    return EpisodeRecord(env_key=entry.env_key, env_id=entry.env_id, seed=seed, sample=sample,
                         task_id=f"task-{seed}", reward=reward, reason="correct" if reward else "wrong_answer",
                         num_turns=1, messages=[{"role": "user", "content": f"q{seed}"}])


def agent(prompt: str | None = "Be careful.", **kw) -> AgentSpec:
    return AgentSpec(model="smollm2-135m", system_prompt=prompt,
                     sampling={"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 64, **kw})


def test_same_agent_same_row_new_runs(tmp_path):
    with Store(tmp_path / "lb.db") as store:
        a1 = store.add_agent(agent())
        a2 = store.add_agent(agent())
        a3 = store.add_agent(agent(seed=5))  # the per-episode seed is not part of an agent's identity
        b = store.add_agent(agent(temperature=0.0))
        c = store.add_agent(agent(prompt=None))
        assert a1 == a2 == a3 and len({a1, b, c}) == 3
        store.start_run(a1, SUITE, {})
        store.start_run(a1, SUITE, {})
        assert store.counts() == {"agents": 3, "runs": 2, "episodes": 0}
        assert [a["name"] for a in store.agents()][2] == "smollm2-135m · no prompt"


def test_database_is_wal_and_marked(tmp_path):
    path = tmp_path / "lb.db"
    Store(path).close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    con.close()


def test_resume_skips_stored_episodes_and_repeats_are_ignored(tmp_path):
    with Store(tmp_path / "lb.db") as store:
        aid = store.add_agent(agent())
        assert len(store.missing_episodes(aid, ENTRY)) == 12  # 6 seeds x 2 samples
        run = store.start_run(aid, SUITE, {})
        assert store.add_episodes(run, [record(10, 0), record(10, 1), record(11, 0)]) == 3
        # "interrupted" here: the run never finishes; a new run of the same agent resumes
        run2 = store.start_run(aid, SUITE, {})
        missing = store.missing_episodes(aid, ENTRY)
        assert missing[:2] == [(11, 1), (12, 0)] and len(missing) == 9
        assert store.add_episodes(run2, [record(10, 0, reward=0.0), record(11, 1)]) == 1  # (10, 0) is kept
        assert [e["reward"] for e in store.episodes() if (e["seed"], e["sample"]) == (10, 0)] == [1.0]
        store.finish_run(run2)
        assert [r["status"] for r in store.runs()] == ["running", "complete"]


def _writer(path: str, worker: int, barrier, queue) -> None:
    """One of 8 processes: opens the (possibly new) db, writes a shared agent's episodes that overlap every
    other worker's, and its own agent's episodes, in small transactions."""
    barrier.wait()
    new = 0
    with Store(path) as store:
        shared = store.add_agent(agent("shared"))
        own = store.add_agent(agent(f"worker {worker}"))
        run_s = store.start_run(shared, SUITE, {"worker": worker})
        run_o = store.start_run(own, SUITE, {"worker": worker})
        for start in range(0, 60, 5):
            # every worker writes the same 60 shared episodes (in a different order): 60 rows in the end
            seeds = [(worker * 7 + s) % 60 for s in range(start, start + 5)]
            new += store.add_episodes(run_s, [record(s) for s in seeds])
            new += store.add_episodes(run_o, [record(s, reward=0.5) for s in range(start, start + 5)])
    queue.put((worker, new))


def test_eight_processes_write_one_database(tmp_path):
    path = str(tmp_path / "lb.db")  # not created yet: the 8 processes also race to create the schema
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(path, w, barrier, queue)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * 8
    reported = dict(queue.get(timeout=5) for _ in range(8))
    with Store(path) as store:
        counts = store.counts()
        eps = store.episodes()
    assert counts == {"agents": 9, "runs": 16, "episodes": 60 + 8 * 60}
    keys = [(e["agent_hash"], e["env_key"], e["seed"], e["sample"]) for e in eps]
    assert len(keys) == len(set(keys))
    assert sum(reported.values()) == counts["episodes"]  # every insert that said "new" is there, no more


def _assert_refused_untouched(path, match):
    before = path.read_bytes()
    with pytest.raises(StoreError, match=match):
        Store(path)
    assert path.read_bytes() == before
    assert not os.path.exists(f"{path}-wal") and not os.path.exists(f"{path}-journal")


def test_random_bytes_file_is_refused_untouched(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(os.urandom(5000))
    _assert_refused_untouched(path, "not an SQLite database")


def test_foreign_sqlite_database_is_refused_untouched(tmp_path):
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO customers (name) VALUES ('Ada')")
    con.commit()
    con.close()
    _assert_refused_untouched(path, "another application.*customers")


def test_corrupt_leaderboard_database_is_refused_untouched(tmp_path):
    path = tmp_path / "lb.db"
    with Store(path) as store:
        run = store.start_run(store.add_agent(agent()), SUITE, {})
        store.add_episodes(run, [record(s) for s in range(10, 16)])
    con = sqlite3.connect(path)  # fold the WAL into the main file, then damage its pages
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("PRAGMA journal_mode = DELETE")
    con.close()
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page + 10: len(data)] = b"\xff" * (len(data) - page - 10)
    path.write_bytes(bytes(data))
    _assert_refused_untouched(path, "corrupt")


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "lb.db"
    Store(path).close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(StoreError, match="newer espl-gym"):
        Store(path)


def test_directory_path_is_refused(tmp_path):
    with pytest.raises(StoreError, match="is a directory"):
        Store(tmp_path)


def test_export_import_round_trip_is_idempotent(tmp_path):
    with Store(tmp_path / "a.db") as a:
        aid = a.add_agent(agent())
        run = a.start_run(aid, SUITE, {"seeds": [10, 11]})
        a.add_episodes(run, [record(10), record(11, reward=0.0)])
        a.finish_run(run)
        data = json.loads(json.dumps(a.export_data()))
    with Store(tmp_path / "b.db") as b:
        b.add_agent(agent(prompt="another"))
        assert b.import_data(data) == {"agents": 1, "runs": 1, "episodes": 2}
        assert b.import_data(data) == {"agents": 0, "runs": 0, "episodes": 0}
        again = b.export_data()
    assert [e["reward"] for e in again["episodes"]] == [1.0, 0.0]
    meta = again["runs"][0]["metadata"]
    assert {k: v for k, v in meta.items() if k != "suite"} == {"seeds": [10, 11]}
    assert meta["suite"]["entries"] and meta["suite"]["hash"] == SUITE.content_hash  # start_run records the plan
    assert {x["hash"] for x in again["agents"]} >= {x["hash"] for x in data["agents"]}


def test_import_rejects_other_json(tmp_path):
    with Store(tmp_path / "b.db") as b:
        with pytest.raises(StoreError, match="not an espl leaderboard export"):
            b.import_data({"rows": []})
        with pytest.raises(StoreError, match="malformed export"):
            b.import_data({"format": "espl-leaderboard", "version": 1, "agents": [{"hash": "x"}], "runs": [],
                           "episodes": []})
        assert b.counts() == {"agents": 0, "runs": 0, "episodes": 0}


def test_default_path_is_in_user_data_dir(monkeypatch):
    monkeypatch.delenv("ESPL_LEADERBOARD_DB", raising=False)
    assert default_db_path().name == "leaderboard.db" and "espl-gym" in str(default_db_path())
    monkeypatch.setenv("ESPL_LEADERBOARD_DB", "/tmp/x.db")
    assert str(default_db_path()) == "/tmp/x.db"


def test_explicit_name_renames_existing_agent(tmp_path):
    with Store(tmp_path / "lb.db") as store:
        first = store.add_agent(agent())
        again = store.add_agent(AgentSpec(**{**agent().__dict__, "name": "baseline"}))
        store.add_agent(agent())  # no name given: the stored one stays
        assert first == again and [a["name"] for a in store.agents()] == ["baseline"]


def test_read_only_database_is_a_clear_error(tmp_path):
    path = tmp_path / "lb.db"
    path.write_bytes(b"")  # an empty file is ours to initialise, but this one cannot be written
    path.chmod(0o444)
    tmp_path.chmod(0o555)
    immutable = False
    try:
        if os.access(path, os.W_OK):  # root writes read-only files: make the file immutable instead
            tmp_path.chmod(0o755)
            res = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
            require(res.returncode == 0, "chattr +i (a file root cannot write)")
            immutable = True
        with pytest.raises(StoreError, match="read-only"):
            Store(path)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        tmp_path.chmod(0o755)
