"""The sandbox contract: `Sandbox`, `ExecutionResult`, `SandboxConfig` and the errors.

    with DockerSandbox() as sb:                      # or SandboxPool(size=4) for warm containers
        r = sb.run("print(input()[::-1])", stdin="abc", timeout_s=5)
    r.stdout == "cba\\n"; r.exit_code == 0; r.timed_out is False

- `run(code)` runs Python source as `python3 main.py` in the work dir; `run(argv=[...])` runs a command.
  `files` ({relative path: str | bytes}) are written to the work dir first; `stdin` feeds the program.
- A result always comes back for anything the program does (crash, timeout, OOM, output flood): the sandbox
  reports, it does not raise. It raises only for bad arguments (ValueError/TypeError naming the field and
  the fix) and for an unusable backend (`SandboxUnavailable`: no daemon, no image, unknown runtime).
- `close()` removes every container the sandbox started; a sandbox is a context manager.
"""

from __future__ import annotations

import base64
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

DEFAULT_IMAGE = "espl-sandbox:latest"
LABEL = "espl.sandbox"  # every container carries LABEL=1 plus the owner labels below
OWNER_PID_LABEL = "espl.sandbox.owner_pid"
OWNER_HOST_LABEL = "espl.sandbox.owner_host"
OWNER_START_LABEL = "espl.sandbox.owner_start"  # the owner's start time: a reused pid is not mistaken for it
MAIN_FILE = "main.py"
MAX_REQUEST_BYTES = 32 << 20  # files + stdin of one run, base64-encoded


class SandboxError(RuntimeError):
    """The sandbox backend failed (not the program inside it)."""


class ContainerGone(SandboxError):
    """A warm container ended while idle (removed from outside, daemon restart); the pool replaces it."""


class ResetFailed(SandboxError):
    """A warm container could not be wiped between leases; the pool replaces it."""


class SandboxUnavailable(SandboxError):
    """The backend cannot run anything: no daemon, no image, unknown runtime. The message says the fix."""


