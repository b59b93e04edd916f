"""Burst: 200 concurrent requests to a function scaled to zero, with `max_containers=8`.

    .venv/bin/python bench/burst.py [--requests 200]

Deploys `square` with `max_containers=8`, `scaledown_window=5` and a `time.sleep(0.1)` in the
function (no `@concurrent`: one input per container) on a private server, then opens `--requests`
connections at once, each sending one GET `/?x=42`, and times until every response has arrived.
It counts non-2xx answers and failed connections (the target is zero) and the containers started
(new `event=ready` lines in the server log; `cove app list --json` right after, for comparison).

Baselines, in the same run:
  - warm: the same burst again right away, while the 8 containers are still warm (isolates what
    scaling from zero costs);
  - ideal: ceil(requests / 8) x 0.1 s, the floor for 8 single-input containers.
Exits 1 if any request was not answered with a 2xx.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import sys
import time

from _harness import Cove, arguments, cove_square, machine, pct, read_response, table

PATH = "/?x=42"
MAX_CONTAINERS = 8
SLEEP_S = 0.1


async def burst(port: int, host: str, count: int) -> tuple[float, list[float], int]:
    """Send `count` requests at once; return (seconds to all served, latencies, failures)."""
    request = f"GET {PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()

    async def one() -> float | None:
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return None
        try:
            writer.write(request)
            status = await read_response(reader)
            return time.perf_counter() - started if 200 <= status < 300 else None
        except (OSError, asyncio.IncompleteReadError):
            return None
        finally:
            writer.close()

    started = time.perf_counter()
    results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), timeout=120)
    elapsed = time.perf_counter() - started
    latencies = [r for r in results if r is not None]
    return elapsed, latencies, count - len(latencies)


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--requests", type=int, default=200, help="requests per burst (default 200)")
    args = parser.parse_args()
    if not 1 <= args.requests <= 1000:
        parser.error("--requests must be in [1, 1000]")

    cove = Cove()
    try:
        options = f"max_containers={MAX_CONTAINERS}, scaledown_window=5"
        host = cove.deploy("app", cove_square("app", options=options, body=f"time.sleep({SLEEP_S})"))
        cove.wait_containers(0, "app", timeout=30)
        cold = asyncio.run(burst(cove.port, host, args.requests))
        listed = cove.containers("app")
        started = len(cove.startup_s())
        startup_s = cove.startup_s()
        warm = asyncio.run(burst(cove.port, host, args.requests))
        started_warm = len(cove.startup_s()) - started
    finally:
        cove.close()

    ideal = math.ceil(args.requests / MAX_CONTAINERS) * SLEEP_S

    def row(name: str, result: tuple[float, list[float], int], containers: object) -> list[object]:
        elapsed, latencies, failed = result
        ms = [v * 1000 for v in latencies] or [0.0]
        return [
            name,
            f"{elapsed:.2f}",
            f"{statistics.median(ms):.0f}",
            f"{pct(ms, 99):.0f}",
            failed,
            containers,
        ]

    print(
        table(
            ["burst", "all served s", "p50 ms", "p99 ms", "non-2xx/failed", "containers started"],
            [
                row("cold: scaled to zero", cold, f"{started} (app list: {listed})"),
                row("baseline: warm, right after", warm, started_warm),
                ["baseline: ideal ceil(n/8) x 0.1 s", f"{ideal:.2f}", "", "", "", ""],
            ],
        )
    )
    print(f"\ncold burst / warm burst: {cold[0] / warm[0]:.2f}x; cold burst / ideal: {cold[0] / ideal:.2f}x")
    if startup_s:
        low, median, high = min(startup_s), statistics.median(startup_s), max(startup_s)
        print(f"container startup_s (log): min {low:.3f}, median {median:.3f}, max {high:.3f}")
    print(
        f"\nsource: {args.requests} concurrent GET {PATH} (one connection each) timed in this process; "
        "containers from the server log's `event=ready` lines"
    )
    print(f"machine: {machine()}")
    failed = cold[2] + warm[2]
    if failed:
        print(f"error: {failed} requests failed or answered non-2xx (target: 0)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
