"""The leaderboard's SQLite store: agents, runs, per-episode results and reproducibility metadata.

- **Agents** are unique by a content hash of what decides their behaviour (backend, model, system prompt,
  sampling settings, adapter weights): evaluating the same agent again adds a run, never a second agent.
- **Runs** record one evaluation of an agent on a suite, with metadata (package versions, seeds, model
  revision, prompt text and hash, git sha when available).
- **Episodes** hold one reward and reason each, unique by (agent, env config, seed, sample). They are
  written as they finish, so an interrupted eval keeps what it did, and re-running the same agent on the
  same suite skips the episodes already stored (`missing_episodes`).

Several processes may write one database at once (e.g. 8 evals in parallel): the file is in WAL mode,
every write is one `BEGIN IMMEDIATE` transaction (writers queue on the lock, `busy_timeout` waits for it)
and unique constraints turn a repeated insert into a no-op, so no row is lost or duplicated.

A file that is not an espl leaderboard database (another SQLite app's, a corrupt one, random bytes) is
refused with `StoreError` before anything writes to it: it is first inspected read-only.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from espl.leaderboard.suites import Suite, SuiteEntry, sha256_json

APPLICATION_ID = 0x4553504C  # "ESPL": marks the file as ours (SQLite header offset 68)
SCHEMA_VERSION = 1  # PRAGMA user_version
BUSY_TIMEOUT_MS = 60_000  # a writer waits this long for the lock before giving up
SQLITE_MAGIC = b"SQLite format 3\x00"
EXPORT_FORMAT = "espl-leaderboard"

SCHEMA = """
CREATE TABLE agents (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,          -- content hash of the fields below but `name`
    name TEXT NOT NULL,
    backend TEXT NOT NULL,              -- hf | openai | vllm
    model TEXT NOT NULL,
    system_prompt TEXT,                 -- NULL: no system prompt
    placement TEXT NOT NULL,            -- system: the system message; user: atop the first user message
    prompt_hash TEXT NOT NULL,
    sampling_json TEXT NOT NULL,
    adapter TEXT,                       -- where the adapter was read from (display only)
    adapter_hash TEXT,                  -- content hash of the adapter weights (identity)
    created_at TEXT NOT NULL
);
CREATE TABLE env_configs (
    env_key TEXT PRIMARY KEY,           -- env id, or env id + hash of split and kwargs
    env_id TEXT NOT NULL,
    split TEXT NOT NULL,
    kwargs_json TEXT NOT NULL
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    agent_id INTEGER NOT NULL REFERENCES agents(id),
    suite TEXT NOT NULL,
    suite_hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed', 'interrupted')),
    started_at TEXT NOT NULL,
    finished_at TEXT,
    metadata_json TEXT NOT NULL
);
CREATE TABLE episodes (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    agent_id INTEGER NOT NULL REFERENCES agents(id),
    env_key TEXT NOT NULL REFERENCES env_configs(env_key),
    env_id TEXT NOT NULL,
    seed INTEGER NOT NULL,
    sample INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    reward REAL NOT NULL,
    reason TEXT NOT NULL,
    num_turns INTEGER NOT NULL,
    truncated INTEGER NOT NULL,
    info_json TEXT NOT NULL,
    messages_json TEXT NOT NULL,
    rendered_prompt TEXT,
    created_at TEXT NOT NULL,
    UNIQUE (agent_id, env_key, seed, sample)
);
CREATE INDEX episodes_task ON episodes (env_key, seed);
CREATE INDEX runs_agent ON runs (agent_id);
"""


class StoreError(RuntimeError):
    """The database cannot be used (not ours, corrupt, newer schema); the file was not modified."""


class ReadOnlyStoreError(StoreError):
    """The database (or its folder) is read-only: reading commands work, writing ones cannot."""


def _read_only_error(path: Path, why: str) -> ReadOnlyStoreError:
    return ReadOnlyStoreError(
        f"--db {path}: the database is read-only ({why}); `espl leaderboard show/html/export` read it as it is, "
        "commands that store results need a writable file and folder (or another --db)")


def _unwritable(path: Path) -> str | None:
    """Why a writer cannot use `path` (the file, or the folder SQLite keeps its -wal/-shm files in), or None."""
    folder = path.parent if path.parent != Path("") else Path(".")
    if path.exists() and not os.access(path, os.W_OK):
        return "the file is not writable"
    if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
        return f"its folder {folder} is not writable"
    return None


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection. A WAL database in a folder we cannot write keeps no -shm file there, which
    `mode=ro` needs; it is then opened `immutable=1` (SQLite reads the file as it is, with no locking)."""
    uri = path.resolve().as_uri()
    con = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return con
    except sqlite3.OperationalError as exc:
        con.close()
        if _unwritable(path) is None or "unable to open" not in str(exc):
            raise
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_db_path() -> Path:
    """`<user data dir>/espl-gym/leaderboard.db` (platformdirs), or $ESPL_LEADERBOARD_DB when set."""
    env = os.environ.get("ESPL_LEADERBOARD_DB")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("espl-gym", appauthor=False)) / "leaderboard.db"


