"""The checker over every registered env: a new env is tested by being registered (Gymnasium's pattern)."""

from __future__ import annotations

import pytest

import espl  # noqa: F401  (registers the envs)
from espl.envs.checker import check_chat_env
from espl.envs.registration import describe, env_ids
from tests.conftest import require


def _docker_up() -> bool:
    try:
        import docker

        docker.from_env(timeout=5).ping()
        return True
    except Exception:
        return False


@pytest.mark.parametrize("env_id", env_ids())
def test_env_passes_the_checker(env_id):
    if describe(env_id)["family"] == "code":
        require(_docker_up(), "Docker daemon (the code env runs tests in the sandbox)")
    if describe(env_id)["entry_point"].startswith("espl.envs.bfcl"):
        from espl.envs.bfcl import INSTALL_HINT, bfcl_available

        require(bfcl_available(), f"the bfcl-eval package ({INSTALL_HINT})")
    results = check_chat_env(env_id)
    failed = [f"{r.name}: {r.detail}" for r in results if not r.ok]
    assert not failed, f"{env_id} failed: {failed}"
    assert len(results) >= 6
