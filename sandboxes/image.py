"""Building the sandbox image: offline (debootstrap -> docker import) or by pulling `python:3.x-slim`.

Offline (the default; needs root, debootstrap and a Debian mirror, which may be a local or proxied one):
    debootstrap --variant=minbase --include=python3 bookworm ROOTFS MIRROR
    tar -C ROOTFS -c . | docker import -          (done through the docker SDK, streamed)
`python3`, not `python3-minimal`: the minimal package lacks json, ctypes and unittest, which model-written
code imports. The rootfs is trimmed (apt caches, docs, man pages, locales: ~130 MB of ~260 MB) and gets a
`sandbox` user (uid/gid 10001, home /work) before import; the result is checked by running Python in it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

from espl.sandboxes.core import DEFAULT_IMAGE, SandboxConfig, SandboxError, SandboxUnavailable
from espl.sandboxes.docker_sandbox import connect

DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_PULL_PYTHON = "3.11"  # bookworm's python3, so both build paths give the same Python
SANDBOX_UID = 10001
TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info",
        "usr/share/locale")
# Python modules model-written code needs; the build fails if the image lacks one
REQUIRED_MODULES = ("json", "ctypes", "unittest", "collections", "itertools", "math", "re", "sqlite3", "decimal")


def apt_mirror(sources_dir: str = "/etc/apt") -> str:
    """The Debian mirror this machine's apt uses (deb822 `URIs:` or a `deb URL suite` line), else deb.debian.org."""
    deb822 = Path(sources_dir, "sources.list.d", "debian.sources")
    if deb822.is_file():
        for stanza in deb822.read_text().split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and not any(s.endswith("-security") for s in suites.group(1).split()):
                return uris.group(1)
    classic = Path(sources_dir, "sources.list")
    if classic.is_file():
        m = re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+", classic.read_text(), re.M)
        if m and "security" not in m.group(1):
            return m.group(1)
    return DEFAULT_MIRROR


