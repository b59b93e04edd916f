"""Memory: idle containers and the server process, with 1 and with 5 warm apps.

    .venv/bin/python bench/memory.py [--apps 5]

Deploys the seed's `square` endpoint with `min_containers=1` as app `mem1` on a private server,
sends it one request, lets it settle for 2 s and reads PSS and RSS from /proc/<pid>/smaps_rollup
of: the server process (gateway + control plane + runtime); each container, split into its Python
worker and its sandbox helpers (`bwrap`, and the `pasta` process that serves its network, which
is not a child of the server); and the warm spare worker(s). Then deploys `mem2`..`mem<apps>` and
reads again. Containers are the server's child process trees that name an id from
`cove container list --json` (in a command line, or a unix socket path when not sandboxed); the
other trees are spares. PSS splits shared pages between the processes mapping them; RSS counts
them in each.

The baseline, measured in the same run, is a bare `uvicorn --loop uvloop --http httptools` process
serving the same FastAPI function after one request: what one app costs without Cove.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path

from _harness import Cove, Uvicorn, arguments, bare_square, cove_square, get, machine, table

MiB = 1024
WORKER = "cove._container.entrypoint"


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of `pid` in KiB."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    fields = {m[0]: int(m[1]) for m in re.findall(r"^(\w+):\s+(\d+) kB", text, re.M)}
    return fields["Pss"], fields["Rss"]


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    found: dict[int, tuple[int, str]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            found[int(proc.name)] = (ppid, (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return found


def unix_paths(pids: list[int]) -> str:
    """The paths of the unix sockets these processes hold (a plain container owns `<id>.sock`)."""
    paths = {}
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) == 8:
            paths[parts[6]] = parts[7]
    held = []
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            with contextlib.suppress(OSError):
                target = fd.readlink().as_posix()
                held.append(paths.get(target.removeprefix("socket:[").rstrip("]"), ""))
    return " ".join(held)


def worker_trees(server: int, table_: dict[int, tuple[int, str]]) -> list[list[int]]:
    """Each child of the server with its descendants and the `pasta` serving its network namespace."""
    trees = []
    for child in (pid for pid, (ppid, _) in table_.items() if ppid == server):
        tree, i = [child], 0
        while i < len(tree):
            tree += [pid for pid, (ppid, _) in table_.items() if ppid == tree[i]]
            i += 1
        tree += [p for p, (_, cmd) in table_.items() if any(f"/proc/{t}/ns/net " in cmd for t in tree)]
        trees.append(tree)
    return trees


def row(name: str, units: list[list[int]]) -> list[object]:
    """Mean PSS and RSS of `units` (each unit a list of pids whose memory adds up)."""
    if not units:
        return [name, 0, "", ""]
    pss = [sum(memory_kib(p)[0] for p in unit) for unit in units]
    rss = [sum(memory_kib(p)[1] for p in unit) for unit in units]
    return [name, len(units), f"{sum(pss) / len(units) / MiB:.1f}", f"{sum(rss) / len(units) / MiB:.1f}"]


def snapshot(cove: Cove, apps: int) -> list[list[object]]:
    server = cove.server_pid()
    ids = {c["id"] for c in json.loads(cove.cli("container", "list", "--json"))}
    found = processes()
    containers, spares = [], []
    for tree in worker_trees(server, found):
        text = " ".join(found[p][1] for p in tree) + " " + unix_paths(tree)
        (containers if any(i in text for i in ids) else spares).append(tree)
    if len(containers) != apps:
        raise RuntimeError(f"found {len(containers)} container process trees, expected {apps}")
    workers = [[p for p in tree if WORKER in found[p][1]] for tree in containers]
    helpers = [[p for p in tree if WORKER not in found[p][1]] for tree in containers]
    return [
        row(f"{apps} app(s): server process", [[server]]),
        row(f"{apps} app(s): container, Python worker", workers),
        row(f"{apps} app(s): container, bwrap + pasta", helpers if any(helpers) else []),
        row(f"{apps} app(s): container, whole", containers),
        row(f"{apps} app(s): warm spare, whole", spares),
        row(
            f"{apps} app(s): all Cove processes (sum)",
            [[server, *(p for t in containers + spares for p in t)]],
        ),
    ]


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--apps", type=int, default=5, help="warm apps in the second reading (default 5)")
    args = parser.parse_args()
    if not 2 <= args.apps <= 20:
        parser.error("--apps must be in [2, 20]")

    bare = Uvicorn(bare_square())
    cove = Cove()
    readings: dict[int, list[list[object]]] = {}
    try:
        bare.start()
        time.sleep(2)
        assert bare.process is not None
        baseline = row("baseline: bare uvicorn", [[bare.process.pid]])
        bare.stop()
        for count, apps in ((1, range(1, 2)), (args.apps, range(2, args.apps + 1))):
            for n in apps:
                host = cove.deploy(f"mem{n}", cove_square(f"mem{n}", options="min_containers=1"))
                cove.wait_containers(n, timeout=120)
                if get(cove.port, "/?x=42", host)[0] != 200:
                    raise RuntimeError(f"mem{n} did not answer 200")
            time.sleep(2)
            readings[count] = snapshot(cove, count)
    finally:
        bare.close()
        cove.close()

    print(
        table(
            ["process", "count", "PSS MiB (each)", "RSS MiB (each)"],
            [baseline, *readings[1], *readings[args.apps]],
        )
    )
    one, many = readings[1], readings[args.apps]
    print(f"\nidle container (whole) / bare uvicorn, PSS: {float(many[3][2]) / float(baseline[2]):.2f}x")
    print(f"idle container (worker only) / bare uvicorn, PSS: {float(many[1][2]) / float(baseline[2]):.2f}x")
    growth = [(float(many[0][i]) - float(one[0][i])) / (args.apps - 1) for i in (2, 3)]
    print(f"server process growth per extra app: {growth[0]:.2f} MiB PSS, {growth[1]:.2f} MiB RSS")
    print(
        "\nsource: /proc/<pid>/smaps_rollup of the server (pid from COVE_HOME/server.json), its "
        "descendants and their pasta processes, and the uvicorn pid"
    )
    print(f"machine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
