"""Cold start with and without zygotes: scale-from-zero to the first full response, three states.

    .venv/bin/python bench/cold_start_zygote.py [--runs 20]

Three private servers, one per state, each serving two apps with `scaledown_window=2`: the seed's
`square` (`@fastapi_endpoint`) and an `@asgi_app` (a FastAPI app with one route, built by the
factory in each container):

  - function zygote: the default; the function zygote (module imported, snap hooks run) is warm;
  - image zygote:    `COVE_ZYGOTE_WINDOW=0`: the function zygote goes with the last container, so
                     each cold start forks from the image zygote (serving stack imported, nothing else);
  - no zygote:       `COVE_ZYGOTE=0`: each container is a fresh worker process (in its sandbox).

`--runs` times per app and state: wait until the app has no container (`cove app list --json`, then
0.5 s), then time one GET on a fresh connection until its body has arrived. The breakdown comes
from the server log (`event=started via=... fork_ms=...`, see `zygote.startup_breakdown`): fork
(launch → the child runs; for a fresh worker: → it has imported the serving stack), isolate
(namespaces, cgroup), import (the user's module), enter (`@enter` hooks), build (the app), serve
(uvicorn's startup); "1st request" is the client's time minus the container's startup (gateway,
queueing, proxying and the first request itself). Medians of the runs; the ratio column compares
medians with the no-zygote state of the same run.
"""

from __future__ import annotations

import collections
import re
import statistics
import sys
import time

from _harness import URL_RE, Cove, arguments, get, machine, pct, table

SQUARE = """
import cove

app = cove.App("sq")

@app.function(scaledown_window=2)
@cove.fastapi_endpoint()
def square(x: int):
    return {"square": x**2}
"""

ASGI = """
import cove

app = cove.App("web")

@app.function(scaledown_window=2)
@cove.asgi_app()
def web():
    from fastapi import FastAPI

    api = FastAPI()

    @api.get("/")
    def square(x: int):
        return {"square": x**2}

    return api
"""

STATES = [
    ("function zygote", {}),
    ("image zygote", {"COVE_ZYGOTE_WINDOW": "0"}),
    ("no zygote", {"COVE_ZYGOTE": "0"}),
]
PHASES = ["fork", "isolate", "import", "enter", "build", "serve"]
PATH = "/?x=42"
STARTED_RE = re.compile(r"event=started via=(\w+) (.*)$", re.M)


def startups(cove: Cove) -> list[tuple[str, dict[str, float]]]:
    """Every container's start from the server log, in order: how (`via`) and its phases in ms."""
    found = []
    for match in STARTED_RE.finditer((cove.home / "server.log").read_text()):
        fields = dict(pair.split("=") for pair in match.group(2).split())
        found.append((match.group(1), {k.removesuffix("_ms"): float(v) for k, v in fields.items()}))
    return found


def deploy(cove: Cove, name: str, source: str) -> str:
    app_file = cove.work / f"{name}.py"
    app_file.write_text(source)
    match = URL_RE.search(cove.cli("deploy", str(app_file)))
    if match is None:
        raise RuntimeError(f"cove deploy {app_file} printed no URL")
    cove.port = int(match.group(2))
    return match.group(1)


Run = tuple[float, str, dict[str, float]]


def measure(cove: Cove, app: str, host: str, runs: int) -> list[Run]:
    """`runs` cold starts: (client seconds, how the container started, its startup phases)."""
    results = []
    for _ in range(runs):
        cove.wait_containers(0, app, timeout=60)
        time.sleep(0.5)
        before = len(startups(cove))
        started = time.perf_counter()
        status, body = get(cove.port, PATH, host)
        elapsed = time.perf_counter() - started
        if status != 200 or body != b'{"square":1764}':
            raise RuntimeError(f"cold request to {app} answered {status} {body!r}")
        new = startups(cove)[before:]
        if len(new) != 1:
            raise RuntimeError(f"expected one container start for {app}, the log shows {len(new)}")
        results.append((elapsed, *new[0]))
    return results


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--runs", type=int, default=20, help="cold starts per app and state (default 20)")
    args = parser.parse_args()
    if not 1 <= args.runs <= 100:
        parser.error("--runs must be in [1, 100]")

    results: dict[tuple[str, str], list[Run]] = {}
    for state, settings in STATES:
        cove = Cove(**settings)
        try:
            hosts = {"square": deploy(cove, "sq", SQUARE), "asgi_app": deploy(cove, "web", ASGI)}
            for endpoint, app in (("square", "sq"), ("asgi_app", "web")):
                results[(endpoint, state)] = measure(cove, app, hosts[endpoint], args.runs)
        finally:
            cove.close()

    rows = []
    for endpoint in ("square", "asgi_app"):
        baseline = statistics.median(s for s, _, _ in results[(endpoint, "no zygote")])
        for state, _ in STATES:
            runs = results[(endpoint, state)]
            ms = [s * 1000 for s, _, _ in runs]
            median = statistics.median(ms)
            vias = collections.Counter(via for _, via, _ in runs)
            phases = [f"{statistics.median(b[p] for _, _, b in runs):.1f}" for p in PHASES]
            first = statistics.median(s * 1000 - b["total"] for s, _, b in runs)
            ratio = baseline * 1000 / median
            row = [endpoint, state, " ".join(f"{v}:{n}" for v, n in sorted(vias.items()))]
            row += [f"{median:.1f}", f"{pct(ms, 90):.1f}", f"{ratio:.1f}x", *phases, f"{first:.1f}"]
            rows.append(row)
    headers = ["endpoint", "state", "started via:runs", "p50 ms", "p90 ms", "vs none"]
    print(table(headers + [f"{p} ms" for p in PHASES] + ["1st request ms"], rows))
    print(
        "\nphases: medians from the server log (`event=started`); 1st request = client time - startup."
        "\ntargets: p50 <= 50 ms with a warm function zygote (stretch 25), <= 100 ms with the image"
        " zygote only; both >= 5x faster than no zygote."
    )
    print(f"machine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
