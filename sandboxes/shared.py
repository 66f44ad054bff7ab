"""One `SandboxPool` per process, shared by the code env, the python tool and anything else that runs code.

Size: `ESPL_SANDBOX_POOL_SIZE` (default 4), the number of runs that may go at once in this process; callers
beyond it wait for a free container. The image: `ESPL_SANDBOX_IMAGE` (default espl-sandbox:latest); the
runtime: `ESPL_SANDBOX_RUNTIME` (e.g. runsc). The pool is made on first use and closed at exit.
"""

from __future__ import annotations

import atexit
import os
import threading

from espl.sandboxes.core import SandboxConfig
from espl.sandboxes.pool import SandboxPool

_POOL: SandboxPool | None = None
_LOCK = threading.Lock()
DEFAULT_POOL_SIZE = 4


def shared_config() -> SandboxConfig:
    return SandboxConfig()  # image and runtime follow ESPL_SANDBOX_IMAGE / ESPL_SANDBOX_RUNTIME


def pool_size() -> int:
    raw = os.environ.get("ESPL_SANDBOX_POOL_SIZE", "")
    if not raw:
        return DEFAULT_POOL_SIZE
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"ESPL_SANDBOX_POOL_SIZE: must be an int >= 1, got {raw!r}")
    return int(raw)


def shared_pool() -> SandboxPool:
    """The process's pool (made on first call; raises SandboxUnavailable with the fix when Docker is unusable)."""
    global _POOL
    with _LOCK:
        if _POOL is None or _POOL._closed:
            _POOL = SandboxPool(size=pool_size(), config=shared_config())
        return _POOL


def close_shared_pool() -> None:
    global _POOL
    with _LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.close()


atexit.register(close_shared_pool)
