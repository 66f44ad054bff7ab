"""`espl sandbox doctor`: check everything sandboxes need, and say the fix for each problem."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from espl.sandboxes.core import SandboxConfig, SandboxError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


# Runs inside the sandbox: what the hardening should look like from within
PROBE = r"""
import ctypes, json, os, socket
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
def writable(path):
    try:
        with open(os.path.join(path, ".espl-probe"), "w") as f:
            f.write("x")
        os.unlink(os.path.join(path, ".espl-probe"))
        return True
    except OSError:
        return False
try:
    socket.create_connection(("192.0.2.1", 80), timeout=1).close()   # TEST-NET-1: never routed
    net = True
except OSError:
    net = False
print(json.dumps({
    "uid": os.getuid(), "cap_eff": status["CapEff"].strip(),
    # prctl(PR_GET_NO_NEW_PRIVS), not /proc/self/status: gVisor's /proc has no NoNewPrivs line
    "no_new_privs": str(ctypes.CDLL(None).prctl(39, 0, 0, 0, 0)),
    "root_writable": writable("/"), "work_writable": writable(os.getcwd()), "tmp_writable": writable("/tmp"),
    "interfaces": sorted(os.listdir("/sys/class/net")), "network": net,
}))
"""


def run_checks(config: SandboxConfig | None = None) -> list[Check]:
    config = config or SandboxConfig()
    checks: list[Check] = []
    steps: list[Callable[[SandboxConfig, list[Check]], bool]] = [
        _sdk, _daemon, _limits, _runtime, _image, _hardened_run, _orphans,
    ]
    for step in steps:
        if not step(config, checks):
            break  # later checks need this one
    return checks


def _sdk(config: SandboxConfig, out: list[Check]) -> bool:
    try:
        import docker
    except ImportError:
        out.append(Check("docker SDK", False, "the `docker` Python package is missing", "pip install 'docker>=7'"))
        return False
    out.append(Check("docker SDK", True, f"docker {docker.__version__}"))
    return True


def _daemon(config: SandboxConfig, out: list[Check]) -> bool:
    from espl.sandboxes.docker_sandbox import DAEMON_FIX, connect

    try:
        v = connect(config.docker_host).version()
    except SandboxError as exc:
        out.append(Check("daemon", False, str(exc).split(":")[0], DAEMON_FIX))
        return False
    out.append(Check("daemon", True, f"Docker {v.get('Version')} (API {v.get('ApiVersion')})"))
    return True


def _limits(config: SandboxConfig, out: list[Check]) -> bool:
    from espl.sandboxes.docker_sandbox import connect

    info = connect(config.docker_host).info()
    missing = [name for key, name in (("MemoryLimit", "memory"), ("SwapLimit", "swap"), ("PidsLimit", "pids"),
                                      ("CpuCfsQuota", "cpu quota")) if info.get(key) is False]
    detail = f"cgroup v{info.get('CgroupVersion', '?')} ({info.get('CgroupDriver', '?')})"
    if missing:
        out.append(Check("limits support", False, f"{detail}; the kernel lacks: {', '.join(missing)}",
                         "enable the cgroup controllers (boot with cgroup_enable=memory swapaccount=1, or use "
                         "cgroup v2 with the memory and pids controllers)"))
    else:
        out.append(Check("limits support", True, f"{detail}: memory, swap, pids and cpu limits"))
    return True


def _runtime(config: SandboxConfig, out: list[Check]) -> bool:
    from espl.sandboxes.docker_sandbox import connect

    info = connect(config.docker_host).info()
    runtimes = sorted(info.get("Runtimes") or {})
    wanted = config.runtime or info.get("DefaultRuntime", "runc")
    if wanted not in runtimes:
        out.append(Check("runtime", False, f"{wanted!r} is not among the daemon's runtimes {runtimes}",
                         "install it and register it in /etc/docker/daemon.json under \"runtimes\" (gVisor: "
                         "`sudo runsc install`), then restart dockerd; see docs/sandbox.md"))
        return False
    note = "" if config.runtime == "runsc" else " (runc shares the host kernel; runsc/gVisor isolates it)"
    out.append(Check("runtime", True, f"{wanted}{note}; available: {', '.join(runtimes)}"))
    return True


def _image(config: SandboxConfig, out: list[Check]) -> bool:
    from espl.sandboxes.docker_sandbox import check_image, connect

    client = connect(config.docker_host)
    try:
        check_image(client, config.image)
    except SandboxError:
        out.append(Check("image", False, f"{config.image} not found",
                         f"`sudo espl sandbox build --tag {config.image}` (offline, ~40 s), or add --pull"))
        return False
    img = client.images.get(config.image)
    out.append(Check("image", True, f"{config.image} {img.short_id} ({img.attrs.get('Size', 0) / 1e6:.0f} MB)"))
    return True


def _hardened_run(config: SandboxConfig, out: list[Check]) -> bool:
    from espl.sandboxes.docker_sandbox import DockerSandbox

    try:
        with DockerSandbox(config) as sb:
            result = sb.run(PROBE, timeout_s=20)
    except SandboxError as exc:
        out.append(Check("hardened run", False, str(exc), "see the message; `docker info` shows daemon problems"))
        return False
    if not result.ok:
        out.append(Check("hardened run", False, f"probe failed (exit {result.exit_code}): {result.stderr[-400:]}",
                         "rebuild the image with `espl sandbox build`"))
        return False
    p = json.loads(result.stdout)
    problems = [
        msg for bad, msg in (
            (p["uid"] == 0, "runs as root"), (int(p["cap_eff"], 16) != 0, f"capabilities {p['cap_eff']}"),
            (p["no_new_privs"] != "1", "no-new-privileges is off"), (p["root_writable"], "/ is writable"),
            (not p["work_writable"], "the work dir is not writable (tmpfs uid/gid?)"),
            (not p["tmp_writable"], "/tmp is not writable"),
            (config.network == "none" and (p["network"] or p["interfaces"] != ["lo"]), "network reachable"),
        ) if bad
    ]
    if problems:
        out.append(Check("hardened run", False, "; ".join(problems), "report this: the hardening did not apply"))
        return False
    out.append(Check("hardened run", True, f"uid {p['uid']}, no capabilities, no-new-privileges, read-only /, "
                                           f"writable work dir and /tmp, interfaces {p['interfaces']}, no network"))
    return True


def _orphans(config: SandboxConfig, out: list[Check]) -> bool:
    from espl.sandboxes.reaper import list_sandbox_containers

    containers = list_sandbox_containers(config.docker_host)
    orphans = [c for c in containers if not c.owner_alive]
    if orphans:
        out.append(Check("orphans", False, f"{len(orphans)} sandbox container(s) of dead processes",
                         "`espl sandbox reap`"))
    else:
        out.append(Check("orphans", True, f"none ({len(containers)} sandbox container(s) of live processes)"))
    return True
