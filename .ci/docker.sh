#!/usr/bin/env bash
# Docker for the sandbox tests, idempotent (run as root or with sudo; `.ci/run` calls it after pip install):
#   1. apt-install docker.io and debootstrap when missing;
#   2. start dockerd in the background (no bridge, no iptables: sandboxes use network "none") unless a daemon
#      already answers, and wait for it (DOCKERD_WAIT_S, default 60 s) or fail showing its log;
#   3. with ESPL_SANDBOX_RUNTIME=runsc, install gVisor and register it with the daemon (opt-in);
#   4. build the sandbox image offline with `espl sandbox build` unless it exists (ESPL_SANDBOX_IMAGE).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${ESPL_SANDBOX_IMAGE:-espl-sandbox:latest}
WAIT_S=${DOCKERD_WAIT_S:-60}
LOG=${DOCKERD_LOG:-/tmp/dockerd.log}
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "docker.sh: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! $SUDO docker info >/dev/null 2>&1; then
  # a pid file left by a daemon that died keeps a new one from starting
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    $SUDO rm -f /var/run/docker.pid
  fi
  echo "docker.sh: starting dockerd (log: $LOG)"
  $SUDO sh -c "nohup dockerd --bridge=none --iptables=false >'$LOG' 2>&1 &"
  for _ in $(seq "$WAIT_S"); do
    $SUDO docker info >/dev/null 2>&1 && break
    sleep 1
  done
  if ! $SUDO docker info >/dev/null 2>&1; then
    echo "docker.sh: dockerd did not answer within ${WAIT_S} s (raise DOCKERD_WAIT_S?); last lines of $LOG:" >&2
    $SUDO tail -n 20 "$LOG" >&2 || true
    exit 1
  fi
fi
echo "docker.sh: daemon up ($($SUDO docker version --format '{{.Server.Version}}'))"

# Opt-in: ESPL_SANDBOX_RUNTIME=runsc runs every sandbox (and so the whole suite) under gVisor.
if [ "${ESPL_SANDBOX_RUNTIME:-}" = runsc ] && ! $SUDO docker info --format '{{json .Runtimes}}' | grep -q '"runsc"'; then
  command -v runsc >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq runsc >/dev/null
  # merge into daemon.json; --network=none: bookworm's runsc refuses Docker's `none` network without it
  $SUDO "$(command -v "${PYTHON:-python3}")" - "$(command -v runsc)" <<'PY'
import json, os, sys
path = "/etc/docker/daemon.json"
conf = json.load(open(path)) if os.path.exists(path) else {}
conf.setdefault("runtimes", {})["runsc"] = {"path": sys.argv[1], "runtimeArgs": ["--network=none"]}
os.makedirs("/etc/docker", exist_ok=True)
json.dump(conf, open(path, "w"), indent=2)
PY
  $SUDO kill -HUP "$(cat /var/run/docker.pid)"  # dockerd reloads its runtimes without a restart
  sleep 2
  $SUDO docker info --format '{{json .Runtimes}}' | grep -q '"runsc"' || { echo "docker.sh: runsc did not register" >&2; exit 1; }
  echo "docker.sh: gVisor (runsc) registered"
fi

if $SUDO docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "docker.sh: image $IMAGE present"
else
  echo "docker.sh: building $IMAGE offline (debootstrap, ~40 s on an idle machine)"
  $SUDO "$(command -v "${PYTHON:-python3}")" -m espl sandbox build --tag "$IMAGE"
fi