def build_image(
    tag: str = DEFAULT_IMAGE,
    *,
    pull: bool = False,
    python_version: str = DEFAULT_PULL_PYTHON,
    suite: str = DEFAULT_SUITE,
    mirror: str | None = None,
    docker_host: str | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Build (or pull) the sandbox image under `tag`, check it runs Python with the needed modules; returns its id."""
    client = connect(docker_host)
    if pull:
        image_id = _pull(client, tag, python_version, log)
    else:
        image_id = _debootstrap_import(client, tag, suite, mirror or apt_mirror(), log)
    verify_image(tag, docker_host, log)
    return image_id


def _pull(client, tag: str, python_version: str, log: Callable[[str], None]) -> str:
    import docker

    source = f"python:{python_version}-slim"
    log(f"pulling {source} ...")
    try:
        image = client.images.pull("python", tag=f"{python_version}-slim")
    except docker.errors.DockerException as exc:
        raise SandboxError(
            f"could not pull {source} ({exc}); no registry reachable? Build offline instead: `espl sandbox build` "
            "(without --pull)"
        ) from None
    repo, _, version = tag.rpartition(":") if ":" in tag.split("/")[-1] else (tag, "", "latest")
    image.tag(repo, version)
    log(f"tagged {source} as {tag}")
    return image.id


def _debootstrap_import(client, tag: str, suite: str, mirror: str, log: Callable[[str], None]) -> str:
    if os.geteuid() != 0:
        raise SandboxError("the offline build runs debootstrap, which needs root: run `sudo espl sandbox build`, "
                           "or `espl sandbox build --pull` where a registry is reachable")
    if shutil.which("debootstrap") is None:
        raise SandboxError("debootstrap is not installed: `sudo apt-get install debootstrap` (or use --pull)")
    if shutil.which("tar") is None:
        raise SandboxError("tar is not installed: `sudo apt-get install tar`")
    rootfs = Path(tempfile.mkdtemp(prefix="espl-rootfs-", dir=os.environ.get("ESPL_BUILD_DIR") or "/var/tmp"))
    try:
        log(f"debootstrap {suite} from {mirror} into {rootfs} (~40 s) ...")
        t0 = time.monotonic()
        cmd = ["debootstrap", "--variant=minbase", "--include=python3", suite, str(rootfs), mirror]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-15:])
            raise SandboxError(f"debootstrap failed (exit {proc.returncode}); is {mirror} reachable? Pass another "
                               f"with --mirror. Last lines:\n{tail}")
        log(f"debootstrap done in {time.monotonic() - t0:.0f} s; trimming and adding the sandbox user")
        _prepare_rootfs(rootfs)
        log(f"importing into Docker as {tag} ...")
        tar = subprocess.Popen(["tar", "--numeric-owner", "--one-file-system", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None  # stdout=PIPE
        repo, _, version = tag.rpartition(":") if ":" in tag.split("/")[-1] else (tag, "", "latest")
        try:
            out = client.api.import_image_from_stream(
                tar.stdout, repository=repo, tag=version,
                changes=["ENV PATH=/usr/local/bin:/usr/bin:/bin", "ENV LANG=C.UTF-8", "WORKDIR /work",
                         f"USER {SANDBOX_UID}:{SANDBOX_UID}", 'CMD ["python3"]',
                         "LABEL espl.sandbox.image=1"],
            )
        finally:
            tar.stdout.close()
            if tar.wait() != 0:
                raise SandboxError(f"tar of {rootfs} failed (exit {tar.returncode})")
        match = re.search(r"sha256:[0-9a-f]{64}", str(out))
        return match.group(0) if match else client.images.get(tag).id
    finally:
        _remove_rootfs(rootfs)


def _remove_rootfs(rootfs: Path) -> None:
    """Unmount what debootstrap may have left mounted (/proc, /sys, /dev binds after a failure), then delete;
    never delete through a mount point, which could reach the host's /dev or /proc."""
    root = str(rootfs.resolve())
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f]
    except OSError:
        mounts = []
    for mnt in sorted((m for m in mounts if m == root or m.startswith(root + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)
    with open("/proc/mounts") as f:
        if any(line.split()[1].startswith(root + "/") for line in f):
            raise SandboxError(f"{root} still has mounts under it; unmount them and delete it by hand")
    shutil.rmtree(rootfs, ignore_errors=True)


def _prepare_rootfs(rootfs: Path) -> None:
    for rel in TRIM:
        d = rootfs / rel
        if d.is_dir():
            for child in d.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
    with open(rootfs / "etc/passwd", "a") as f:
        f.write(f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:espl sandbox:/work:/usr/sbin/nologin\n")
    with open(rootfs / "etc/group", "a") as f:
        f.write(f"sandbox:x:{SANDBOX_UID}:\n")
    (rootfs / "work").mkdir(mode=0o755, exist_ok=True)


def verify_image(tag: str, docker_host: str | None = None, log: Callable[[str], None] = print) -> str:
    """Run the image once in the hardened sandbox; returns its Python version or raises SandboxError."""
    from espl.sandboxes.docker_sandbox import DockerSandbox

    code = f"import sys, importlib\nfor m in {REQUIRED_MODULES!r}: importlib.import_module(m)\nprint(sys.version.split()[0])"
    try:
        with DockerSandbox(SandboxConfig(image=tag, docker_host=docker_host)) as sb:
            result = sb.run(code, timeout_s=30)
    except SandboxUnavailable as exc:
        raise SandboxError(f"the new image does not run: {exc}") from None
    if not result.ok:
        raise SandboxError(f"the image {tag} lacks a needed Python module or does not run Python "
                           f"(exit {result.exit_code}): {result.stderr[-800:]}")
    version = result.stdout.strip()
    log(f"image {tag} works: Python {version} with {', '.join(REQUIRED_MODULES)}")
    return version
