"""`SandboxPool`: warm sandbox containers reused across runs, for the thousands of runs of a training job.

    with SandboxPool(size=8) as pool:            # size = how many runs may go at once
        pool.run("print(1)")                     # lease a container, run, give it back
        with pool.lease() as box:                # several runs on one container (files persist in between)
            box.run("open('a', 'w').write('x')"); box.run("print(open('a').read())")

- Lease/return is thread-safe; `lease()` blocks while all `size` containers are busy (`timeout_s` to give up).
- Between leases nothing carries over: after every run the server SIGKILLs every process the program left;
  the first run of the next lease wipes the work dir, /tmp and /dev/shm first; each run gets a fresh
  environment. Within one lease, files persist between runs (processes never do).
- A container that timed out, hit the OOM killer or died is removed and replaced in the background, so the
  pool stays at its size without making the caller wait.
- Containers are started on demand (`warm()` starts them ahead). Orphans of dead processes (same label) are
  reaped when a pool starts.
"""

from __future__ import annotations

import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Iterator, Mapping, Sequence, cast

from espl.sandboxes.core import (
    ContainerGone, ExecutionResult, ResetFailed, SandboxConfig, SandboxError, build_request, check_timeout,
)
from espl.sandboxes.docker_sandbox import Container, check_image, connect, install_cleanup_handlers, remove_all

log = logging.getLogger(__name__)


