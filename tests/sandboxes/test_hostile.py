"""The hostile suite: every escape we could think of, run against a real Docker daemon. Each must fail safely
(the program is stopped or refused, the host and the next run are unaffected, nothing is left behind).
Timeouts are short (2-3 s) to keep the suite quick."""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from espl.sandboxes.core import SandboxConfig
from tests.sandboxes.conftest import OWNER_PIDS

pytestmark = pytest.mark.docker

# The suite runs under any runtime (ESPL_SANDBOX_RUNTIME=runsc runs it under gVisor). Where gVisor's own
# kernel answers differently but still safely (namespaces made inside its kernel, a fork bomb or a signal
# to PID 1 ending the whole container), the test says so and checks the safe outcome instead.
GVISOR = SandboxConfig().runtime == "runsc"


def run_json(sb, code: str, **kw) -> dict:
    r = sb.run(textwrap.dedent(code), **kw)
    assert r.exit_code == 0 and not r.timed_out, r
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- network -----------------------------------------------------------------------------------------------------
def test_dns_lookup_fails(pool):
    out = run_json(pool, """
        import json, socket
        try:
            socket.getaddrinfo("example.com", 80)
            print(json.dumps("resolved"))
        except OSError as e:
            print(json.dumps(type(e).__name__))
    """)
    assert out == "gaierror"


def test_tcp_to_host_loopback_fails(pool):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    try:
        out = run_json(pool, f"""
            import json, socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
                print(json.dumps("connected"))
            except OSError as e:
                print(json.dumps(type(e).__name__))
        """)
        assert out in ("ConnectionRefusedError", "TimeoutError")
        with pytest.raises((socket.timeout, TimeoutError)):
            server.accept()  # nothing from the sandbox ever reached the host's loopback
    finally:
        server.close()


def test_tcp_to_outside_address_fails(pool):
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never routed, so even a leak would send nothing anywhere
    out = run_json(pool, """
        import json, socket
        try:
            socket.create_connection(("192.0.2.1", 80), timeout=2).close()
            print(json.dumps("connected"))
        except OSError as e:
            print(json.dumps(e.errno))
    """)
    assert out != "connected"


def test_only_loopback_interface(pool):
    assert run_json(pool, "import json, os; print(json.dumps(sorted(os.listdir('/sys/class/net'))))") == ["lo"]


# ---- resource exhaustion ---------------------------------------------------------------------------------------
def test_fork_bomb_is_contained(pool):
    r = pool.run(textwrap.dedent("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """), timeout_s=3)
    assert r.exit_code == 137 and (r.timed_out or GVISOR)  # gVisor may end the whole container instead
    assert pool.run("print('alive')").stdout == "alive\n"  # the pool recovered (a fresh container)


def test_memory_bomb_is_oom_killed(pool):
    r = pool.run("s = 'x' * (2 << 30)\nprint('survived')", timeout_s=10)
    assert r.oom_killed and r.exit_code == 137 and "survived" not in r.stdout
    assert pool.run("print(1)").stdout == "1\n"


def test_cpu_spin_times_out_and_cold_container_is_gone(docker_ready):
    from espl.sandboxes.docker_sandbox import DockerSandbox, connect

    tag = f"spin-{secrets.token_hex(4)}"
    with DockerSandbox(labels={"espl.test": tag}) as sb:
        t0 = time.monotonic()
        r = sb.run("while True: pass", timeout_s=2)
        elapsed = time.monotonic() - t0
    assert r.timed_out and r.exit_code == 137 and elapsed < 10
    assert connect().api.containers(all=True, filters={"label": f"espl.test={tag}"}) == []


def test_cpu_spin_in_pool_replaces_the_container(pool):
    from espl.sandboxes.docker_sandbox import connect

    with pool.lease() as box:
        first = box.container_id
        r = box.run("while True: pass", timeout_s=2)
        assert r.timed_out
        assert box.run("print('next')").stdout == "next\n"
        assert box.container_id != first  # a timed-out container is not trusted again
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and connect().api.containers(all=True, filters={"id": first}):
        time.sleep(0.1)
    assert connect().api.containers(all=True, filters={"id": first}) == []


def test_sleep_past_timeout(pool):
    r = pool.run("import time; time.sleep(60)", timeout_s=1)
    assert r.timed_out and 0.9 <= r.duration_s < 5


