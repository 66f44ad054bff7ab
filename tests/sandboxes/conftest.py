"""Fixtures for the sandbox tests: a real Docker daemon and the sandbox image (skip locally, fail in CI).

`no_leaks` (session, autouse) asserts at the end that no container labelled espl.sandbox=1 is left by this
process or by the helper processes the tests killed: `docker ps -a --filter label=espl.sandbox=1` shows
none of theirs.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.conftest import require

OWNER_PIDS: set[int] = {os.getpid()}  # tests that spawn owner processes add their pids


def docker_available() -> bool:
    """The daemon answers and the sandbox image exists."""
    from espl.sandboxes.core import SandboxConfig, SandboxError
    from espl.sandboxes.docker_sandbox import check_image, connect

    try:
        check_image(connect(), SandboxConfig().image)
        return True
    except SandboxError:
        return False


def leftover_containers() -> list:
    from espl.sandboxes.reaper import list_sandbox_containers

    return [c for c in list_sandbox_containers() if c.owner_pid in OWNER_PIDS]


@pytest.fixture(scope="session", autouse=True)
def no_leaks():
    yield
    if not docker_available():
        return
    from espl.sandboxes.shared import close_shared_pool

    close_shared_pool()
    deadline = time.monotonic() + 15  # background removals of replaced containers may still be finishing
    while leftover_containers() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = leftover_containers()
    assert not left, f"sandbox containers left behind: {left}"


@pytest.fixture(scope="session")
def docker_ready(no_leaks):
    require(docker_available(), "Docker daemon with the espl-sandbox image (`espl sandbox build`)")


@pytest.fixture(scope="module")
def pool(docker_ready):
    from espl.sandboxes.pool import SandboxPool

    with SandboxPool(size=2, timeout_s=5) as p:
        yield p


@pytest.fixture(scope="module")
def cold(docker_ready):
    from espl.sandboxes.docker_sandbox import DockerSandbox

    with DockerSandbox(timeout_s=5) as sb:
        yield sb