class Lease:
    """One container, held by one caller until the `lease()` block ends. Same `run` as `Sandbox.run`."""

    def __init__(self, pool: "SandboxPool", container: Container):
        self._pool, self._first = pool, True
        self._container: Container | None = container  # None once the lease is returned

    @property
    def container_id(self) -> str:
        return cast(Container, self._container).id

    def run(
        self,
        code: str | bytes | None = None,
        *,
        argv: Sequence[str] | None = None,
        files: Mapping[str, str | bytes] | None = None,
        stdin: str | bytes | None = None,
        timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ExecutionResult:
        if self._container is None:
            raise SandboxError("run() on a lease that was returned; take a new one with pool.lease()")
        req = build_request(self._pool.config, code, argv, files, stdin, timeout_s, env)
        container = self._container
        if container.broken:  # the previous run in this lease hit a limit: go on with a fresh container
            self._container = None
            container = self._container = self._pool._swap(container)
        req["reset"] = self._first and container.dirty
        self._first = False
        try:
            result = container.request(req)
        except (ResetFailed, ContainerGone):  # never reuse it; a fresh container needs no reset
            self._container = None  # if the swap fails, its slot is already given back
            container = self._container = self._pool._swap(container)
            req["reset"] = False
            result = container.request(req)
        container.dirty = True
        if result.timed_out or result.oom_killed:
            container.broken = True  # the server cleaned up, but a container that hit a limit is not trusted again
        return result


class SandboxPool:
    """Warm containers behind the `Sandbox` protocol (`run`, `close`, context manager)."""

    def __init__(self, size: int = 4, config: SandboxConfig | None = None, *, reap_orphans: bool = True,
                 **overrides: Any):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"size: must be an int >= 1 (how many runs may go at once), got {size!r}")
        config = config or SandboxConfig()
        self.config = replace(config, **overrides) if overrides else config
        self.size = size
        self.client = connect(self.config.docker_host)
        check_image(self.client, self.config.image)
        install_cleanup_handlers()
        if reap_orphans:
            from espl.sandboxes.reaper import reap

            reap(docker_host=self.config.docker_host)
        self._cond = threading.Condition()
        self._idle: list[Container] = []  # LIFO: the most recently used container is the warmest
        self._count = 0  # containers alive, leased, idle or being started; never above size
        self._closed = False
        self._background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="espl-sandbox-pool")
        self.replaced = 0  # containers replaced after a timeout, OOM or death (for stats and tests)

    # ---- lease / return ------------------------------------------------------------------------------------------
    @contextmanager
    def lease(self, timeout_s: float | None = None) -> Iterator[Lease]:
        """Hold one container for a block of runs; blocks while all are busy (`timeout_s`: give up, TimeoutError)."""
        container = self._acquire(timeout_s)
        lease = Lease(self, container)
        try:
            yield lease
        finally:
            self._release(lease._container)
            lease._container = None

    def run(
        self,
        code: str | bytes | None = None,
        *,
        argv: Sequence[str] | None = None,
        files: Mapping[str, str | bytes] | None = None,
        stdin: str | bytes | None = None,
        timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ExecutionResult:
        """Lease a container, run once, give it back."""
        build_request(self.config, code, argv, files, stdin, timeout_s, env)  # bad input fails before a lease
        with self.lease() as box:
            return box.run(code, argv=argv, files=files, stdin=stdin, timeout_s=timeout_s, env=env)

    def warm(self, n: int | None = None) -> int:
        """Start containers (in parallel) until `n` (default: size) exist; returns how many were started."""
        n = self.size if n is None else min(n, self.size)
        with self._cond:
            todo = max(0, n - self._count)
            self._count += todo
        if not todo:
            return 0
        with ThreadPoolExecutor(max_workers=min(todo, 8)) as ex:
            futures = [ex.submit(self._start) for _ in range(todo)]
        started, error = 0, None
        for f in futures:
            try:
                self._put_idle(f.result())
                started += 1
            except Exception as exc:
                error = exc
                with self._cond:
                    self._count -= 1
                    self._cond.notify()
        if error is not None:
            raise error
        return started

    def container_ids(self) -> list[str]:
        """Ids of the idle containers (for diagnostics and tests)."""
        with self._cond:
            return [c.id for c in self._idle]

    def _start(self) -> Container:
        return Container(self.client, self.config)

    def _acquire(self, timeout_s: float | None) -> Container:
        if timeout_s is not None:
            check_timeout(timeout_s, "timeout_s")
        with self._cond:
            while True:
                if self._closed:
                    raise SandboxError("the SandboxPool is closed")
                if self._idle:
                    return self._idle.pop()
                if self._count < self.size:
                    self._count += 1
                    break
                if not self._cond.wait(timeout_s):
                    raise TimeoutError(f"no sandbox free within {timeout_s} s (pool size {self.size}); make it larger")
        try:
            return self._start()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _swap(self, broken: Container) -> Container:
        """A new container in place of a lease's broken one (same slot, so the count does not change)."""
        self._remove_later(broken)
        with self._cond:
            self.replaced += 1
        try:
            return self._start()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _remove_later(self, container: Container) -> None:
        try:
            self._background.submit(container.remove)
        except RuntimeError:  # the pool is closing: remove it now
            container.remove()

    def _release(self, container: Container | None) -> None:
        if container is None:
            return
        if container.broken:
            self._discard(container)
            self._replace_in_background()
            return
        self._put_idle(container)

    def _put_idle(self, container: Container) -> None:
        with self._cond:
            if self._closed:
                self._count -= 1
                container.remove()
                return
            self._idle.append(container)
            self._cond.notify()

    def _discard(self, container: Container) -> None:
        with self._cond:
            self._count -= 1
            self.replaced += 1
            self._cond.notify()
        self._remove_later(container)

    def _replace_in_background(self) -> None:
        with self._cond:
            if self._closed or self._count >= self.size:
                return
            self._count += 1

        def start() -> None:
            try:
                self._put_idle(self._start())
            except Exception as exc:  # the next lease starts one itself and reports the error there
                log.warning("could not start a replacement sandbox container: %s", exc)
                with self._cond:
                    self._count -= 1
                    self._cond.notify()

        try:
            self._background.submit(start)
        except RuntimeError:  # closed meanwhile
            with self._cond:
                self._count -= 1

    # ---- close -----------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Remove every idle container now; leased ones are removed when their lease ends."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._cond.notify_all()
        try:
            self._background.shutdown(wait=not sys.is_finalizing())
        except RuntimeError:  # at interpreter shutdown
            pass
        remove_all(idle)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort; atexit and the reaper are the guarantees
        try:
            self.close()
        except Exception:
            pass