def test_closing_its_pipes_does_not_escape_the_timeout(pool):
    t0 = time.monotonic()
    r = pool.run("import os, time\nos.close(1); os.close(2)\ntime.sleep(60)", timeout_s=1)
    assert r.timed_out and time.monotonic() - t0 < 5  # the server's timer, not the host's grace


def test_leaving_its_process_group_does_not_escape_the_timeout(pool):
    t0 = time.monotonic()
    r = pool.run(textwrap.dedent("""
        import os, time
        child = os.fork()
        if child == 0:
            os.setpgid(0, 0)
            time.sleep(100)
        time.sleep(0.2)
        try:
            os.setpgid(0, child)  # join the child's group, leaving the one the server would kill
            print("left its group", flush=True)
        except PermissionError:  # it leads its own session, so it cannot
            print("stuck in its group", flush=True)
        while True:
            pass
    """), timeout_s=1)
    assert r.timed_out and r.exit_code == 137 and time.monotonic() - t0 < 4  # not the host's 5 s grace
    # runc: a session leader cannot change group; gVisor lets it, and the kill by pid still lands
    assert r.stdout == ("left its group\n" if GVISOR else "stuck in its group\n")


def test_kill_minus_one_spares_the_server(pool):
    with pool.lease() as box:
        r = box.run("import os, signal, subprocess\np = subprocess.Popen(['sleep', '100'])\n"
                    "os.kill(-1, signal.SIGKILL)\nprint(p.wait())")
        assert r.exit_code == 0 and r.stdout == "-9\n"  # its own child died; PID 1 (the server) did not
        assert box.run("print('ok')").stdout == "ok\n"


def test_container_removed_while_idle_is_replaced(docker_ready):
    from espl.sandboxes.docker_sandbox import connect
    from espl.sandboxes.pool import SandboxPool

    with SandboxPool(size=1) as one:
        with one.lease() as box:
            first = box.container_id
            box.run("print(1)")
        connect().api.remove_container(first, force=True)  # e.g. `docker rm -f`, or a daemon restart
        with one.lease() as box:
            assert box.run("print('fresh')").stdout == "fresh\n" and box.container_id != first


def test_background_process_does_not_outlive_the_run(pool):
    with pool.lease() as box:
        t0 = time.monotonic()
        r = box.run(textwrap.dedent("""
            import subprocess
            subprocess.Popen(["sleep", "1000"], start_new_session=True)   # holds no pipe of ours
            subprocess.Popen(["sh", "-c", "sleep 1000"])                   # holds stdout
            print("main done")
        """))
        assert r.exit_code == 0 and r.stdout == "main done\n" and time.monotonic() - t0 < 5
        procs = run_json(box, """
            import json, os
            print(json.dumps([open(f"/proc/{p}/cmdline").read() for p in os.listdir("/proc")
                              if p.isdigit() and int(p) not in (1, os.getpid())]))
        """)
        assert procs == []


def test_disk_fill_of_work_dir_hits_its_limit(pool):
    out = run_json(pool, """
        import json, os
        n = 0
        try:
            with open("big", "wb") as f:
                while True:
                    f.write(b"x" * (1 << 20)); f.flush(); n += 1
        except OSError as e:
            print(json.dumps([e.errno, n]))
    """, timeout_s=20)
    assert out[0] == 28 and out[1] <= 64  # ENOSPC at the 64 MiB tmpfs size


def test_disk_fill_of_tmp_hits_its_limit(pool):
    out = run_json(pool, """
        import json
        n = 0
        try:
            with open("/tmp/big", "wb") as f:
                while True:
                    f.write(b"x" * (1 << 20)); f.flush(); n += 1
        except OSError as e:
            print(json.dumps([e.errno, n]))
    """, timeout_s=20)
    assert out[0] == 28 and out[1] <= 16


def test_disk_fill_of_dev_shm_hits_its_limit(pool):
    out = run_json(pool, """
        import json
        n = 0
        try:
            with open("/dev/shm/big", "wb") as f:
                while True:
                    f.write(b"x" * (1 << 20)); f.flush(); n += 1
        except OSError as e:
            print(json.dumps([e.errno, n]))
    """, timeout_s=20)
    assert out[0] == 28 and out[1] <= 16