@dataclass(frozen=True)
class ExecutionResult:
    """What one run did. `stdout`/`stderr` are decoded as UTF-8 (invalid bytes become U+FFFD) and capped at
    `SandboxConfig.output_limit_bytes` each (`truncated=True` when either was cut). `exit_code` is 128 + N
    when the program was killed by signal N (137 after a timeout or the OOM killer). `duration_s` is the
    program's wall time inside the container."""

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool
    oom_killed: bool
    duration_s: float
    truncated: bool

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.oom_killed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and hardening of every container. The defaults are the hardened ones; see docs/sandbox.md.

    image / runtime default to $ESPL_SANDBOX_IMAGE / $ESPL_SANDBOX_RUNTIME when set, so one variable moves
    every sandbox of a process (code env, python tool, CLI) to, e.g., gVisor.
    runtime: the OCI runtime Docker uses (None = the daemon's default, usually runc; "runsc" = gVisor, which
    also shields the host kernel). docker_host: a daemon URL (None = DOCKER_HOST or the local socket).
    """

    image: str = field(default_factory=lambda: os.environ.get("ESPL_SANDBOX_IMAGE") or DEFAULT_IMAGE)
    runtime: str | None = field(default_factory=lambda: os.environ.get("ESPL_SANDBOX_RUNTIME") or None)
    memory_mb: int = 256
    cpus: float = 1.0
    pids_limit: int = 256
    timeout_s: float = 10.0
    output_limit_bytes: int = 64 * 1024
    workdir: str = "/work"
    workdir_size_mb: int = 64
    tmp_size_mb: int = 16
    shm_size_mb: int = 16
    user: str = "10001:10001"  # a uid no host account uses; the offline image names it `sandbox`
    network: str = "none"
    docker_host: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(name: str, want: str, fix: str) -> None:
            raise ValueError(f"{name}: must be {want}, got {getattr(self, name)!r}; {fix}")

        if not isinstance(self.image, str) or not self.image:
            bad("image", "a non-empty image name", "build one with `espl sandbox build`")
        if not _is_int(self.memory_mb) or self.memory_mb < 32:
            bad("memory_mb", "an int >= 32 (MiB)", "e.g. SandboxConfig(memory_mb=256)")
        if not _is_number(self.cpus) or not 0.01 <= self.cpus <= 64:
            bad("cpus", "a number in [0.01, 64]", "e.g. SandboxConfig(cpus=1.0)")
        if not _is_int(self.pids_limit) or self.pids_limit < 8:
            bad("pids_limit", "an int >= 8", "the program, its shell and the server need a few pids; e.g. 256")
        check_timeout(self.timeout_s, "timeout_s")
        if not _is_int(self.output_limit_bytes) or self.output_limit_bytes < 1:
            bad("output_limit_bytes", "an int >= 1", "e.g. 65536 (64 KiB per stream)")
        for name in ("workdir_size_mb", "tmp_size_mb", "shm_size_mb"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                bad(name, "an int >= 1 (MiB)", "e.g. 64")
        if not isinstance(self.workdir, str) or not self.workdir.startswith("/") or self.workdir in ("/", "/tmp"):
            bad("workdir", "an absolute path other than / and /tmp", "e.g. '/work'")
        if self.network != "none":
            # other modes open the host network to model-written code; allowed, but deliberately explicit
            if not isinstance(self.network, str) or not self.network:
                bad("network", "a Docker network mode", "use 'none' (the default)")
        if self.user in ("root", "0", "0:0") or not isinstance(self.user, str):
            bad("user", "a non-root 'uid:gid'", "keep the default '10001:10001'")

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if k == "labels" else v) for k, v in asdict(self).items()}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and math.isfinite(x)


def check_timeout(timeout_s: Any, name: str = "timeout_s") -> float:
    if not _is_number(timeout_s) or timeout_s <= 0:
        raise ValueError(f"{name}: must be a number of seconds > 0, got {timeout_s!r}; e.g. {name}=10")
    return float(timeout_s)


@runtime_checkable
class Sandbox(Protocol):
    """Runs untrusted code in isolation. See the module docstring for the contract."""

    config: SandboxConfig

    def run(
        self,
        code: str | bytes | None = None,
        *,
        argv: Sequence[str] | None = None,
        files: Mapping[str, str | bytes] | None = None,
        stdin: str | bytes | None = None,
        timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ExecutionResult: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Sandbox": ...

    def __exit__(self, *exc: Any) -> None: ...


def build_request(
    config: SandboxConfig,
    code: str | bytes | None,
    argv: Sequence[str] | None,
    files: Mapping[str, str | bytes] | None,
    stdin: str | bytes | None,
    timeout_s: float | None,
    env: Mapping[str, str] | None,
) -> dict[str, Any]:
    """Validate one run's arguments and make the container server's request (see container_server.py)."""
    if (code is None) == (argv is None):
        raise ValueError("run: pass exactly one of `code` (Python source) or `argv` (a command as a list of str)")
    files = dict(files or {})
    if code is not None:
        if isinstance(code, bytes):
            try:
                code = code.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"code: is not UTF-8 text ({exc.reason} at byte {exc.start}); decode it to str first, or pass "
                    "the bytes as a file (files={'prog.py': data}) with argv=['python3', 'prog.py']"
                ) from None
        if not isinstance(code, str):
            raise TypeError(f"code: must be str or UTF-8 bytes, got {type(code).__name__}")
        try:
            code_bytes = code.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"code: contains text that cannot be encoded as UTF-8 ({exc.reason} at index {exc.start}, e.g. a "
                "lone surrogate); clean it with s.encode('utf-8', 'replace').decode()"
            ) from None
        if MAIN_FILE in files:
            raise ValueError(f"files: {MAIN_FILE!r} is where `code` goes; rename that file or run it with argv")
        files[MAIN_FILE] = code_bytes
        argv = ["python3", MAIN_FILE]
    if isinstance(argv, (str, bytes)) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"argv: must be a non-empty list of str, got {argv!r}; e.g. argv=['python3', 'main.py']")
    encoded: dict[str, str] = {}
    for rel, data in files.items():
        if not isinstance(rel, str) or not rel or rel.startswith("/") or ".." in rel.split("/"):
            raise ValueError(f"files: key {rel!r} must be a relative path inside the work dir, e.g. 'data/in.txt'")
        if isinstance(data, str):
            data = data.encode("utf-8", errors="surrogateescape")
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"files[{rel!r}]: must be str or bytes, got {type(data).__name__}")
        encoded[rel] = base64.b64encode(bytes(data)).decode()
    if isinstance(stdin, str):
        stdin = stdin.encode("utf-8", errors="surrogateescape")
    if stdin is not None and not isinstance(stdin, (bytes, bytearray)):
        raise TypeError(f"stdin: must be str, bytes or None, got {type(stdin).__name__}")
    env = dict(env or {})
    for k, v in env.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k or "=" in k or "\0" in k + v:
            raise ValueError(f"env: {k!r}={v!r} is not a valid environment variable (str name without '=', str value)")
    size = sum(len(v) for v in encoded.values()) + (len(stdin) * 4 // 3 if stdin is not None else 0)
    if size > MAX_REQUEST_BYTES:  # the server (PID 1) holds the request in the container's memory
        raise ValueError(f"files + stdin: {size / 2**20:.0f} MiB after encoding, more than the "
                         f"{MAX_REQUEST_BYTES >> 20} MiB a run takes; pass less data (or raise memory_mb and "
                         "write it in several runs of one lease)")
    return {
        "argv": list(argv),
        "files": encoded,
        "stdin": base64.b64encode(bytes(stdin)).decode() if stdin is not None else None,
        "env": env,
        "timeout_s": check_timeout(config.timeout_s if timeout_s is None else timeout_s),
        "output_limit": config.output_limit_bytes,
        "workdir": config.workdir,
        "reset": False,
    }


def result_from_reply(reply: dict[str, Any]) -> ExecutionResult:
    def text(b64: str) -> str:
        return base64.b64decode(b64).decode("utf-8", errors="replace")

    return ExecutionResult(
        stdout=text(reply["stdout"]), stderr=text(reply["stderr"]), exit_code=int(reply["exit_code"]),
        timed_out=bool(reply["timed_out"]), oom_killed=bool(reply["oom_killed"]),
        duration_s=float(reply["duration_s"]), truncated=bool(reply["truncated"]),
    )
