"""The leaderboard as plain data: standings joined with what each agent is. One source for
`espl leaderboard show` (table and `--json`) and the HTML page, so they never disagree.

Each row's `progress` is {"done", "planned", "complete"}: episodes stored of those its suites plan
(`Store.progress`). An incomplete agent keeps its rank but every view marks it "incomplete d/p".
"""

from __future__ import annotations

from typing import Any

from espl.leaderboard.ratings import EnvScore, EpisodeScore, Rating, standings
from espl.leaderboard.store import Store, utc_now


def _score(s: EnvScore) -> dict[str, Any]:
    return {"mean": s.mean, "ci95": s.ci95, "episodes": s.episodes, "tasks": s.tasks,
            "pass_at_k": {str(k): v for k, v in s.pass_at_k.items()}}


def _rating(r: Rating) -> dict[str, Any]:
    return {"mu": r.mu, "sigma": r.sigma, "conservative": r.conservative, "matches": r.matches}


def resolve_env(store: Store, env: str) -> str:
    """An env key from a key or an env id (the default config of that id, or its only config)."""
    keys = [c["env_key"] for c in store.env_configs()]
    if env in keys:
        return env
    of_id = [c["env_key"] for c in store.env_configs() if c["env_id"] == env]
    if len(of_id) == 1:
        return of_id[0]
    if of_id:
        raise ValueError(f"--env {env}: several configs of this env are stored, pick one of: {', '.join(of_id)}")
    raise ValueError(f"--env {env}: no episodes of this env in the database; stored: {', '.join(keys) or 'none'}")


def board_data(store: Store, env: str | None = None) -> dict[str, Any]:
    """Every ranked agent with rating, score ± CI, pass@k, per-env results, prompt and settings."""
    env_key = resolve_env(store, env) if env is not None else None
    episodes = store.episodes()
    scores = [EpisodeScore(e["agent_hash"], e["env_key"], e["seed"], e["sample"], e["reward"]) for e in episodes]
    agents = {a["hash"]: a for a in store.agents()}
    runs_per_agent: dict[str, int] = {}
    for r in store.runs():
        runs_per_agent[r["agent_hash"]] = runs_per_agent.get(r["agent_hash"], 0) + 1
    reasons: dict[tuple[str, str], dict[str, int]] = {}
    for e in episodes:
        counts = reasons.setdefault((e["agent_hash"], e["env_key"]), {})
        counts[e["reason"]] = counts.get(e["reason"], 0) + 1

    progress = store.progress(env_key)
    rows = []
    for st in standings(scores, env_key=env_key):
        a = agents[st.agent]
        done, planned = progress.get(st.agent, (0, 0))
        if planned == 0:  # no suite on record (imported runs): what is stored is all there is
            done = planned = st.score.episodes
        rows.append({
            # incomplete: fewer episodes stored than its suites plan (an eval that was interrupted or failed)
            "progress": {"done": done, "planned": planned, "complete": done >= planned},
            "rank": st.rank, "agent": st.agent, "name": a["name"], "model": a["model"], "backend": a["backend"],
            "adapter": a["adapter"], "adapter_hash": a["adapter_hash"], "system_prompt": a["system_prompt"],
            "prompt_hash": a["prompt_hash"], "sampling": a["sampling"], "runs": runs_per_agent.get(st.agent, 0),
            "rating": _rating(st.rating), "score": _score(st.score),
            "per_env": {k: {**_score(s), "rating": _rating(st.per_env_rating[k]), "reasons": reasons[(st.agent, k)]}
                        for k, s in st.per_env.items()},
        })
    return {
        "generated_at": utc_now(), "db": str(store.path), "env": env_key,
        "envs": sorted({e.env_key for e in scores if env_key is None or e.env_key == env_key}),
        "rows": rows,
    }
