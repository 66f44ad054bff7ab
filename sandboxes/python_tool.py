"""The `python` tool of tool-use envs: run a snippet in the shared sandbox pool, get text for a tool message.

    run_python("print(2**10)")  ->  "1024\n"
    run_python("1/0")           ->  "Traceback ... ZeroDivisionError: division by zero\n[exit code 1]"

The text is stdout, then stderr, then bracketed notes for a non-zero exit, a timeout, the OOM killer or cut
output, and is at most MAX_TOOL_CHARS long (the model's context is the scarce thing, not the sandbox's cap).
Infrastructure failures (no daemon, no image) raise SandboxUnavailable: they are not the model's doing and
must not be scored as its mistake.
"""

from __future__ import annotations

import time

from espl.sandboxes.core import ExecutionResult, SandboxError, check_timeout

MAX_TOOL_CHARS = 4000
_AVAILABLE: tuple[float, bool] | None = None  # (checked at, result): a cheap cache for hot loops
_AVAILABLE_TTL_S = 30.0


def run_python(code: str, timeout_s: float = 5.0) -> str:
    """Run `code` with `python3` in a pooled sandbox; the text a tool message should carry."""
    from espl.sandboxes.shared import shared_pool

    if not isinstance(code, str):
        raise TypeError(f"code: must be a str, got {type(code).__name__}")
    check_timeout(timeout_s)
    code = code.encode("utf-8", errors="replace").decode("utf-8")  # lone surrogates from a model reply
    return format_result(shared_pool().run(code, timeout_s=timeout_s), timeout_s)


def format_result(result: ExecutionResult, timeout_s: float | None = None) -> str:
    parts = [result.stdout]
    if result.stderr:
        parts.append(result.stderr if not result.stdout or result.stdout.endswith("\n") else "\n" + result.stderr)
    notes = []
    if result.timed_out:
        notes.append(f"timed out after {timeout_s:g} s" if timeout_s else "timed out")
    elif result.oom_killed:
        notes.append("killed: out of memory")
    elif result.exit_code != 0:
        notes.append(f"exit code {result.exit_code}")
    if result.truncated:
        notes.append("output truncated")
    text = "".join(parts)
    if len(text) > MAX_TOOL_CHARS:
        text = text[: MAX_TOOL_CHARS // 2] + "\n...[cut]...\n" + text[-MAX_TOOL_CHARS // 2:]
        if "output truncated" not in notes:
            notes.append("output truncated")
    if notes:
        text = (text if not text or text.endswith("\n") else text + "\n") + f"[{'; '.join(notes)}]"
    return text or "[no output]"


def sandbox_available() -> bool:
    """True when the Docker daemon answers and the sandbox image exists (cached for 30 s)."""
    global _AVAILABLE
    now = time.monotonic()
    if _AVAILABLE is not None and now - _AVAILABLE[0] < _AVAILABLE_TTL_S:
        return _AVAILABLE[1]
    from espl.sandboxes.docker_sandbox import check_image, connect
    from espl.sandboxes.shared import shared_config

    config = shared_config()
    try:
        check_image(connect(config.docker_host), config.image)
        ok = True
    except SandboxError:
        ok = False
    _AVAILABLE = (now, ok)
    return ok