# ---- records -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AgentSpec:
    """What makes an agent: backend, model, system prompt, sampling settings and adapter weights."""

    model: str
    backend: str = "hf"
    system_prompt: str | None = None
    placement: str = "system"  # where the env puts the prompt: "system" message or into the "user" message
    sampling: dict[str, Any] = field(default_factory=dict)  # SamplingParams fields but the per-episode seed
    adapter: str | None = None
    adapter_hash: str | None = None
    name: str | None = None  # display name; not part of the identity

    @property
    def prompt_hash(self) -> str:
        return sha256_json(self.system_prompt)[:16]

    @property
    def content_hash(self) -> str:
        return sha256_json({
            "backend": self.backend, "model": self.model, "system_prompt": self.system_prompt,
            "placement": self.placement, "sampling": {k: v for k, v in self.sampling.items() if k != "seed"},
            "adapter_hash": self.adapter_hash,
        })

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        prompt = "no prompt" if self.system_prompt is None else f"prompt {self.prompt_hash[:6]}"
        adapter = f" + adapter {self.adapter_hash[:6]}" if self.adapter_hash else ""
        return f"{self.model}{adapter} · {prompt}"


@dataclass(frozen=True)
class EpisodeRecord:
    """One finished episode as stored: where it ran (env config, seed, sample) and how it scored."""

    env_key: str
    env_id: str
    seed: int
    sample: int
    task_id: str
    reward: float
    reason: str
    num_turns: int = 0
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    rendered_prompt: str | None = None

    @classmethod
    def from_trajectory(cls, traj: Any, entry: SuiteEntry, seed: int, sample: int) -> "EpisodeRecord":
        return cls(
            env_key=entry.env_key, env_id=entry.env_id, seed=seed, sample=sample,
            task_id=str(traj.task_id), reward=float(traj.reward), reason=str(traj.reason),
            num_turns=int(traj.num_turns), truncated=bool(traj.truncated), info=dict(traj.info or {}),
            messages=[dict(m) for m in traj.messages], rendered_prompt=traj.rendered_prompt,
        )


@dataclass(frozen=True)
class RunHandle:
    id: int
    uuid: str
    agent_id: int


