"""The sandbox contract: results, files/stdin/argv, bad input, the pool, the python tool, the CLI, the doctor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields

import pytest

from espl.sandboxes.core import ExecutionResult, SandboxConfig, build_request
from tests.sandboxes.conftest import OWNER_PIDS

ESPL = [sys.executable, "-c", "from espl.cli import main; main()"]


# ---- bad input: no daemon needed -------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("memory_mb", 0), ("memory_mb", "256"), ("cpus", 0), ("cpus", float("nan")), ("pids_limit", 2),
    ("timeout_s", 0), ("timeout_s", -1), ("output_limit_bytes", 0), ("workdir", "relative"), ("user", "root"),
    ("tmp_size_mb", 0),
])
def test_bad_limits_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SandboxConfig(**{field: value})


@pytest.mark.parametrize("timeout", [0, -5, float("inf"), "10"])
def test_bad_timeout_per_run(timeout):
    with pytest.raises(ValueError, match=r"timeout_s: must be a number of seconds > 0"):
        build_request(SandboxConfig(), "print(1)", None, None, None, timeout, None)


def test_non_utf8_code_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"not UTF-8.*files="):
        build_request(SandboxConfig(), b"print('\xff')", None, None, None, None, None)
    with pytest.raises(ValueError, match=r"UTF-8"):
        build_request(SandboxConfig(), "print('\udcff')", None, None, None, None, None)


@pytest.mark.parametrize("kw, match", [
    (dict(code=None, argv=None), "exactly one"),
    (dict(code="x", argv=["ls"]), "exactly one"),
    (dict(code=None, argv="ls"), "argv"),
    (dict(code="x", files={"../up": "x"}), "relative path"),
    (dict(code="x", files={"/abs": "x"}), "relative path"),
    (dict(code="x", files={"main.py": "x"}), "main.py"),
    (dict(code="x", env={"A=B": "1"}), "env"),
    (dict(code="x", stdin=b"x" * (30 << 20)), "more than the 32 MiB"),
])
def test_bad_run_arguments(kw, match):
    args = dict(code=None, argv=None, files=None, stdin=None, timeout_s=None, env=None) | kw
    with pytest.raises(ValueError, match=match):
        build_request(SandboxConfig(), args["code"], args["argv"], args["files"], args["stdin"], args["timeout_s"],
                      args["env"])


def test_execution_result_fields():
    assert [f.name for f in fields(ExecutionResult)] == [
        "stdout", "stderr", "exit_code", "timed_out", "oom_killed", "duration_s", "truncated"]
    r = ExecutionResult("a", "", 0, False, False, 0.1, False)
    with pytest.raises(Exception):
        r.stdout = "b"  # frozen


def test_apt_mirror_is_read_from_deb822_and_classic(tmp_path):
    from espl.sandboxes.image import DEFAULT_MIRROR, apt_mirror

    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n")
    assert apt_mirror(str(tmp_path)) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://classic.example/debian bookworm main\n")
    assert apt_mirror(str(tmp_path)) == "http://classic.example/debian"
    (tmp_path / "sources.list").unlink()
    assert apt_mirror(str(tmp_path)) == DEFAULT_MIRROR


def test_python_tool_formatting():
    from espl.sandboxes.python_tool import MAX_TOOL_CHARS, format_result

    assert format_result(ExecutionResult("4\n", "", 0, False, False, 0.1, False)) == "4\n"
    assert format_result(ExecutionResult("", "", 0, False, False, 0.1, False)) == "[no output]"
    text = format_result(ExecutionResult("", "Traceback\nZeroDivisionError\n", 1, False, False, 0.1, False))
    assert text.endswith("ZeroDivisionError\n[exit code 1]")
    assert format_result(ExecutionResult("", "", 137, True, False, 5, False), 5).endswith("[timed out after 5 s]")
    long = format_result(ExecutionResult("x" * 10_000, "", 0, False, False, 0.1, True))
    assert len(long) < MAX_TOOL_CHARS + 100 and long.endswith("[output truncated]")


# ---- with the daemon -----------------------------------------------------------------------------------------------
def test_cold_run_contract(cold):
    r = cold.run("import sys\nprint(input()[::-1])\nprint('err', file=sys.stderr)\nsys.exit(3)", stdin="abc")
    assert (r.stdout, r.stderr, r.exit_code, r.timed_out, r.oom_killed, r.truncated) == ("cba\n", "err\n", 3, False,
                                                                                      False, False)
    assert 0 < r.duration_s < 5


def test_argv_files_and_binary_stdin(pool):
    r = pool.run(argv=["python3", "prog.py", "arg"], files={"prog.py": "import sys\nd = sys.stdin.buffer.read()\n"
                                                                      "print(sys.argv[1], len(d), open('data/x.bin','rb').read())",
                                                            "data/x.bin": b"\x00\x01"},
                 stdin=b"\xff" * 1000)
    assert r.stdout == "arg 1000 b'\\x00\\x01'\n", r


def test_missing_command_is_127(pool):
    r = pool.run(argv=["no-such-command"])
    assert r.exit_code == 127 and "no-such-command" in r.stderr


def test_files_persist_within_a_lease(pool):
    with pool.lease() as box:
        box.run("open('a', 'w').write('kept')")
        assert box.run("print(open('a').read())").stdout == "kept\n"


def test_no_image_gives_a_clear_error(docker_ready):
    from espl.sandboxes.core import SandboxUnavailable
    from espl.sandboxes.docker_sandbox import DockerSandbox

    with pytest.raises(SandboxUnavailable, match=r"not found: build it with `espl sandbox build"):
        DockerSandbox(image="espl-sandbox:no-such-tag")


def test_unknown_runtime_gives_a_clear_error(docker_ready):
    from espl.sandboxes.core import SandboxUnavailable
    from espl.sandboxes.docker_sandbox import DockerSandbox

    with DockerSandbox(runtime="no-such-runtime") as sb, pytest.raises(SandboxUnavailable, match="daemon.json"):
        sb.run("print(1)")


def test_pool_lease_timeout_and_size(docker_ready):
    from espl.sandboxes.pool import SandboxPool

    with SandboxPool(size=1) as one:
        with one.lease():
            t0 = time.monotonic()
            with pytest.raises(TimeoutError, match="make it larger"):
                with one.lease(timeout_s=0.3):
                    pass
            assert time.monotonic() - t0 < 3
    with pytest.raises(ValueError, match="size"):
        SandboxPool(size=0)


def test_python_tool_runs_in_the_shared_pool(docker_ready):
    from espl.sandboxes.python_tool import run_python, sandbox_available

    assert sandbox_available()
    assert run_python("print(2 ** 10)") == "1024\n"
    assert run_python("1/0").endswith("ZeroDivisionError: division by zero\n[exit code 1]")
    assert run_python("while True: pass", timeout_s=1).endswith("[timed out after 1 s]")


# ---- CLI -----------------------------------------------------------------------------------------------------------
def test_cli_run_json_prints_exactly_the_fields(docker_ready, tmp_path):
    prog = tmp_path / "p.py"
    prog.write_text("import sys\nprint('hi')\nsys.exit(4)\n")
    out = subprocess.run(ESPL + ["sandbox", "run", str(prog), "--json", "--timeout", "5"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr  # the sandbox worked; the program's exit code is in the JSON
    data = json.loads(out.stdout)
    assert list(data) == [f.name for f in fields(ExecutionResult)]
    assert data["stdout"] == "hi\n" and data["exit_code"] == 4


def test_cli_run_bad_inputs(docker_ready, tmp_path):
    bad = tmp_path / "latin1.py"
    bad.write_bytes(b"print('\xe9')\n")
    out = subprocess.run(ESPL + ["sandbox", "run", str(bad)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "not UTF-8" in out.stderr and "iconv" in out.stderr
    good = tmp_path / "ok.py"
    good.write_text("print(1)\n")
    for opts, match in ((["--timeout", "0"], "timeout_s"), (["--memory-mb", "1"], "memory_mb")):
        out = subprocess.run(ESPL + ["sandbox", "run", str(good)] + opts, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and match in out.stderr, out.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_run_signal_removes_the_container(docker_ready, tmp_path, sig):
    from espl.sandboxes.reaper import list_sandbox_containers

    prog = tmp_path / "sleep.py"
    prog.write_text("import time\nprint('started', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen(ESPL + ["sandbox", "run", str(prog), "--timeout", "120"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    OWNER_PIDS.add(proc.pid)
    deadline = time.monotonic() + 60
    while not [c for c in list_sandbox_containers() if c.owner_pid == proc.pid] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [c for c in list_sandbox_containers() if c.owner_pid == proc.pid], "the container never started"
    time.sleep(0.5)
    proc.send_signal(sig)
    rc = proc.wait(timeout=30)
    assert [c for c in list_sandbox_containers() if c.owner_pid == proc.pid] == []
    assert rc == (130 if sig == signal.SIGINT else -signal.SIGTERM)


def test_cli_doctor_and_reap(docker_ready):
    out = subprocess.run(ESPL + ["sandbox", "doctor"], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "hardened run" in out.stdout and "sandboxes ready" in out.stderr
    out = subprocess.run(ESPL + ["sandbox", "reap"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "removed" in out.stderr


def test_cli_doctor_without_daemon_says_the_fix(tmp_path):
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/none.sock")
    out = subprocess.run(ESPL + ["sandbox", "doctor"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 1 and "dockerd" in out.stdout


def test_offline_build_needs_root_and_debootstrap(monkeypatch):
    from espl.sandboxes import image
    from espl.sandboxes.core import SandboxError

    monkeypatch.setattr(image.os, "geteuid", lambda: 1000)
    with pytest.raises(SandboxError, match=r"needs root: run `sudo espl sandbox build`"):
        image._debootstrap_import(None, "t:1", "bookworm", "http://deb.debian.org/debian", print)
    monkeypatch.setattr(image.os, "geteuid", lambda: 0)
    monkeypatch.setattr(image.shutil, "which", lambda name: None)
    with pytest.raises(SandboxError, match=r"apt-get install debootstrap"):
        image._debootstrap_import(None, "t:1", "bookworm", "http://deb.debian.org/debian", print)
