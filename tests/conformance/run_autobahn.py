"""WebSocket conformance through the gateway: the Autobahn TestSuite cases, run by `kosoku`.

    .venv/bin/python tests/conformance/run_autobahn.py [--cases 1.*,2.*] [--performance] [--json]

`kosoku` (PyPI) drives the Autobahn TestSuite's own case files from a native runner, so no Docker
and no Python 2 are needed. It installs shims (a `pkg_resources`, among others) into the process
that runs it, so the test (`test_autobahn.py`) runs this script in a subprocess.

The server under test is an echo ASGI app on uvicorn configured as a Cove container serves it
(websockets-sansio, no permessage-deflate, 2 MiB messages), reached two ways in the same run:
directly over TCP (the baseline) and through a `Gateway` in this process, routed on the Host
`127.0.0.1`. The gateway relays bytes, so every case should end the same both ways; the script
prints pass counts per section for both and exits 1 if the gateway changed any verdict.

Default cases: sections 1-7 (framing, pings, reserved bits, opcodes, fragmentation, UTF-8,
closing) and 10 (misc). `--performance` adds section 9 (messages up to 16 MiB) with the message
cap raised to 32 MiB on both paths; sections 12-13 need permessage-deflate, which Cove does not
negotiate (as Modal does not), so their verdicts are only informational.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_CASES = ("1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*")
PERFORMANCE_CASES = ("9.*",)
MIB = 1024 * 1024

ECHO_APP = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "bytes": message.get("bytes"), "text": message.get("text")})
"""

# The container's uvicorn settings (src/cove/_container/entrypoint.py), on two listening sockets.
RUNNER = """
import asyncio, socket, sys
import uvicorn
sys.path.insert(0, sys.argv[1])
sockets = [socket.socket(fileno=int(fd)) for fd in sys.argv[3:5]]
config = uvicorn.Config(
    "echo_app:app", ws="websockets-sansio", ws_max_size=int(sys.argv[2]), ws_per_message_deflate=False,
    log_level="critical", loop="uvloop", http="httptools",  # invalid UTF-8 cases log tracebacks
)
asyncio.run(uvicorn.Server(config).serve(sockets=sockets))
"""


@dataclass
class Upstream:
    """A uvicorn subprocess serving the echo app on a unix socket and a loopback TCP port."""

    proc: subprocess.Popen[bytes]
    directory: str
    path: str
    port: int

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_upstream(max_message_bytes: int) -> Upstream:
    directory = tempfile.mkdtemp(prefix="cove-ab-")
    with open(os.path.join(directory, "echo_app.py"), "w") as file:
        file.write(ECHO_APP)
    path = os.path.join(directory, "u.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tcp = socket.create_server(("127.0.0.1", 0))
    try:
        unix.bind(path)
        unix.listen(128)
        port = tcp.getsockname()[1]
        fds = [unix.fileno(), tcp.fileno()]
        argv = [sys.executable, "-c", RUNNER, directory, str(max_message_bytes), *map(str, fds)]
        proc = subprocess.Popen(argv, pass_fds=fds, stdin=subprocess.DEVNULL)
    finally:
        unix.close()
        tcp.close()
    upstream = Upstream(proc, directory, path, port)
    try:  # ready = it answers HTTP (the request waits in the backlog until uvicorn serves it)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200
    except BaseException:
        upstream.stop()
        raise
    return upstream


class _Lease:
    def __init__(self, address: str) -> None:
        self.address = address

    def release(self, *, broken: bool = False, timed_out: bool = False) -> None:
        pass

    async def failure_message(self) -> str:
        return "cove: echo container failed"


class _OneContainer:
    def __init__(self, address: str) -> None:
        self.address = address

    async def acquire(self) -> _Lease:
        return _Lease(self.address)


def verdicts(results: Sequence[Any]) -> dict[str, str]:
    """Case id -> `OK`, `NON-STRICT`, `INFORMATIONAL`, or `FAILED: behavior/close`."""
    out = {}
    for result in results:
        ok = result.passed
        out[result.case_id] = (
            result.behavior.value if ok else f"FAILED: {result.behavior.value}/{result.behavior_close.value}"
        )
    return out


async def run_cases(url: str, cases: Sequence[str]) -> dict[str, str]:
    from kosoku import FailureError, run_fuzzingclient

    try:
        results = await run_fuzzingclient(url, cases=list(cases), concurrency=4)
    except FailureError as failure:
        results = failure.results
    return verdicts(results)


async def compare(
    cases: Sequence[str], max_message_bytes: int = 2 * MIB
) -> tuple[dict[str, str], dict[str, str]]:
    """Run `cases` directly against uvicorn and through a gateway; (direct, via gateway) verdicts."""
    from cove._gateway import Gateway, Limits, Route

    upstream = start_upstream(max_message_bytes)
    gateway = Gateway(
        routes={"127.0.0.1": Route("autobahn", "echo", _OneContainer(upstream.path))},
        limits=Limits(max_ws_message_bytes=max_message_bytes),
    )
    try:
        await gateway.start()
        direct = await run_cases(f"ws://127.0.0.1:{upstream.port}/", cases)
        via = await run_cases(f"ws://127.0.0.1:{gateway.port}/", cases)
    finally:
        await gateway.close(timeout_s=5)
        upstream.stop()
    return direct, via


def summary(direct: dict[str, str], via: dict[str, str]) -> list[str]:
    sections: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for case, verdict in via.items():
        counts = sections[case.split(".")[0]]
        counts[0] += 1
        counts[1] += not verdict.startswith("FAILED")
        counts[2] += not direct.get(case, "FAILED").startswith("FAILED")
    lines = ["section  cases  passed via gateway  passed direct"]
    for section in sorted(sections, key=int):
        total, passed, baseline = sections[section]
        lines.append(f"{section:>7}  {total:>5}  {passed:>18}  {baseline:>13}")
    total = len(via)
    passed = sum(not v.startswith("FAILED") for v in via.values())
    baseline = sum(not v.startswith("FAILED") for v in direct.values())
    lines.append(f"{'all':>7}  {total:>5}  {passed:>18}  {baseline:>13}")
    for case in sorted(via, key=lambda c: [int(p) for p in c.split(".")]):
        if via[case] != direct.get(case):
            lines.append(f"  {case}: via gateway {via[case]}, direct {direct.get(case)}")
        elif via[case].startswith("FAILED"):
            lines.append(f"  {case}: {via[case]} both ways (not the gateway's doing)")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", help="comma-separated case ids or globs (default: sections 1-7 and 10)")
    parser.add_argument("--performance", action="store_true", help="add section 9 (16 MiB messages)")
    parser.add_argument("--json", action="store_true", help="print {case: [direct, via gateway]} as JSON")
    args = parser.parse_args()
    cases = tuple(args.cases.split(",")) if args.cases else DEFAULT_CASES
    cap = 2 * MIB
    if args.performance:
        cases += PERFORMANCE_CASES
        cap = 32 * MIB
    direct, via = asyncio.run(compare(cases, cap))
    if args.json:
        print(json.dumps({case: [direct.get(case), verdict] for case, verdict in via.items()}))
    else:
        print("\n".join(summary(direct, via)))
    return 0 if all(via[case] == direct.get(case) for case in via) else 1


if __name__ == "__main__":
    sys.exit(main())
