"""The process that runs as PID 1 inside every sandbox container (stdlib only; never imported by the host).

The host starts a container with `python3 -I -S -c <this file's source>` as its command and talks to it over
the container's attached stdin/stdout: one length-prefixed JSON request per run, one length-prefixed JSON
reply. Why a resident server instead of one `docker exec` per run: an exec costs ~40 ms of daemon and runc
work before any code starts (measured on the CI machine), which alone would eat most of the 60 ms warm
budget; a write to an already-open socket costs well under a millisecond.

Why it is safe to keep it in the same container as the untrusted program:
- it is PID 1 of the container's PID namespace: signals sent from inside the namespace reach it only for
  signals it handles (it handles none), and `kill(-1, ...)` skips it, so the program cannot kill it;
- it marks itself non-dumpable (prctl PR_SET_DUMPABLE=0), so a program of the same uid can neither ptrace it
  nor open /proc/1/fd/* or /proc/1/environ to forge replies or read its state;
- the program runs in its own session with fresh pipes (no inherited descriptors) and a fresh environment.

Request:  b"<n>\\n" + JSON {id, argv, files{rel: base64}, stdin: base64|null, env, timeout_s,
          output_limit, reset, workdir}
Reply:    b"<n>\\n" + JSON {id, stdout: base64, stderr: base64, exit_code, timed_out, oom_killed, truncated,
          duration_s, error}
exit_code follows the shell convention: 128 + N when the program was killed by signal N.
EOF on stdin (the host went away) ends the server, and with it the container (started with auto-remove).
"""

import base64
import errno
import json
import os
import selectors
import signal
import subprocess
import sys
import time

BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "TMPDIR": "/tmp",
    "USER": "sandbox",
}
SCRATCH_DIRS = ("/tmp", "/dev/shm")  # wiped with the work dir on reset
DRAIN_GRACE_S = 0.1  # how long output is still read after the program exits (a background child may hold the pipe)
OOM_COUNTERS = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


def make_undumpable():
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except Exception:  # not fatal: the runtime (e.g. gVisor) may not offer it
        pass


def oom_kills():
    for path in OOM_COUNTERS:
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except OSError:
            continue
    return None


def other_pids():
    """Live processes of this namespace other than PID 1 and us (zombies excluded)."""
    me, pids = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (1, me):
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            pids.append(int(name))
    return pids


def reap_zombies():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_everything():
    """SIGKILL every process of the namespace but PID 1; repeat until none is left (a fork bomb races us)."""
    for _ in range(200):
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        reap_zombies()
        if not other_pids():
            return
        time.sleep(0.005)


def wipe(path):
    """Empty a directory the sandbox user owns, whatever modes and depth the program left; True if empty after.
    Iterative (no recursion limit) and chmod-ing every directory first (a chmod 0 dir cannot be listed)."""
    if path not in SCRATCH_DIRS:  # the work dir itself: the program may have chmod-ed it
        try:
            os.chmod(path, 0o700)
        except OSError:
            pass
    dirs, stack = [], [path]
    while stack:
        d = stack.pop()
        if d != path or path not in SCRATCH_DIRS:
            try:
                os.chmod(d, 0o700)
            except OSError:
                pass
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        dirs.append(d)
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    os.unlink(e.path)
            except OSError:
                pass
    for d in reversed(dirs[1:]):  # children before parents
        try:
            os.rmdir(d)
        except OSError:
            pass
    try:
        return not os.listdir(path)
    except OSError:
        return False


def write_files(workdir, files):
    root = os.path.realpath(workdir)
    for rel, data in files.items():
        path = os.path.realpath(os.path.join(root, rel))
        if not path.startswith(root + os.sep):
            raise ValueError("file path %r leaves the work dir" % rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))


