"""`DockerSandbox`: one fresh hardened container per run (the cold path), and the container plumbing that
`SandboxPool` reuses for warm containers.

Every container runs `container_server.py` as PID 1 and is driven over its attached stdin/stdout (no
`docker exec`, see that module for why). Containers are labelled `espl.sandbox=1` with the owner's pid, host
and start time, started with auto-remove and stdin-once (when the owner dies, the attach stream closes, the
server exits and Docker removes the container), tracked in a per-process registry that atexit and a SIGTERM
handler empty, and any that still survive a crash are removed by `reap()` (`espl sandbox reap`).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import select
import signal
import socket
import struct
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from espl.sandboxes.core import (
    LABEL, OWNER_HOST_LABEL, OWNER_PID_LABEL, OWNER_START_LABEL, ContainerGone, ExecutionResult, ResetFailed,
    SandboxConfig, SandboxError, SandboxUnavailable, build_request, result_from_reply,
)

log = logging.getLogger(__name__)

HOST_GRACE_S = 5.0  # the server enforces timeout_s itself; the host kills the container only past this grace
START_TIMEOUT_S = 60.0
DAEMON_FIX = (
    "start the daemon (`sudo dockerd --bridge=none --iptables=false &` or `sudo systemctl start docker`), make sure "
    "this user may use it (root or the `docker` group), or point DOCKER_HOST at one; `espl sandbox doctor` checks "
    "every requirement"
)


# ---- the Docker client --------------------------------------------------------------------------------------
def connect(docker_host: str | None = None):
    """A docker client for `docker_host` (None: DOCKER_HOST or the local socket), or SandboxUnavailable."""
    try:
        import docker
    except ImportError:  # pragma: no cover - a declared dependency
        raise SandboxUnavailable("the `docker` Python package is missing: pip install 'docker>=7'") from None
    return _client(docker_host or os.environ.get("DOCKER_HOST") or "")


@lru_cache(maxsize=8)
def _client(url: str):
    import docker

    try:
        # every warm container holds one connection (its attach stream) besides the pooled API requests
        client = (docker.DockerClient(base_url=url, timeout=120, max_pool_size=64) if url
                  else docker.from_env(timeout=120, max_pool_size=64))
        client.ping()
    except Exception as exc:
        where = url or "the local socket (unix:///var/run/docker.sock)"
        _client.cache_clear()
        raise SandboxUnavailable(f"Docker daemon not reachable at {where} ({type(exc).__name__}): {DAEMON_FIX}") from None
    return client


def check_image(client, image: str) -> None:
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise SandboxUnavailable(
            f"sandbox image {image!r} not found: build it with `espl sandbox build --tag {image}` (offline, ~40 s, "
            "needs root and debootstrap) or `espl sandbox build --pull` where a registry is reachable"
        ) from None
    except docker.errors.DockerException as exc:
        raise SandboxUnavailable(f"Docker daemon error while looking up image {image!r}: {exc}. {DAEMON_FIX}") from None


# ---- owner labels, for the reaper -----------------------------------------------------------------------------
def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def owner_labels(config: SandboxConfig) -> dict[str, str]:
    pid = os.getpid()
    return {
        LABEL: "1", OWNER_PID_LABEL: str(pid), OWNER_HOST_LABEL: socket.gethostname(),
        OWNER_START_LABEL: process_start_time(pid) or "", **dict(config.labels),
    }


@lru_cache(maxsize=1)
def server_source() -> str:
    return (Path(__file__).with_name("container_server.py")).read_text()


def create_container(client, config: SandboxConfig) -> str:
    """Create (not start) one hardened container; returns its id. The hardening of docs/sandbox.md in one place."""
    from docker.types import LogConfig, Ulimit

    api = client.api
    uid, _, gid = config.user.partition(":")
    gid = gid or uid
    host_config = api.create_host_config(
        auto_remove=True,
        network_mode=config.network,
        read_only=True,
        # tmpfs for a non-root user needs uid=/gid=, else Docker mounts it root-owned and unwritable
        tmpfs={
            config.workdir: f"rw,nosuid,nodev,exec,size={config.workdir_size_mb}m,uid={uid},gid={gid},mode=0700",
            "/tmp": f"rw,nosuid,nodev,noexec,size={config.tmp_size_mb}m,uid={uid},gid={gid},mode=0700",
        },
        shm_size=f"{config.shm_size_mb}m",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        pids_limit=config.pids_limit,
        mem_limit=f"{config.memory_mb}m",
        memswap_limit=f"{config.memory_mb}m",  # equal to mem_limit: no swap, so a memory bomb meets the OOM killer
        nano_cpus=int(config.cpus * 1e9),
        ulimits=[Ulimit(name="nofile", soft=1024, hard=1024), Ulimit(name="core", soft=0, hard=0)],
        log_config=LogConfig(type="none"),  # replies travel on stdout; never let them pile up in a log file
        runtime=config.runtime,
    )
    created = api.create_container(
        image=config.image,
        command=["python3", "-I", "-S", "-c", server_source()],
        user=config.user,
        working_dir=config.workdir,
        environment={},
        hostname="sandbox",
        # detach=False + stdin_open=True sets StdinOnce: stdin closes when our attach stream does, so the server
        # (and the auto-removed container) ends when the owner process goes away, even on SIGKILL
        detach=False, stdin_open=True, tty=False,
        labels=owner_labels(config),
        host_config=host_config,
    )
    return created["Id"]


# ---- the per-process registry of live containers, emptied on exit and SIGTERM -----------------------------------
_LIVE: dict[str, "Container"] = {}
_LIVE_LOCK = threading.RLock()  # re-entrant: the SIGTERM handler may interrupt a holder in the main thread
_ATEXIT_INSTALLED = False
_SIGTERM_INSTALLED = False


def cleanup_all() -> int:
    """Remove every container this process started and has not removed yet; returns how many."""
    with _LIVE_LOCK:
        live = list(_LIVE.values())
    remove_all(live)
    return len(live)


def remove_all(containers: list["Container"]) -> None:
    """Remove containers in parallel (threads; sequentially where threads cannot start, e.g. at shutdown)."""
    if sys.is_finalizing() or len(containers) <= 1:  # Thread.start() blocks forever during finalization
        for c in containers:
            c.remove()
        return
    threads = []
    for c in containers:
        t = threading.Thread(target=c.remove, daemon=True)
        try:
            t.start()
            threads.append(t)
        except RuntimeError:
            c.remove()
    for t in threads:
        t.join(timeout=30)


def install_cleanup_handlers() -> None:
    """atexit + SIGTERM: a terminated owner removes its containers before it dies. SIGINT raises
    KeyboardInterrupt as usual, so context managers and atexit clean up; it needs no handler of ours.
    Called by every sandbox and pool constructor; the SIGTERM part only takes in the main thread (Python's
    rule), so a sandbox first made in a worker thread gets it from the next call in the main thread."""
    global _ATEXIT_INSTALLED, _SIGTERM_INSTALLED
    with _LIVE_LOCK:
        if not _ATEXIT_INSTALLED:
            _ATEXIT_INSTALLED = True
            atexit.register(cleanup_all)
        if _SIGTERM_INSTALLED or threading.current_thread() is not threading.main_thread():
            return
        _SIGTERM_INSTALLED = True
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        cleanup_all()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main interpreter
        pass


# ---- one container and its server ------------------------------------------------------------------------------
class Container:
    """A started sandbox container whose PID-1 server takes requests over the attach socket.
    Not thread-safe: one run at a time (the pool leases it to one caller)."""

    def __init__(self, client, config: SandboxConfig):
        import docker

        self.config = config
        self.client = client
        self._removed = False
        self.dirty = False  # used since its last reset: the next lease's first run wipes it first
        self.broken = False
        self._buf = bytearray()  # raw multiplexed bytes not yet parsed
        self._stdout = bytearray()
        self._stderr = bytearray()
        install_cleanup_handlers()
        try:
            self.id: str = create_container(client, config)
        except docker.errors.ImageNotFound:
            check_image(client, config.image)
            raise
        except docker.errors.APIError as exc:
            raise _explain_api_error(exc, config) from None
        except docker.errors.DockerException as exc:
            raise SandboxUnavailable(f"Docker daemon error: {exc}. {DAEMON_FIX}") from None
        with _LIVE_LOCK:
            _LIVE[self.id] = self
        try:
            self._sock = client.api.attach_socket(self.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            self._raw = getattr(self._sock, "_sock", self._sock)
            client.api.start(self.id)
        except docker.errors.APIError as exc:
            self.remove()
            raise _explain_api_error(exc, config) from None
        except Exception:
            self.remove()
            raise

    def request(self, req: dict[str, Any]) -> ExecutionResult:
        """Send one run to the server and wait for its reply (the container is killed past timeout + grace)."""
        # A fresh id per request: where a runtime lets the program reach PID 1's stdout (gVisor's /proc does not
        # honour non-dumpable), a forged or stale reply cannot pass for this run's or land in the next lease.
        req = dict(req, id=secrets.token_hex(8))
        data = json.dumps(req).encode()
        deadline = time.monotonic() + req["timeout_s"] + HOST_GRACE_S
        if self._peer_closed():  # died while idle (removed from outside, daemon restart): not the program's doing
            self.broken = True
            self.remove()
            raise ContainerGone(f"sandbox container {self.id[:12]} ended while idle")
        if self._stdout:  # bytes nobody asked for: a protocol violation; finish this run, then replace it
            self._stdout.clear()
            self.broken = True
        try:
            self._raw.sendall(b"%d\n" % len(data) + data)
            reply = self._read_reply(deadline, req["id"])
        except socket.timeout:
            self.broken = True
            self.remove()
            return ExecutionResult("", "sandbox: no reply past the timeout; the container was killed", 137,
                                   True, False, float(req["timeout_s"]), False)
        except (OSError, EOFError) as exc:
            self.broken = True
            oom = self._oom_killed()
            self.remove()
            server_err = self._stderr.decode("utf-8", "replace")[-2000:]
            return ExecutionResult("", f"sandbox: the container died during the run ({exc}). {server_err}".strip(),
                                   137, False, oom, 0.0, False)
        except BaseException:  # KeyboardInterrupt mid-run: a reply may still come; never hand this one out again
            self.broken = True
            raise
        if reply.get("reset_failed"):
            self.broken = True
            raise ResetFailed(reply["error"])
        if reply.get("error"):
            raise SandboxError(f"sandbox server rejected the request: {reply['error']}")
        return result_from_reply(reply)

    def _peer_closed(self) -> bool:
        try:
            readable, _, _ = select.select([self._raw], [], [], 0)
            if not readable:
                return False
            self._raw.settimeout(1.0)
            chunk = self._raw.recv(1 << 20)
        except OSError:
            return True
        if not chunk:
            return True
        self._buf += chunk  # output the server wrote while idle (e.g. a traceback on stderr)
        self._demux()
        return False

    def _read_reply(self, deadline: float, rid: str) -> dict[str, Any]:
        while True:
            nl = self._stdout.find(b"\n")
            if nl >= 0:
                try:
                    size = int(self._stdout[:nl])
                except ValueError:  # not our framing: someone else wrote here; resync is impossible
                    raise EOFError("garbled reply stream") from None
                if len(self._stdout) >= nl + 1 + size:
                    payload = bytes(self._stdout[nl + 1: nl + 1 + size])
                    del self._stdout[: nl + 1 + size]
                    try:
                        reply = json.loads(payload)
                    except ValueError:
                        reply = {}
                    if isinstance(reply, dict) and reply.get("id") == rid:
                        return reply
                    self.broken = True  # a reply we did not ask for: skip it, and retire the container after
                    continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("deadline")
            self._raw.settimeout(remaining)
            chunk = self._raw.recv(1 << 20)
            if not chunk:
                raise EOFError("attach stream closed")
            self._buf += chunk
            self._demux()

    def _demux(self) -> None:
        # Docker's multiplexed stream: 8-byte header (stream id, 3 zero bytes, big-endian size), then the payload
        while len(self._buf) >= 8:
            stream, size = self._buf[0], struct.unpack(">I", self._buf[4:8])[0]
            if len(self._buf) < 8 + size:
                return
            (self._stdout if stream == 1 else self._stderr).extend(self._buf[8: 8 + size])
            del self._buf[: 8 + size]

    def _oom_killed(self) -> bool:
        try:
            return bool(self.client.api.inspect_container(self.id)["State"].get("OOMKilled"))
        except Exception:
            return False

    def alive(self) -> bool:
        if self.broken:
            return False
        try:
            return bool(self.client.api.inspect_container(self.id)["State"].get("Running"))
        except Exception:
            return False

    def remove(self) -> None:
        """Kill and remove the container (idempotent; a container already gone is fine)."""
        with _LIVE_LOCK:
            if self._removed:
                return
            self._removed = True
            _LIVE.pop(self.id, None)
        try:
            self._sock.close()
        except Exception:  # never attached (create failed half-way)
            pass
        try:
            self.client.api.remove_container(self.id, force=True)
        except Exception as exc:  # 404 (auto-removed already) or 409 (removal in progress) are both done
            if "404" not in str(exc) and "409" not in str(exc) and "No such container" not in str(exc):
                log.warning("could not remove sandbox container %s: %s", self.id[:12], exc)


def _explain_api_error(exc, config: SandboxConfig) -> SandboxError:
    text = str(exc)
    if "runtime" in text.lower() and config.runtime:
        return SandboxUnavailable(
            f"runtime {config.runtime!r} is not configured in the Docker daemon ({text}): install it and register it "
            "in /etc/docker/daemon.json under \"runtimes\" (gVisor: `runsc install`), restart dockerd, or drop "
            "`runtime=`; see docs/sandbox.md"
        )
    if "No such image" in text:
        return SandboxUnavailable(f"sandbox image {config.image!r} not found: build it with `espl sandbox build`")
    return SandboxError(f"Docker refused the sandbox container: {text}")


def start_container(config: SandboxConfig) -> Container:
    client = connect(config.docker_host)
    return Container(client, config)


# ---- the cold sandbox -------------------------------------------------------------------------------------------
class DockerSandbox:
    """A fresh hardened container per `run`, removed before `run` returns (~0.2-0.3 s per call).
    Use `SandboxPool` for many calls. Raises SandboxUnavailable at construction if the daemon or image is
    missing, so a misconfiguration shows before the first run."""

    def __init__(self, config: SandboxConfig | None = None, **overrides: Any):
        if config is None:
            config = SandboxConfig(**overrides)
        elif overrides:
            from dataclasses import replace

            config = replace(config, **overrides)
        self.config = config
        self.client = connect(config.docker_host)
        check_image(self.client, config.image)
        install_cleanup_handlers()
        self._closed = False

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
        if self._closed:
            raise SandboxError("run() on a closed DockerSandbox; make a new one")
        req = build_request(self.config, code, argv, files, stdin, timeout_s, env)
        container = Container(self.client, self.config)
        try:
            return container.request(req)
        finally:
            container.remove()

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> "DockerSandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
