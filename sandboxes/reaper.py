"""`reap()`: remove sandbox containers whose owner process is gone (`espl sandbox reap`, and at pool start).

A container belongs to the process named by its `espl.sandbox.owner_pid` / `owner_host` / `owner_start`
labels. On this host, an owner whose pid is gone, or whose pid now belongs to a process started at another
time (pid reuse), is dead; its containers are orphans. Containers of other hosts (a shared daemon) are left
alone unless `all_owners=True`.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from espl.sandboxes.core import LABEL, OWNER_HOST_LABEL, OWNER_PID_LABEL, OWNER_START_LABEL
from espl.sandboxes.docker_sandbox import connect, process_start_time


@dataclass(frozen=True)
class SandboxContainer:
    id: str
    status: str
    owner_pid: int | None
    owner_host: str
    owner_alive: bool


def owner_alive(pid: int | None, host: str, start: str) -> bool:
    if host != socket.gethostname():
        return True  # not ours to judge
    if pid is None:
        return False
    now = process_start_time(pid)
    return now is not None and (not start or now == start)


def list_sandbox_containers(docker_host: str | None = None) -> list[SandboxContainer]:
    """Every container carrying the espl sandbox label, running or not, with whether its owner lives."""
    client = connect(docker_host)
    out = []
    for c in client.api.containers(all=True, filters={"label": f"{LABEL}=1"}):
        labels = c.get("Labels") or {}
        try:
            pid: int | None = int(labels.get(OWNER_PID_LABEL, ""))
        except ValueError:
            pid = None
        host = labels.get(OWNER_HOST_LABEL, "")
        out.append(SandboxContainer(c["Id"], c.get("State", ""), pid, host,
                                    owner_alive(pid, host, labels.get(OWNER_START_LABEL, ""))))
    return out


def reap(docker_host: str | None = None, *, all_owners: bool = False) -> list[str]:
    """Remove orphaned sandbox containers (every sandbox container with `all_owners`); returns their ids."""
    import docker

    client = connect(docker_host)
    removed = []
    for c in list_sandbox_containers(docker_host):
        if all_owners or not c.owner_alive:
            try:
                client.api.remove_container(c.id, force=True)
                removed.append(c.id)
            except docker.errors.NotFound:
                removed.append(c.id)  # auto-removed meanwhile
            except docker.errors.APIError as exc:
                if "in progress" not in str(exc):
                    raise
                removed.append(c.id)
    # a container that was already ending by itself (auto-remove in progress) may still be listed for a
    # moment; wait, so that "reaped" means gone
    deadline = time.monotonic() + 15
    pending = set(removed)
    while pending and time.monotonic() < deadline:
        pending = {cid for cid in pending if client.api.containers(all=True, filters={"id": cid})}
        if pending:
            time.sleep(0.1)
    return removed
