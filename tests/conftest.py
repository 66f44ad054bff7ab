"""Shared test fixtures.

`require(component, reason)`: a test that needs a real component (Docker daemon, Chromium, a llama.cpp
server, a GPU) skips on a machine without it, but fails in CI (CI=true), where every component must be
installed by .ci/run.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def load_script(path: Path) -> ModuleType:
    """A script that is not in the package (benchmarks/*.py), imported from its file under its stem's name."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def require(available: bool, what: str) -> None:
    """Skip (locally) or fail (CI=true) when `what` is missing."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing, and CI=true requires it (.ci/run must install it)")
    pytest.skip(f"{what} is not available on this machine")


@pytest.fixture
def requires():
    return require


def closed_port_url() -> str:
    """An OpenAI-style base URL on 127.0.0.1 where nothing listens (a port bound, then closed): every
    request to it is refused."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
