"""Eval suites: named lists of (env id, episodes, seed, split, samples, env kwargs), written in TOML.

A suite file:

    name = "math-core"
    description = "Procedural arithmetic and competition math, test split."

    [[env]]
    id = "espl/Math-v0"
    episodes = 32        # tasks: seeds seed, seed+1, ..., seed+episodes-1
    seed = 0             # first task seed (the same seed always gives the same task)
    split = "test"       # "train" | "test" (default "test": never score on training tasks)
    samples = 1          # rollouts per task; pass@k needs samples >= k
    [env.kwargs]         # extra keyword arguments for gymnasium.make (optional)
    max_attempts = 1

Built-in suites ship as package data (`espl/leaderboard/suites/*.toml`); `load_suite` takes a built-in
name or the path of a user's TOML file. Env ids are checked against the registry when a suite is run, not
when it is read, so listing suites works even where an env's optional dependencies are missing.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (the tomli dependency)
    import tomli as tomllib

Split = Literal["train", "test"]
_SPLITS = ("train", "test")
_ENTRY_KEYS = {"id", "episodes", "seed", "split", "samples", "kwargs"}
_SUITE_KEYS = {"name", "description", "env"}


class SuiteError(ValueError):
    """A suite that cannot be found or read; the message names the field and the fix."""


@dataclass(frozen=True)
class SuiteEntry:
    """One env of a suite: `episodes` tasks from seed `seed` on, each rolled out `samples` times."""

    env_id: str
    episodes: int
    seed: int = 0
    split: Split = "test"
    samples: int = 1
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def env_key(self) -> str:
        """Identity of the env configuration (id, split, kwargs): episodes are comparable only within one."""
        return env_key(self.env_id, self.split, self.env_kwargs)

    def seeds(self) -> range:
        return range(self.seed, self.seed + self.episodes)

    def make_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `gymnasium.make(self.env_id, **...)`."""
        return {"split": self.split, **self.env_kwargs}


@dataclass(frozen=True)
class Suite:
    name: str
    entries: tuple[SuiteEntry, ...]
    description: str = ""
    source: str = ""  # where it was read from (a built-in name or a file path)

    @property
    def content_hash(self) -> str:
        """Hash of what the suite runs (not its name or description)."""
        payload = [
            {"id": e.env_id, "episodes": e.episodes, "seed": e.seed, "split": e.split, "samples": e.samples,
             "kwargs": e.env_kwargs}
            for e in self.entries
        ]
        return sha256_json(payload)[:16]

    @property
    def num_episodes(self) -> int:
        return sum(e.episodes * e.samples for e in self.entries)


def sha256_json(obj: Any) -> str:
    """sha256 of canonical JSON (sorted keys, no spaces): the content hash used across the leaderboard."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def env_key(env_id: str, split: str, env_kwargs: dict[str, Any] | None = None) -> str:
    """`env_id` alone for the default config, else `env_id` + a short hash of split and kwargs.

    Readable in the common case (`espl/Math-v0` means its test split with registered kwargs) and distinct
    whenever the tasks could differ.
    """
    if split == "test" and not env_kwargs:
        return env_id
    return f"{env_id}[{split}:{sha256_json(env_kwargs or {})[:8]}]"


def builtin_suites() -> list[str]:
    """Names of the suites that ship with espl-gym."""
    folder = resources.files("espl.leaderboard") / "suites"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_suite(name_or_path: str | Path) -> Suite:
    """A built-in suite by name, or a suite from a TOML file path."""
    text_path = str(name_or_path)
    path = Path(text_path).expanduser()
    if text_path.endswith(".toml") or path.exists():
        if not path.is_file():
            raise SuiteError(f"suite: file {path} does not exist (built-in suites: {', '.join(builtin_suites())})")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SuiteError(f"suite {path}: not valid TOML: {exc}") from None
        return parse_suite(data, source=str(path), default_name=path.stem)
    names = builtin_suites()
    if text_path not in names:
        raise SuiteError(
            f"suite: unknown suite {text_path!r}; built-in suites: {', '.join(names)} "
            "(or give the path of a .toml file)"
        )
    resource = resources.files("espl.leaderboard") / "suites" / f"{text_path}.toml"
    return parse_suite(tomllib.loads(resource.read_text(encoding="utf-8")), source=text_path, default_name=text_path)


def parse_suite(data: dict[str, Any], *, source: str = "", default_name: str = "") -> Suite:
    """Validate a suite read from TOML; every error names the field and what is allowed."""
    where = f"suite {source}" if source else "suite"
    unknown = set(data) - _SUITE_KEYS
    if unknown:
        raise SuiteError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_SUITE_KEYS)}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise SuiteError(f"{where}: 'name' must be a non-empty string")
    raw_entries = data.get("env")
    if not isinstance(raw_entries, list) or not raw_entries:
        raise SuiteError(f"{where}: needs at least one [[env]] table with 'id' and 'episodes'")
    entries = tuple(_parse_entry(raw, f"{where}: env[{i}]") for i, raw in enumerate(raw_entries))
    keys = [e.env_key for e in entries]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise SuiteError(f"{where}: env config listed twice: {dupes}; merge them into one [[env]] table")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise SuiteError(f"{where}: 'description' must be a string")
    return Suite(name=name, entries=entries, description=description, source=source)


def _parse_entry(raw: Any, where: str) -> SuiteEntry:
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: must be a table")
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        raise SuiteError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_ENTRY_KEYS)}")
    env_id = raw.get("id")
    if not isinstance(env_id, str) or not env_id:
        raise SuiteError(f"{where}: 'id' must be an env id such as \"espl/Math-v0\" (`espl envs list`)")

    def positive_int(key: str, default: int | None, minimum: int) -> int:
        value = raw.get(key, default)
        if value is None:
            raise SuiteError(f"{where} ({env_id}): '{key}' is required (an integer >= {minimum})")
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SuiteError(f"{where} ({env_id}): '{key}' must be an integer >= {minimum}, got {value!r}")
        return value

    split = raw.get("split", "test")
    if split not in _SPLITS:
        raise SuiteError(f"{where} ({env_id}): 'split' must be one of {list(_SPLITS)}, got {split!r}")
    kwargs = raw.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise SuiteError(f"{where} ({env_id}): 'kwargs' must be a table of env keyword arguments")
    if "split" in kwargs:
        raise SuiteError(f"{where} ({env_id}): put 'split' in the [[env]] table, not in its kwargs")
    return SuiteEntry(
        env_id=env_id,
        episodes=positive_int("episodes", None, 1),
        seed=positive_int("seed", 0, 0),
        split=split,
        samples=positive_int("samples", 1, 1),
        env_kwargs=dict(kwargs),
    )