def test_100mb_of_stdout_is_capped(pool):
    r = pool.run("import sys\nfor _ in range(100): sys.stdout.write('x' * (1 << 20))", timeout_s=20)
    assert r.exit_code == 0 and r.truncated and len(r.stdout.encode()) == 64 * 1024


def test_stderr_flood_is_capped(pool):
    r = pool.run("import sys\nfor _ in range(20): sys.stderr.write('e' * (1 << 20))", timeout_s=20)
    assert r.truncated and len(r.stderr.encode()) == 64 * 1024 and r.stdout == ""


def test_binary_output_is_safe(pool):
    r = pool.run("import sys\nsys.stdout.buffer.write(bytes(range(256)) * 4)\nsys.stderr.buffer.write(b'\\xff\\xfe')")
    assert r.exit_code == 0 and "\ufffd" in r.stdout and "\ufffd" in r.stderr
    json.dumps(r.to_dict())  # serialisable, e.g. for `espl sandbox run --json`


# ---- the host's files, socket, privileges -------------------------------------------------------------------------
def test_host_files_are_not_visible(pool, tmp_path):
    marker = tmp_path / f"espl-host-secret-{secrets.token_hex(4)}"
    marker.write_text("secret")
    out = run_json(pool, f"""
        import json, os
        res = {{}}
        for p in [{str(marker)!r}, "/etc/shadow", "/root/.bash_history", "/home"]:
            try:
                res[p] = open(p).read()[:20] if not os.path.isdir(p) else os.listdir(p)
            except OSError as e:
                res[p] = type(e).__name__
        print(json.dumps(res))
    """)
    assert out[str(marker)] == "FileNotFoundError"
    assert out["/etc/shadow"] == "PermissionError"  # the image's own, root-only
    assert out["/home"] in ([], "FileNotFoundError")


def test_docker_socket_is_not_reachable(pool):
    out = run_json(pool, """
        import json, os, socket
        res = []
        for p in ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock"):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(p); res.append("connected " + p)
            except OSError as e:
                res.append(type(e).__name__)
        print(json.dumps(res))
    """)
    assert all(not x.startswith("connected") for x in out), out


def test_cannot_write_outside_the_work_dir(pool):
    out = run_json(pool, """
        import json
        res = {}
        for d in ("/", "/etc", "/usr", "/usr/lib/python3.11", "/var", "/var/tmp", "/root", "/opt", "/bin"):
            try:
                open(d.rstrip("/") + "/espl-escape", "w").write("x"); res[d] = "written"
            except OSError as e:
                res[d] = e.errno
        open("inside", "w").write("ok")
        print(json.dumps(res))
    """)
    assert "written" not in out.values(), out


def test_runs_unprivileged(pool):
    out = run_json(pool, """
        import ctypes, json, os
        st = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
        print(json.dumps({k: st.get(k, "").strip() for k in ("CapEff", "CapPrm", "CapBnd", "Seccomp")}
                         | {"uid": os.getuid(), "gid": os.getgid(),
                            "no_new_privs": ctypes.CDLL(None).prctl(39, 0, 0, 0, 0)}))  # PR_GET_NO_NEW_PRIVS
    """)
    assert out["uid"] == 10001 and out["gid"] == 10001
    assert int(out["CapEff"], 16) == int(out["CapPrm"], 16) == int(out["CapBnd"], 16) == 0
    assert out["no_new_privs"] == 1
    assert out["Seccomp"] == ("0" if GVISOR else "2")  # gVisor filters the host syscalls of its own kernel


def test_setuid_fails(pool):
    out = run_json(pool, """
        import json, os
        res = []
        for f in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.chroot("/tmp"), lambda: os.seteuid(0)):
            try:
                f(); res.append("ok")
            except OSError as e:
                res.append(type(e).__name__)
        print(json.dumps(res))
    """)
    assert out == ["PermissionError"] * 4


def test_sudo_and_su_give_no_root(pool):
    r = pool.run(argv=["sh", "-c", "command -v sudo || echo no-sudo; su -c id root </dev/null; echo su=$?; id -u"])
    assert "no-sudo" in r.stdout and "su=0" not in r.stdout and r.stdout.strip().endswith("10001")
    assert "uid=0" not in r.stdout


