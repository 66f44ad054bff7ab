"""Sandbox speed: warm pool run vs a fresh `docker run --rm` per call, and 8-way throughput, in one run.

    python benchmarks/sandbox.py [--rounds 30] [--calls 200]

Warm: `SandboxPool.run("print(1)")` on started containers (lease, reset, run, return). Cold: a fresh
container per call, started and removed like `docker run --rm` (same image, same hardening flags, through
the docker SDK). The two are interleaved round by round (1 cold, 3 warm) so load from other processes
hits both alike. Also shown: `DockerSandbox.run` (our cold path: create, attach, start, run, remove) and
`docker exec` into a warm container (the design the pool does not use: its per-call daemon/runc cost).
Throughput: 8 threads calling `pool.run` on a pool of 8 until `--calls` calls are done; an error is an
exception or a result that is not exit 0 with the right output.
All rows use the same runtime (ESPL_SANDBOX_RUNTIME=runsc measures gVisor).
Last line: `sandbox warm/cold p50 ratio: R (warm P50W ms, cold P50C ms, 8-way N calls/s, errors E)`.
Goals (issue 4): R <= 0.25, warm p50 <= 60 ms, zero errors.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from espl.sandboxes.core import SandboxConfig
from espl.sandboxes.docker_sandbox import DockerSandbox, connect, owner_labels
from espl.sandboxes.pool import SandboxPool


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def docker_run_rm(client, config: SandboxConfig) -> None:
    """The baseline: `docker run --rm --network none --read-only ... IMAGE python3 -c 'print(1)'`."""
    uid, _, gid = config.user.partition(":")
    out = client.containers.run(
        config.image, ["python3", "-c", "print(1)"], remove=True, network_mode="none", read_only=True,
        user=config.user, cap_drop=["ALL"], security_opt=["no-new-privileges:true"], pids_limit=config.pids_limit,
        mem_limit=f"{config.memory_mb}m", nano_cpus=int(config.cpus * 1e9), labels=owner_labels(config),
        tmpfs={config.workdir: f"rw,size={config.workdir_size_mb}m,uid={uid},gid={gid}"}, working_dir=config.workdir,
        runtime=config.runtime,
    )
    assert out == b"1\n", out


def exec_container(client, config: SandboxConfig):
    """For comparison only: a long-lived container driven by `docker exec` per call (what the pool avoids)."""
    return client.containers.run(
        config.image, ["python3", "-c", "import time; time.sleep(10**6)"], detach=True, network_mode="none",
        read_only=True, user=config.user, cap_drop=["ALL"], labels=owner_labels(config), auto_remove=True,
        runtime=config.runtime,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30, help="interleaved rounds of 1 cold + 3 warm calls")
    ap.add_argument("--calls", type=int, default=200, help="calls in the 8-way throughput test")
    args = ap.parse_args()
    config = SandboxConfig()
    client = connect()
    warm, cold, ours, inside, execs = [], [], [], [], []
    with SandboxPool(size=8, config=config) as pool, DockerSandbox(config) as sandbox:
        pool.warm()
        exec_box = exec_container(client, config)
        for _ in range(3):  # first calls pay imports and connection set-up
            pool.run("print(1)")
        docker_run_rm(client, config)
        for i in range(args.rounds):
            t0 = time.perf_counter()
            docker_run_rm(client, config)
            cold.append(time.perf_counter() - t0)
            for _ in range(3):
                t0 = time.perf_counter()
                r = pool.run("print(1)")
                warm.append(time.perf_counter() - t0)
                inside.append(r.duration_s)  # the program's own wall time (Python start-up, mostly)
                assert r.stdout == "1\n", r
            if i % 3 == 0:
                t0 = time.perf_counter()
                sandbox.run("print(1)")
                ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert exec_box.exec_run(["python3", "-c", "print(1)"]).output == b"1\n"
            execs.append(time.perf_counter() - t0)
        exec_box.remove(force=True)

        errors, done = 0, 0
        lock = threading.Lock()

        def caller(k: int) -> None:
            nonlocal errors, done
            while True:
                with lock:
                    if done >= args.calls:
                        return
                    done += 1
                    n = done
                try:
                    r = pool.run(f"print({n} * 2)")
                    bad = not (r.exit_code == 0 and r.stdout == f"{n * 2}\n")
                except Exception as exc:  # counted, and shown
                    print(f"error in call {n}: {exc}")
                    bad = True
                if bad:
                    with lock:
                        errors += 1

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        throughput = args.calls / (time.perf_counter() - t0)

    ms = 1000.0
    print(f"warm pool run      p50 {statistics.median(warm) * ms:7.1f} ms  p95 {pct(warm, 0.95) * ms:7.1f} ms  (n={len(warm)})")
    print(f"  of which the program itself (python3 start-up) p50 {statistics.median(inside) * ms:.1f} ms: "
          f"sandbox overhead {(statistics.median(warm) - statistics.median(inside)) * ms:.1f} ms")
    print(f"docker exec        p50 {statistics.median(execs) * ms:7.1f} ms  p95 {pct(execs, 0.95) * ms:7.1f} ms  (n={len(execs)}, "
          "warm container, one exec per call: for comparison)")
    print(f"docker run --rm    p50 {statistics.median(cold) * ms:7.1f} ms  p95 {pct(cold, 0.95) * ms:7.1f} ms  (n={len(cold)})")
    print(f"DockerSandbox.run  p50 {statistics.median(ours) * ms:7.1f} ms  p95 {pct(ours, 0.95) * ms:7.1f} ms  (n={len(ours)}, "
          "fresh container per call)")
    print(f"8 callers, pool of 8: {throughput:.1f} calls/s over {args.calls} calls, {errors} errors")
    ratio = statistics.median(warm) / statistics.median(cold)
    print(f"sandbox warm/cold p50 ratio: {ratio:.3f} (warm {statistics.median(warm) * ms:.1f} ms, cold "
          f"{statistics.median(cold) * ms:.1f} ms, 8-way {throughput:.1f} calls/s, errors {errors})")


if __name__ == "__main__":
    main()
