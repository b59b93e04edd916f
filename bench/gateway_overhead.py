"""Gateway overhead: the seed's `square` endpoint through the Cove gateway vs a bare uvicorn.

    .venv/bin/python bench/gateway_overhead.py [--duration 10] [--python-load]

Deploys `square` (with `@cove.concurrent(max_inputs=100)`, so one container takes every
connection) on a private server, warms it, and loads GET `/?x=42` with 1 and then 64 keep-alive
connections for `--duration` seconds each, after a 2 s warm-up. The baseline, measured in the same
run, is the same FastAPI function (built as Modal's wrapper builds it: CORS open, docs off) on
`uvicorn --loop uvloop --http httptools --no-access-log`, one worker, on a loopback TCP port.
Both run side by side (the idle one costs nothing) and the measurements alternate, bare then
gateway, so drift in the machine's load hits both alike. The workspace rate limit is set to
COVE_RATE_LIMIT_RPS=10000000: checked on every request, never reached.

Load comes from `wrk -t1 --latency` (Debian package `wrk`); without it, or with `--python-load`,
from a bounded asyncio keep-alive client in this process (slower: its figures are only comparable
with each other). The load generator, the gateway and the worker share the machine's cores; nothing
is pinned. Targets (issue 5): gateway >= 0.75x bare req/s at 64 connections; <= 0.15 ms added p50
at 1 connection.
"""

from __future__ import annotations

import os
import sys
import time

from _harness import Cove, Load, Uvicorn, arguments, bare_square, cove_square, get, load, machine, table

PATH = "/?x=42"
CONNECTIONS = (1, 64)
WARMUP_S = 2.0
RATE_LIMIT_RPS = 10_000_000


def check(port: int, host: str, python: bool) -> None:
    status, body = get(port, PATH, host)
    if status != 200 or body != b'{"square":1764}':
        raise RuntimeError(f"GET {PATH} via {host} answered {status} {body!r}")
    load(port, PATH, host, 64, WARMUP_S, python)


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--python-load", action="store_true", help="use the Python client even if wrk exists")
    args = parser.parse_args()
    if not 0 < args.duration <= 300:
        parser.error("--duration must be in (0, 300]")

    results: dict[str, dict[int, Load]] = {"bare uvicorn": {}, "cove gateway": {}}
    bare = Uvicorn(bare_square())
    # The workspace rate limit (200 req/s by default) would answer most of this load with 429: raise
    # it out of reach, so that its check still runs on every request but never refuses one.
    cove = Cove(COVE_RATE_LIMIT_RPS=str(RATE_LIMIT_RPS))
    try:
        bare.start()
        host = cove.deploy("app", cove_square("app", decorators="@cove.concurrent(max_inputs=100)"))
        targets = {"bare uvicorn": (bare.port, "127.0.0.1"), "cove gateway": (cove.port, host)}
        for port, host_header in targets.values():
            check(port, host_header, args.python_load)
        # Interleaved, so that drift in the machine's load hits both setups alike.
        for connections in CONNECTIONS:
            for setup, (port, host_header) in targets.items():
                time.sleep(0.5)
                results[setup][connections] = load(
                    port, PATH, host_header, connections, args.duration, args.python_load
                )
        containers = cove.containers("app")
    finally:
        bare.close()
        cove.close()

    rows = [
        [setup, c, f"{r.requests_per_s:.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", r.errors]
        for setup, by_c in results.items()
        for c, r in by_c.items()
    ]
    print(table(["setup", "connections", "req/s", "p50 ms", "p99 ms", "errors"], rows))
    gw, bare_r = results["cove gateway"], results["bare uvicorn"]
    ratio = gw[64].requests_per_s / bare_r[64].requests_per_s
    added = gw[1].p50_ms - bare_r[1].p50_ms
    print(f"\nthroughput gateway/bare at 64 connections: {ratio:.2f}x (target >= 0.75)")
    print(f"added p50 at 1 connection: {added:.3f} ms (target <= 0.15 ms)")
    print(
        f"\nsource: GET {PATH}, {args.duration:g} s per row after a {WARMUP_S:g} s warm-up, "
        f"load by {gw[1].tool}; cove containers at the end: {containers}; "
        f"nproc={len(os.sched_getaffinity(0))} (load generator, gateway and worker share them)"
    )
    print(f"machine: {machine()}")
    errors = sum(r.errors for by_c in results.values() for r in by_c.values())
    if errors:
        print(f"error: {errors} non-2xx responses or socket errors", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