def test_mount_and_namespaces_fail(pool):
    out = run_json(pool, """
        import ctypes, json, os, subprocess
        libc = ctypes.CDLL(None, use_errno=True)
        res = {"unshare_user": libc.unshare(0x10000000), "unshare_mount": libc.unshare(0x00020000)}
        os.makedirs("m", exist_ok=True)
        res["mount"] = subprocess.run(["mount", "-t", "tmpfs", "none", "m"], capture_output=True).returncode
        res["mount_syscall"] = libc.mount(b"none", b"m", b"tmpfs", 0, None)
        print(json.dumps(res))
    """)
    assert out["mount_syscall"] == -1 and out["mount"] != 0
    if not GVISOR:  # gVisor makes namespaces inside its own kernel: no host namespace is created
        assert out["unshare_user"] == -1 and out["unshare_mount"] == -1


def test_proc_snooping_sees_only_the_sandbox(pool):
    out = run_json(pool, """
        import json, os
        res = {"pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
        for p in ("/proc/1/environ", "/proc/1/mem", "/proc/1/fd"):
            try:
                res[p] = os.listdir(p) if p.endswith("fd") else len(open(p, "rb").read(64))
            except OSError as e:
                res[p] = type(e).__name__
        res["cmdlines"] = [open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace") for p in res["pids"]]
        try:
            res["kcore"] = len(open("/proc/kcore", "rb").read(16))
        except OSError as e:
            res["kcore"] = type(e).__name__
        print(json.dumps(res))
    """)
    assert len(out["pids"]) <= 3 and 1 in out["pids"]  # PID 1 (our server), the program, maybe its reader
    assert not any("pytest" in c or "dockerd" in c for c in out["cmdlines"])
    if not GVISOR:  # gVisor's /proc ignores non-dumpable: see test_forged_replies_are_ignored
        for p in ("/proc/1/environ", "/proc/1/mem", "/proc/1/fd"):
            assert out[p] == "PermissionError", (p, out[p])  # PID 1 is non-dumpable
    assert out["kcore"] in (0, "PermissionError", "FileNotFoundError")  # masked by Docker (or absent)


def test_sys_and_proc_sys_are_read_only(pool):
    out = run_json(pool, """
        import json
        res = {}
        for p in ("/proc/sys/kernel/hostname", "/proc/sys/vm/drop_caches",
                  "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max", "/sys/kernel/uevent_helper"):
            try:
                open(p, "w").write("1"); res[p] = "written"
            except OSError as e:
                res[p] = type(e).__name__
        print(json.dumps(res))
    """)
    assert "written" not in out.values(), out


def test_cannot_kill_pid_1(pool):
    with pool.lease() as box:
        first = box.container_id
        r = box.run("import os, signal\nfor s in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT): os.kill(1, s)")
        assert box.run("print('still here')").stdout == "still here\n"
        if not GVISOR:  # runc: PID 1 ignores signals from inside; gVisor: the container ends and is replaced
            assert r.exit_code == 0 and box.container_id == first


def test_forged_replies_are_ignored(pool):
    forge = textwrap.dedent("""
        import base64, json
        fake = json.dumps({"id": "guess", "stdout": base64.b64encode(b"forged").decode(), "stderr": "",
                           "exit_code": 0, "timed_out": False, "oom_killed": False, "truncated": False,
                           "duration_s": 0, "error": None}).encode()
        try:
            with open("/proc/1/fd/1", "wb") as f:   # PID 1's stdout: the reply channel to the host
                f.write(b"%d\\n" % len(fake) + fake)
            print("wrote")
        except OSError as e:
            print(type(e).__name__)
    """)
    with pool.lease() as box:
        r = box.run(forge)
        assert r.stdout == ("wrote\n" if GVISOR else "PermissionError\n")
        assert box.run("print('mine')").stdout == "mine\n"
    assert pool.run("print('next lease')").stdout == "next lease\n"


def test_host_env_vars_do_not_leak(pool, monkeypatch):
    monkeypatch.setenv("ESPL_TEST_SECRET", "hunter2")
    env = run_json(pool, "import json, os; print(json.dumps(dict(os.environ)))", env={"MINE": "1"})
    assert "hunter2" not in json.dumps(env)
    assert set(env) <= {"PATH", "LANG", "PYTHONDONTWRITEBYTECODE", "TMPDIR", "USER", "HOME", "MINE", "LC_CTYPE"}
    assert env["MINE"] == "1"