def stdin_fd(data):
    if data is None:
        return subprocess.DEVNULL
    fd = os.memfd_create("stdin")
    os.write(fd, base64.b64decode(data))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def child_setup():
    try:  # the program, not PID 1, should be the OOM killer's first choice (raising needs no privilege)
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def run(req):
    workdir = req["workdir"]
    if req.get("reset"):
        kill_everything()
        dirty = [d for d in (workdir,) + SCRATCH_DIRS if not wipe(d)]
        if dirty:  # the host replaces this container rather than let state through
            return {"error": "reset failed: %s not empty" % ", ".join(dirty), "reset_failed": True}
    write_files(workdir, req.get("files") or {})
    env = dict(BASE_ENV, HOME=workdir)
    env.update(req.get("env") or {})
    limit, timeout = int(req["output_limit"]), float(req["timeout_s"])
    oom_before = oom_kills()
    fd_in = stdin_fd(req.get("stdin"))
    out = {1: bytearray(), 2: bytearray()}
    truncated = timed_out = False
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            req["argv"], stdin=fd_in, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir, env=env,
            start_new_session=True, close_fds=True, preexec_fn=child_setup,
        )
    except OSError as exc:  # argv[0] missing or not executable: the shell's 127/126
        code = 127 if exc.errno == errno.ENOENT else 126
        return dict(stdout="", stderr=base64.b64encode(str(exc).encode()).decode(), exit_code=code,
                    timed_out=False, oom_killed=False, truncated=False, duration_s=0.0, error=None)
    finally:
        if isinstance(fd_in, int) and fd_in >= 0:
            os.close(fd_in)
    streams = {proc.stdout.fileno(): 1, proc.stderr.fileno(): 2}
    sel = selectors.DefaultSelector()
    for fd in streams:
        sel.register(fd, selectors.EVENT_READ)
    # the host never writes during a run, so stdin turning readable means EOF: the owner is gone
    sel.register(0, selectors.EVENT_READ)
    deadline, exited_at = start + timeout, None
    while True:  # until the program exits and its pipes drain, or the timeout (closed pipes do not end it)
        now = time.monotonic()
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        if exited_at is not None and (not streams or now - exited_at > DRAIN_GRACE_S):
            break  # drained, or a background process still holds the pipe (it is killed below)
        if exited_at is None and now >= deadline:
            timed_out = True
            break
        wait = min(deadline - now, 0.05) if exited_at is None else DRAIN_GRACE_S
        for key, _ in sel.select(max(wait, 0.0)):
            if key.fd == 0:
                kill_everything()
                os._exit(0)  # the container ends (and is auto-removed) with its owner
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fd)
                del streams[key.fd]
                continue
            buf = out[streams[key.fd]]
            room = limit - len(buf)
            if len(chunk) > room:
                truncated = True
            if room > 0:
                buf += chunk[:room]
    if timed_out:  # the program itself by pid: it may have left its process group; the rest die just below
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    code = proc.wait()
    duration = time.monotonic() - start
    kill_everything()  # nothing the program started outlives the run
    sel.close()
    proc.stdout.close()
    proc.stderr.close()
    oom_after = oom_kills()
    if oom_before is not None and oom_after is not None:
        oom = oom_after > oom_before
    else:  # no cgroup counter (some runtimes): a SIGKILL we did not send is the OOM killer's
        oom = code == -signal.SIGKILL and not timed_out
    return dict(
        stdout=base64.b64encode(bytes(out[1])).decode(), stderr=base64.b64encode(bytes(out[2])).decode(),
        exit_code=128 - code if code < 0 else code, timed_out=timed_out, oom_killed=oom,
        truncated=truncated, duration_s=round(duration, 6), error=None,
    )


def main():
    make_undumpable()
    # default dispositions everywhere: PID 1 then ignores every signal sent from inside the container
    # (Python installs a SIGINT handler of its own, which would let the program stop us with kill -INT 1)
    for sig in (signal.SIGINT, signal.SIGPIPE, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = stdin.readline()
        if not header:
            return  # the host closed the attach stream
        payload = stdin.read(int(header))
        rid = None
        try:
            req = json.loads(payload)
            rid = req.get("id")
            reply = run(req)
        except Exception as exc:  # a bad request is reported, the server lives on
            reply = {"error": "%s: %s" % (type(exc).__name__, exc)}
        reply["id"] = rid  # the host drops replies whose id is not the one it sent (see docker_sandbox.py)
        data = json.dumps(reply).encode()
        stdout.write(b"%d\n" % len(data) + data)
        stdout.flush()
        reap_zombies()


if __name__ == "__main__":
    main()
