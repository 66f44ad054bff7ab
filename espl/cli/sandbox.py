"""`espl sandbox build|doctor|run|reap`: the Docker sandboxes that run model-written code (docs/sandbox.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(help="Build, check and use the Docker sandboxes that run model-written code.", no_args_is_help=True)
console = Console(stderr=True)


def _chosen(**options: Optional[str]) -> dict:
    """The options given on the command line; the others keep SandboxConfig's (environment-aware) defaults."""
    return {k: v for k, v in options.items() if v is not None}


def _fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


@app.command("build")
def build(
    tag: str = typer.Option("espl-sandbox:latest", "--tag", help="Image name to create."),
    pull: bool = typer.Option(False, "--pull", metavar="", help="Pull python:<version>-slim instead (needs a registry)."),
    python_version: str = typer.Option("3.11", "--python", help="Python version of the pulled image (--pull)."),
    suite: str = typer.Option("bookworm", "--suite", help="Debian suite for the offline build."),
    mirror: Optional[str] = typer.Option(None, "--mirror", help="Debian mirror (default: the one apt uses here)."),
) -> None:
    """Make the sandbox image: offline with debootstrap (root, ~40 s) or with --pull."""
    import time

    from espl.sandboxes.core import SandboxError
    from espl.sandboxes.image import build_image

    t0 = time.monotonic()
    try:
        image_id = build_image(tag, pull=pull, python_version=python_version, suite=suite, mirror=mirror,
                               log=lambda m: console.print(m))
    except SandboxError as exc:
        _fail(str(exc))
    console.print(f"[green]built[/green] {tag} ({image_id[:19]}) in {time.monotonic() - t0:.0f} s; "
                  "check it with `espl sandbox doctor`")


@app.command("doctor")
def doctor(
    image: Optional[str] = typer.Option(None, "--image", help="Image to check [default: $ESPL_SANDBOX_IMAGE or espl-sandbox:latest]."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="OCI runtime to check (e.g. runsc) [default: $ESPL_SANDBOX_RUNTIME or the daemon's]."),
) -> None:
    """Check the daemon, limits support, runtime, image and hardening; print the fix for each problem."""
    from rich.table import Table

    from espl.sandboxes.core import SandboxConfig
    from espl.sandboxes.doctor import run_checks

    checks = run_checks(SandboxConfig(**_chosen(image=image, runtime=runtime)))
    table = Table(title="espl sandbox doctor")
    for col in ("check", "status", "detail", "fix"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.name, "[green]ok[/green]" if c.ok else "[red]FAIL[/red]", c.detail, c.fix)
    Console().print(table)
    failed = [c.name for c in checks if not c.ok]
    if failed:
        console.print(f"[red]{len(failed)} problem(s):[/red] {', '.join(failed)}")
        raise typer.Exit(1)
    console.print("[green]sandboxes ready[/green]")


@app.command("run")
def run(
    file: Path = typer.Argument(..., help="A Python file to run once in a fresh sandbox."),
    timeout: float = typer.Option(10.0, "--timeout", help="Wall-clock limit in seconds."),
    memory_mb: int = typer.Option(256, "--memory-mb", help="Memory limit in MiB."),
    image: Optional[str] = typer.Option(None, "--image", help="Sandbox image [default: $ESPL_SANDBOX_IMAGE or espl-sandbox:latest]."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="OCI runtime (e.g. runsc) [default: $ESPL_SANDBOX_RUNTIME or the daemon's]."),
    stdin_file: Optional[Path] = typer.Option(None, "--stdin", help="A file fed to the program's stdin."),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print the ExecutionResult as one JSON object."),
) -> None:
    """Run FILE with python3 in a hardened sandbox. Exit status 0 when the sandbox worked, whatever the
    program's own exit code (it is in the output); 2 when the sandbox could not run it."""
    from espl.sandboxes.core import SandboxConfig, SandboxError
    from espl.sandboxes.docker_sandbox import DockerSandbox

    if not file.is_file():
        _fail(f"FILE: {file} is not a file")
    try:
        code = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        _fail(f"FILE: {file} is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it, e.g. "
              f"`iconv -f latin1 -t utf-8 {file} > fixed.py`")
    stdin = None
    if stdin_file is not None:
        try:
            stdin = stdin_file.read_bytes()
        except OSError as exc:
            _fail(f"--stdin: cannot read {stdin_file} ({exc.strerror or exc})")
    try:
        config = SandboxConfig(memory_mb=memory_mb, timeout_s=timeout, **_chosen(image=image, runtime=runtime))
        with DockerSandbox(config) as sb:
            result = sb.run(code, stdin=stdin)
    except (ValueError, SandboxError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:  # the container is removed by run()'s own cleanup; say so and exit like a shell
        console.print("interrupted; the sandbox container was removed")
        raise typer.Exit(130) from None
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    flags = [name for name in ("timed_out", "oom_killed", "truncated") if getattr(result, name)]
    console.print(f"[dim]exit code {result.exit_code} in {result.duration_s:.3f} s"
                  + (f"; {', '.join(flags)}" if flags else "") + "[/dim]")


@app.command("reap")
def reap(
    all_owners: bool = typer.Option(False, "--all", metavar="", help="Remove every espl sandbox container, live owners too."),
) -> None:
    """Remove sandbox containers left by processes that died (crash, SIGKILL)."""
    from espl.sandboxes.core import SandboxError
    from espl.sandboxes.reaper import reap as reap_containers

    try:
        removed = reap_containers(all_owners=all_owners)
    except SandboxError as exc:
        _fail(str(exc))
    console.print(f"removed {len(removed)} sandbox container(s)" + (": " + ", ".join(r[:12] for r in removed)
                                                                     if removed else ""))