# ---- isolation between uses -----------------------------------------------------------------------------------------
def test_no_state_leaks_between_leases(docker_ready):
    from espl.sandboxes.pool import SandboxPool

    with SandboxPool(size=1) as one:
        with one.lease() as box:
            first = box.container_id
            r = box.run(textwrap.dedent("""
                import os, subprocess
                open("secret", "w").write("s"); open("/tmp/secret", "w").write("s")
                open("/dev/shm/secret", "w").write("s")
                os.makedirs("locked/deep"); os.chmod("locked/deep", 0); os.chmod("locked", 0)
                subprocess.Popen(["sleep", "1000"], start_new_session=True)
            """), env={"LEAK": "1"})
            assert r.exit_code == 0, r
            assert box.run("import os; print(sorted(os.listdir('.')))").stdout == "['locked', 'main.py', 'secret']\n"
        with one.lease() as box:
            assert box.container_id == first  # the same warm container, reset
            out = run_json(box, """
                import json, os
                print(json.dumps({"work": sorted(os.listdir(".")), "tmp": os.listdir("/tmp"),
                                  "shm": os.listdir("/dev/shm"), "env": os.environ.get("LEAK"),
                                  "procs": [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, os.getpid())]}))
            """)
    assert out == {"work": ["main.py"], "tmp": [], "shm": [], "env": None, "procs": []}


def test_concurrent_leases_do_not_mix(pool):
    tokens = [secrets.token_hex(4) for _ in range(12)]
    results: dict[str, str] = {}

    def work(tok: str) -> None:
        results[tok] = pool.run(f"import time; time.sleep(0.05); print({tok!r})", stdin=tok).stdout

    threads = [threading.Thread(target=work, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {t: t + "\n" for t in tokens}


# ---- the owner process dies ----------------------------------------------------------------------------------------
OWNER = """
import sys, time
from espl.sandboxes.pool import SandboxPool
pool = SandboxPool(size=1)
pool.warm()
print("ready", flush=True)
pool.run("import time; time.sleep(120)", timeout_s=120)
"""


def _start_owner() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    OWNER_PIDS.add(proc.pid)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)  # the run is under way
    return proc


def _owned_by(pid: int) -> list:
    from espl.sandboxes.reaper import list_sandbox_containers

    return [c for c in list_sandbox_containers() if c.owner_pid == pid]


def test_killed_owner_leaves_no_orphan_after_reap(docker_ready):
    from espl.sandboxes.reaper import reap

    proc = _start_owner()
    assert len(_owned_by(proc.pid)) == 1
    proc.kill()  # SIGKILL: no handler, no atexit
    proc.wait()
    reap()
    assert _owned_by(proc.pid) == []


def test_sigterm_owner_removes_its_containers(docker_ready):
    proc = _start_owner()
    assert len(_owned_by(proc.pid)) == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
    assert _owned_by(proc.pid) == []  # removed by the owner itself, no reaper needed


def test_sigint_owner_removes_its_containers(docker_ready):
    proc = _start_owner()
    assert len(_owned_by(proc.pid)) == 1
    proc.send_signal(signal.SIGINT)  # KeyboardInterrupt: context managers and atexit clean up
    assert proc.wait(timeout=30) != 0
    assert _owned_by(proc.pid) == []


def test_killed_owner_container_ends_by_itself(docker_ready):
    """Without the reaper: the attach stream closes, the server stops the program and exits, Docker removes it."""
    proc = _start_owner()
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while _owned_by(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _owned_by(proc.pid) == []


# ---- a daemon that is down -------------------------------------------------------------------------------------------
def test_daemon_down_gives_a_clear_error(tmp_path):
    from espl.sandboxes.core import SandboxUnavailable
    from espl.sandboxes.docker_sandbox import DockerSandbox
    from espl.sandboxes.pool import SandboxPool

    url = f"unix://{tmp_path}/no-daemon.sock"
    for make in (lambda: DockerSandbox(docker_host=url), lambda: SandboxPool(size=1, docker_host=url)):
        with pytest.raises(SandboxUnavailable, match=r"not reachable.*start the daemon"):
            make()
