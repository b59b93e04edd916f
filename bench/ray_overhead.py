"""Ray backend overhead: the seed's `square` endpoint on the Ray backend vs the local backend.

    .venv/bin/python bench/ray_overhead.py [--duration 10] [--runs 10] [--python-load]

Starts a single-node Ray cluster on loopback (`ray start --head --node-ip-address=127.0.0.2`, its
own temp dir, stopped at the end) and two private Cove servers, one per backend. Throughput and
latency: `square` with `@cove.concurrent(max_inputs=100)` (one container takes every connection),
loaded with GET `/?x=42` at 1 and 64 keep-alive connections for `--duration` s each after a 2 s
warm-up, local then Ray, interleaved. Cold start: `square` with `scaledown_window=2`, `--runs` times
per backend: wait until it has no container, then time one GET on a fresh connection until its body
has arrived; the container's own `startup_s` (launch to ready, from the server log) is shown too.

On Ray, a container scaled from zero is a fork of the version's warm spare (a zygote actor, see
docs/ray.md) once that spare is ready, which it is long before the first cold start here.

The Ray path adds a hop: gateway -> TCP -> the actor's relay -> unix socket -> worker, where the
local backend goes gateway -> unix socket -> worker. Ray's own processes share the machine's cores
with the load generator, the gateways and the workers; nothing is pinned.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import Cove, Load, arguments, cove_square, get, load, machine, pct, table

PATH = "/?x=42"
CONNECTIONS = (1, 64)
WARMUP_S = 2.0
RATE_LIMIT_RPS = 10_000_000
HEAD_IP = "127.0.0.2"  # Ray rewrites 127.0.0.1 to the machine's outward address; this it leaves alone
BACKENDS = ("local", "ray")


class RayHead:
    """A single-node Ray cluster on loopback, stopped (with every process it started) on `close()`."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind((HEAD_IP, 0))
            port = sock.getsockname()[1]
        self.address = f"{HEAD_IP}:{port}"
        self.temp_dir = tempfile.mkdtemp(prefix="cove-bench-ray-")
        ray = str(Path(sys.executable).with_name("ray"))
        argv = [ray, "start", "--head", f"--node-ip-address={HEAD_IP}", f"--port={port}", "--num-cpus=2"]
        argv += ["--object-store-memory=100000000", "--disable-usage-stats", "--include-dashboard=false"]
        argv += [f"--temp-dir={self.temp_dir}"]
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        subprocess.run(argv, env=env, check=True, capture_output=True, timeout=120)

    def close(self) -> None:
        """SIGTERM, then SIGKILL, the processes naming our temp dir and all their descendants."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _tree(self.temp_dir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while _tree(self.temp_dir) and time.monotonic() < deadline:
                time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _tree(marker: str) -> list[int]:
    parents: dict[int, int] = {}
    roots = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                parents[int(entry)] = int(file.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                if marker.encode() in file.read():
                    roots.add(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    found = set(roots)
    changed = True
    while changed:
        extra = {pid for pid, parent in parents.items() if parent in found} - found
        found |= extra
        changed = bool(extra)
    found.discard(os.getpid())
    return sorted(found)


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--runs", type=int, default=10, help="cold starts per backend (default 10)")
    parser.add_argument("--python-load", action="store_true", help="use the Python client even if wrk exists")
    args = parser.parse_args()
    if not 0 < args.duration <= 300 or not 1 <= args.runs <= 100:
        parser.error("--duration must be in (0, 300] and --runs in [1, 100]")

    loads: dict[str, dict[int, Load]] = {b: {} for b in BACKENDS}
    cold: dict[str, list[float]] = {b: [] for b in BACKENDS}
    startup: dict[str, list[float]] = {b: [] for b in BACKENDS}
    head = RayHead()
    coves: dict[str, Cove] = {}
    try:
        for backend in BACKENDS:
            coves[backend] = Cove(
                COVE_BACKEND=backend,
                COVE_RAY_ADDRESS=head.address,
                COVE_RATE_LIMIT_RPS=str(RATE_LIMIT_RPS),
                RAY_USAGE_STATS_ENABLED="0",
            )
        hot = {
            b: c.deploy("hot", cove_square("hot", decorators="@cove.concurrent(max_inputs=100)"))
            for b, c in coves.items()
        }
        for backend, cove in coves.items():
            status, body = get(cove.port, PATH, hot[backend])
            if status != 200 or body != b'{"square":1764}':
                raise RuntimeError(f"{backend}: GET {PATH} answered {status} {body!r}")
            load(cove.port, PATH, hot[backend], 64, WARMUP_S, args.python_load)
        for connections in CONNECTIONS:
            for backend, cove in coves.items():
                time.sleep(0.5)
                loads[backend][connections] = load(
                    cove.port, PATH, hot[backend], connections, args.duration, args.python_load
                )
        for backend, cove in coves.items():
            cove.cli("app", "stop", "hot", "--yes")
            host = cove.deploy("cold", cove_square("cold", options="scaledown_window=2"))
            for _ in range(args.runs):
                cove.wait_containers(0, "cold", timeout=60)
                time.sleep(0.5)
                before = len(cove.startup_s())
                started = time.perf_counter()
                status, body = get(cove.port, PATH, host)
                cold[backend].append(time.perf_counter() - started)
                if status != 200 or body != b'{"square":1764}':
                    raise RuntimeError(f"{backend}: cold request answered {status} {body!r}")
                startup[backend].extend(cove.startup_s()[before:])
    finally:
        for cove in coves.values():
            cove.close()
        head.close()

    rows = [
        [backend, c, f"{r.requests_per_s:.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", r.errors]
        for backend, by_c in loads.items()
        for c, r in by_c.items()
    ]
    print(table(["backend", "connections", "req/s", "p50 ms", "p99 ms", "errors"], rows))

    def row(name: str, values: list[float]) -> list[object]:
        ms = [v * 1000 for v in values]
        return [name, len(ms), f"{statistics.median(ms):.0f}", f"{pct(ms, 90):.0f}", f"{max(ms):.0f}"]

    print()
    cold_rows = [row(f"{b}: scaled to zero -> first response", cold[b]) for b in BACKENDS]
    cold_rows += [row(f"{b}: container startup_s (log)", startup[b]) for b in BACKENDS]
    print(table(["measure", "runs", "median ms", "p90 ms", "max ms"], cold_rows))
    local, ray = loads["local"], loads["ray"]
    print(
        f"\nthroughput ray/local at 64 connections: {ray[64].requests_per_s / local[64].requests_per_s:.2f}x"
    )
    print(f"added p50 at 1 connection: {ray[1].p50_ms - local[1].p50_ms:.3f} ms")
    cold_ratio = statistics.median(cold["ray"]) / statistics.median(cold["local"])
    print(f"cold start ray/local (medians): {cold_ratio:.1f}x")
    print(f"\nsource: GET {PATH}, {args.duration:g} s per row, load by {local[1].tool}; ", end="")
    print(f"{args.runs} cold starts per backend")
    print(f"machine: {machine()}")
    errors = sum(r.errors for by_c in loads.values() for r in by_c.values())
    if errors:
        print(f"error: {errors} non-2xx responses or socket errors", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
