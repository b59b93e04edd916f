"""Cold start: scale-from-zero to the first full response through the gateway.

    .venv/bin/python bench/cold_start.py [--runs 10]

Deploys the seed's `square` endpoint with `scaledown_window=2` on a private server, then `--runs`
times: waits until the function has no container (polling `cove app list --json`, at most 60 s,
then 0.5 s for the stopped worker to exit) and times one GET `/?x=42` on a fresh connection until
its body has arrived. The container's own `startup_s` comes from the server log
(`event=ready startup_s=...`: launch to ready, inside the pool).

The baseline, measured in the same run, is what a cold start costs without Cove's warm spare
worker: a fresh `uvicorn --loop uvloop --http httptools` process for the same FastAPI function,
timed from spawn until it answers its first request (polled every 5 ms), `--runs` times.
"""

from __future__ import annotations

import statistics
import sys
import time

from _harness import Cove, Uvicorn, arguments, bare_square, cove_square, get, machine, pct, table

PATH = "/?x=42"


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--runs", type=int, default=10, help="cold starts per setup (default 10)")
    args = parser.parse_args()
    if not 1 <= args.runs <= 100:
        parser.error("--runs must be in [1, 100]")

    cove_s: list[float] = []
    bare_s: list[float] = []
    startup_s: list[float] = []
    cove = Cove()
    try:
        host = cove.deploy("app", cove_square("app", options="scaledown_window=2"))
        for _ in range(args.runs):
            cove.wait_containers(0, "app", timeout=60)
            time.sleep(0.5)
            before = len(cove.startup_s())
            started = time.perf_counter()
            status, body = get(cove.port, PATH, host)
            cove_s.append(time.perf_counter() - started)
            if status != 200 or body != b'{"square":1764}':
                raise RuntimeError(f"cold request answered {status} {body!r}")
            startup_s.extend(cove.startup_s()[before:])
        for _ in range(args.runs):
            bare = Uvicorn(bare_square())
            try:
                bare_s.append(bare.start())
            finally:
                bare.close()
    finally:
        cove.close()

    def row(name: str, values: list[float]) -> list[object]:
        ms = [v * 1000 for v in values]
        return [name, len(ms), f"{statistics.median(ms):.0f}", f"{pct(ms, 90):.0f}", f"{max(ms):.0f}"]

    print(
        table(
            ["measure", "runs", "median ms", "p90 ms", "max ms"],
            [
                row("cove: scaled to zero -> first response", cove_s),
                row("  of which container startup_s (log)", startup_s),
                row("baseline: fresh uvicorn -> first response", bare_s),
            ],
        )
    )
    ratio = statistics.median(bare_s) / statistics.median(cove_s)
    print(f"\ncove's cold start is {ratio:.1f}x faster than starting uvicorn (medians)")
    print(
        f"\nsource: GET {PATH} timed in this process; startup_s from {len(startup_s)} "
        "`event=ready` lines of the server log"
    )
    print(f"machine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