# ---- opening -----------------------------------------------------------------------------------------
def inspect_file(path: Path) -> None:
    """Raise StoreError unless `path` is missing, empty, or an espl leaderboard database in good order.

    Reads only: the header bytes, then a read-only SQLite connection. Nothing is written to a file that
    fails, so a user's other database is never touched.
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    if path.is_dir():
        raise StoreError(f"--db {path}: is a directory; give a file path such as {path / 'leaderboard.db'}")
    with open(path, "rb") as f:
        header = f.read(100)
    if not header.startswith(SQLITE_MAGIC):
        raise StoreError(
            f"--db {path}: not an SQLite database (its first bytes are not 'SQLite format 3'); the file was "
            "left untouched. Choose another path with --db."
        )
    try:
        con = connect_read_only(path)
    except sqlite3.Error as exc:
        raise StoreError(f"--db {path}: cannot open it read-only ({exc}); the file was left untouched") from None
    try:
        app_id = con.execute("PRAGMA application_id").fetchone()[0]
        version = con.execute("PRAGMA user_version").fetchone()[0]
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        if app_id != APPLICATION_ID:
            if not tables:
                return  # an empty SQLite file: ours to initialise
            raise StoreError(
                f"--db {path}: an SQLite database of another application (application_id {app_id:#x}, tables "
                f"{', '.join(sorted(tables)[:5])}); the file was left untouched. Choose another path with --db."
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"--db {path}: written by a newer espl-gym (schema {version}, this one reads {SCHEMA_VERSION}); "
                "upgrade espl-gym or choose another --db"
            )
        check = con.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            raise StoreError(f"--db {path}: database is corrupt ({check[0][0]}); the file was left untouched")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"--db {path}: database is corrupt or unreadable ({exc}); the file was left untouched") from None
    finally:
        con.close()


class Store:
    """A connection to one leaderboard database. Open one per process (or thread); close when done.

    `read_only=True` (what `leaderboard show/html/export` use): the file must exist and is never written,
    so a database on a read-only disk or in someone else's folder can be viewed. A writing store refuses a
    read-only database with `ReadOnlyStoreError` ("read-only", not "corrupt").
    """

    def __init__(self, path: str | Path | None = None, *, read_only: bool = False):
        self.path = Path(path).expanduser() if path is not None else default_db_path()
        self.read_only = read_only
        inspect_file(self.path)
        if read_only:
            if not self.path.is_file() or self.path.stat().st_size == 0:
                raise StoreError(f"--db {self.path}: no leaderboard stored there yet; run `espl eval --suite smoke "
                                 "--model ...` first, or pass --db PATH")
            self._con = connect_read_only(self.path)
            self._con.row_factory = sqlite3.Row
            return
        why = _unwritable(self.path)
        if why is not None:
            raise _read_only_error(self.path, why)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every write below is an explicit BEGIN IMMEDIATE
        self._con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        self._con.row_factory = sqlite3.Row
        self._con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._con.execute("PRAGMA foreign_keys = ON")
        try:
            self._init_schema()
        except sqlite3.OperationalError as exc:  # read-only file or folder, full disk, lock held too long
            self._con.close()
            if "readonly" in str(exc) or "read-only" in str(exc):
                raise _read_only_error(self.path, str(exc)) from None
            raise StoreError(f"--db {self.path}: cannot write to it ({exc}); check its permissions and free space") from None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. BEGIN IMMEDIATE takes the write lock up front, so two writers never both
        read-then-write (the deadlock that plain BEGIN can give); busy_timeout queues them."""
        if self.read_only:
            raise _read_only_error(self.path, "opened read-only")
        self._con.execute("BEGIN IMMEDIATE")
        try:
            yield self._con
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    def _init_schema(self) -> None:
        # WAL lets readers go on while one process writes; the setting is stored in the file. Several new
        # processes may race to create the schema: the first to take the write lock does it, others see it.
        for attempt in range(50):
            try:
                mode = self._con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:  # "database is locked" while another process switches
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.05 * (attempt + 1))
        if mode.lower() != "wal":
            raise StoreError(f"--db {self.path}: could not switch to WAL mode (got {mode!r}); is it on a network drive?")
        with self._write() as con:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                # executescript would COMMIT our BEGIN IMMEDIATE first: run the statements one by one
                for statement in re.sub(r"--[^\n]*", "", SCHEMA).split(";"):
                    if statement.strip():
                        con.execute(statement)
                con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # ---- writes ------------------------------------------------------------------------------------------
    def add_agent(self, spec: AgentSpec) -> int:
        """The id of the agent with this content hash, inserting it when new (never a duplicate). An explicit
        `spec.name` renames an existing agent; without one the stored name is kept."""
        with self._write() as con:
            agent_id = self._add_agent(con, spec.content_hash, spec.display_name, spec.backend, spec.model,
                                       spec.system_prompt, spec.placement, spec.prompt_hash,
                                       json.dumps(spec.sampling, sort_keys=True), spec.adapter, spec.adapter_hash,
                                       utc_now())
            if spec.name:
                con.execute("UPDATE agents SET name = ? WHERE id = ?", (spec.name, agent_id))
            return agent_id

    @staticmethod
    def _add_agent(con: sqlite3.Connection, agent_hash: str, *values: Any) -> int:
        con.execute(
            "INSERT INTO agents (hash, name, backend, model, system_prompt, placement, prompt_hash, sampling_json,"
            " adapter, adapter_hash, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(hash) DO NOTHING",
            (agent_hash, *values),
        )
        return con.execute("SELECT id FROM agents WHERE hash = ?", (agent_hash,)).fetchone()[0]

    def start_run(self, agent_id: int, suite: Suite, metadata: dict[str, Any]) -> RunHandle:
        """A new run of the agent on `suite`. The metadata records the suite's entries (what `progress`
        counts as planned) unless the caller already put them there."""
        run_uuid = uuid.uuid4().hex
        if "suite" not in metadata:
            metadata = {**metadata, "suite": {"name": suite.name, "source": suite.source, "hash": suite.content_hash,
                                              "entries": suite_entries(suite)}}
        with self._write() as con:
            for e in suite.entries:
                con.execute("INSERT OR IGNORE INTO env_configs VALUES (?,?,?,?)",
                            (e.env_key, e.env_id, e.split, json.dumps(e.env_kwargs, sort_keys=True)))
            cur = con.execute(
                "INSERT INTO runs (uuid, agent_id, suite, suite_hash, status, started_at, metadata_json)"
                " VALUES (?,?,?,?,'running',?,?)",
                (run_uuid, agent_id, suite.name, suite.content_hash, utc_now(), json.dumps(metadata, default=str)),
            )
            return RunHandle(id=int(cur.lastrowid or 0), uuid=run_uuid, agent_id=agent_id)  # set by the INSERT

    def add_episodes(self, run: RunHandle, records: Sequence[EpisodeRecord]) -> int:
        """Store finished episodes in one transaction; returns how many were new (repeats are ignored)."""
        now = utc_now()
        rows = [
            (run.id, run.agent_id, r.env_key, r.env_id, r.seed, r.sample, r.task_id, r.reward, r.reason,
             r.num_turns, int(r.truncated), json.dumps(r.info, default=str), json.dumps(r.messages, default=str),
             r.rendered_prompt, now)
            for r in records
        ]
        with self._write() as con:
            before = con.total_changes
            con.executemany(
                "INSERT OR IGNORE INTO episodes (run_id, agent_id, env_key, env_id, seed, sample, task_id, reward,"
                " reason, num_turns, truncated, info_json, messages_json, rendered_prompt, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            return con.total_changes - before

    def finish_run(self, run: RunHandle, status: str = "complete") -> None:
        with self._write() as con:
            con.execute("UPDATE runs SET status = ?, finished_at = ? WHERE id = ?", (status, utc_now(), run.id))

    # ---- reads -------------------------------------------------------------------------------------------
    def missing_episodes(self, agent_id: int, entry: SuiteEntry) -> list[tuple[int, int]]:
        """(seed, sample) pairs of `entry` this agent has no stored episode for, in order: what is left to run."""
        done = {
            (r[0], r[1]) for r in self._con.execute(
                "SELECT seed, sample FROM episodes WHERE agent_id = ? AND env_key = ?", (agent_id, entry.env_key))
        }
        return [(s, k) for s in entry.seeds() for k in range(entry.samples) if (s, k) not in done]

    def agents(self) -> list[dict[str, Any]]:
        rows = self._con.execute("SELECT * FROM agents ORDER BY id").fetchall()
        return [_agent_dict(r) for r in rows]

    def runs(self, agent_id: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT runs.*, agents.hash AS agent_hash FROM runs JOIN agents ON agents.id = runs.agent_id"
        args: tuple = ()
        if agent_id is not None:
            sql += " WHERE agent_id = ?"
            args = (agent_id,)
        rows = self._con.execute(sql + " ORDER BY runs.id", args).fetchall()
        return [{**{k: r[k] for k in r.keys() if k != "metadata_json"}, "metadata": json.loads(r["metadata_json"])}
                for r in rows]

    def episodes(self, env_key: str | None = None, *, full: bool = False) -> list[dict[str, Any]]:
        """Episodes in a fixed order (agent, env, seed, sample); `full` adds info, messages and prompt."""
        cols = ("episodes.id, run_id, episodes.agent_id, agents.hash AS agent_hash, runs.uuid AS run_uuid, env_key, env_id,"
                " seed, sample, task_id, reward, reason, num_turns, truncated, episodes.created_at")
        if full:
            cols += ", info_json, messages_json, rendered_prompt"
        sql = (f"SELECT {cols} FROM episodes JOIN agents ON agents.id = episodes.agent_id"
               " JOIN runs ON runs.id = episodes.run_id")
        args: tuple = ()
        if env_key is not None:
            sql += " WHERE env_key = ? OR env_id = ?"
            args = (env_key, env_key)
        rows = self._con.execute(sql + " ORDER BY episodes.agent_id, env_key, seed, sample", args).fetchall()
        out = []
        for r in rows:
            d = {k: r[k] for k in r.keys()}
            d["truncated"] = bool(d["truncated"])
            if full:
                d["info"] = json.loads(d.pop("info_json"))
                d["messages"] = json.loads(d.pop("messages_json"))
            out.append(d)
        return out

    def progress(self, env_key: str | None = None) -> dict[str, tuple[int, int]]:
        """agent hash -> (episodes done, episodes planned): planned are the episodes of the suites this agent's
        runs were started on (their metadata), done those of them stored. done < planned: the agent is
        incomplete (an interrupted or failed eval; its rating rests on fewer tasks). Runs without a suite
        record (imported from elsewhere) plan nothing. `env_key` limits both to one env config."""
        planned: dict[str, set[tuple[str, int, int]]] = {}
        for run in self.runs():
            wanted = planned.setdefault(run["agent_hash"], set())
            for e in (run["metadata"].get("suite") or {}).get("entries", []):
                try:
                    entry = SuiteEntry(e["id"], int(e["episodes"]), int(e.get("seed", 0)), e.get("split", "test"),
                                       int(e.get("samples", 1)), dict(e.get("kwargs") or {}))
                except (KeyError, TypeError, ValueError):
                    continue
                if env_key is None or entry.env_key == env_key:
                    wanted.update((entry.env_key, s, k) for s in entry.seeds() for k in range(entry.samples))
        stored: dict[str, set[tuple[str, int, int]]] = {}
        for r in self._con.execute("SELECT agents.hash, env_key, seed, sample FROM episodes JOIN agents ON "
                                   "agents.id = episodes.agent_id"):
            stored.setdefault(r[0], set()).add((r[1], r[2], r[3]))
        return {a: (len(w & stored.get(a, set())), len(w)) for a, w in planned.items()}

    def env_configs(self) -> list[dict[str, Any]]:
        rows = self._con.execute("SELECT * FROM env_configs ORDER BY env_key").fetchall()
        return [{"env_key": r["env_key"], "env_id": r["env_id"], "split": r["split"],
                 "kwargs": json.loads(r["kwargs_json"])} for r in rows]

    def counts(self) -> dict[str, int]:
        return {t: self._con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("agents", "runs", "episodes")}

    # ---- export / import -------------------------------------------------------------------------------
    def export_data(self) -> dict[str, Any]:
        """Everything, keyed by content hashes and run uuids (not row ids), so another store can merge it."""
        agents = self.agents()
        progress = self.progress()
        for a in agents:
            a.pop("id")
            done, planned = progress.get(a["hash"], (0, 0))
            # informational (import ignores it): done/planned episodes of the agent's suites
            a["progress"] = {"done": done, "planned": planned, "complete": done >= planned}
        runs = self.runs()
        for r in runs:
            r.pop("id"), r.pop("agent_id")
        episodes = self.episodes(full=True)
        for e in episodes:
            e.pop("id"), e.pop("run_id"), e.pop("agent_id")
        return {"format": EXPORT_FORMAT, "version": SCHEMA_VERSION, "agents": agents,
                "env_configs": self.env_configs(), "runs": runs, "episodes": episodes}

    def import_data(self, data: dict[str, Any]) -> dict[str, int]:
        """Merge an export: agents by hash, runs by uuid, episodes by (agent, env, seed, sample); returns new
        rows per table. Importing the same file twice adds nothing."""
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise StoreError(f"import: not an espl leaderboard export (expected \"format\": \"{EXPORT_FORMAT}\")")
        if int(data.get("version", 0)) > SCHEMA_VERSION:
            raise StoreError(f"import: export version {data.get('version')} is newer than this espl-gym reads")
        added = {"agents": 0, "runs": 0, "episodes": 0}
        try:
            with self._write() as con:
                agent_ids: dict[str, int] = {}
                for a in data["agents"]:
                    before = con.total_changes
                    agent_ids[a["hash"]] = self._add_agent(
                        con, a["hash"], a["name"], a["backend"], a["model"], a["system_prompt"], a["placement"],
                        a["prompt_hash"],
                        json.dumps(a["sampling"], sort_keys=True), a.get("adapter"), a.get("adapter_hash"),
                        a["created_at"])
                    added["agents"] += con.total_changes - before
                for c in data.get("env_configs", []):
                    con.execute("INSERT OR IGNORE INTO env_configs VALUES (?,?,?,?)",
                                (c["env_key"], c["env_id"], c["split"], json.dumps(c["kwargs"], sort_keys=True)))
                run_ids: dict[str, int] = {}
                for r in data["runs"]:
                    before = con.total_changes
                    con.execute(
                        "INSERT OR IGNORE INTO runs (uuid, agent_id, suite, suite_hash, status, started_at,"
                        " finished_at, metadata_json) VALUES (?,?,?,?,?,?,?,?)",
                        (r["uuid"], agent_ids[r["agent_hash"]], r["suite"], r["suite_hash"], r["status"],
                         r["started_at"], r["finished_at"], json.dumps(r["metadata"], default=str)))
                    added["runs"] += con.total_changes - before
                    run_ids[r["uuid"]] = con.execute("SELECT id FROM runs WHERE uuid = ?", (r["uuid"],)).fetchone()[0]
                for e in data["episodes"]:
                    env_id = e["env_id"]
                    before = con.total_changes
                    con.execute(
                        "INSERT OR IGNORE INTO episodes (run_id, agent_id, env_key, env_id, seed, sample, task_id,"
                        " reward, reason, num_turns, truncated, info_json, messages_json, rendered_prompt, created_at)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (run_ids[e["run_uuid"]], agent_ids[e["agent_hash"]], e["env_key"], env_id, e["seed"],
                         e["sample"], e["task_id"], float(e["reward"]), e["reason"], e["num_turns"],
                         int(e["truncated"]), json.dumps(e["info"]), json.dumps(e["messages"]),
                         e.get("rendered_prompt"), e["created_at"]))
                    added["episodes"] += con.total_changes - before
        except (KeyError, TypeError, ValueError, sqlite3.IntegrityError) as exc:
            raise StoreError(f"import: malformed export ({type(exc).__name__}: {exc}); nothing was imported") from None
        return added


def suite_entries(suite: Suite) -> list[dict[str, Any]]:
    """A suite's entries as run metadata records them (and `Store.progress` reads them back)."""
    return [{"id": e.env_id, "episodes": e.episodes, "seed": e.seed, "split": e.split, "samples": e.samples,
             "kwargs": e.env_kwargs} for e in suite.entries]


def _agent_dict(r: sqlite3.Row) -> dict[str, Any]:
    d = {k: r[k] for k in r.keys() if k != "sampling_json"}
    d["sampling"] = json.loads(r["sampling_json"])
    return d


def spec_dict(spec: AgentSpec) -> dict[str, Any]:
    return {**asdict(spec), "hash": spec.content_hash, "prompt_hash": spec.prompt_hash, "name": spec.display_name}
