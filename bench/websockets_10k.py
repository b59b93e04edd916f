"""10,000 concurrent WebSockets through the gateway: memory per connection and message latency.

    .venv/bin/python bench/websockets_10k.py [--connections 10000] [--processes 4] [--rate 1000]
                                             [--duration 20] [--containers 4]

Deploys a raw ASGI echo endpoint (`@cove.concurrent(max_inputs=connections/containers)`, at most
`--containers` containers) on a private server, then `--processes` client processes open
`--connections` WebSockets to it through the gateway, all held open at once. Each connection then
sends small text messages, one outstanding at a time, at `--rate` messages a second in total for
`--duration` seconds; the round trip of each (client -> gateway -> container -> back) is a sample.

Reported: connections opened and refused, the server process's RSS and PSS (`/proc/PID/smaps_rollup`)
before the connections and with all of them open, the difference per connection (the server
hosts the gateway and the control plane; the control plane does nothing meanwhile), the same for
the containers (every process below the server), and message latency p50/p99/max. The clients
are a minimal asyncio WebSocket implementation (handshake, masked frames), so that the clients'
cost stays small next to the gateway's.

The script raises its own soft and hard `RLIMIT_NOFILE` (it runs as root here; otherwise only to
the hard limit) before starting the server, which inherits it: the gateway holds two descriptors
per WebSocket (client and container), the container one. Every phase is bounded in time; the
server and the clients are stopped in `finally`. The load generator, gateway and containers share
the machine's cores; the load average is printed with the figures.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import multiprocessing
import os
import resource
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

from _harness import Cove, arguments, machine, table

ECHO = """
import cove

app = cove.App("{name}")


@app.function(max_containers={containers}, min_containers={containers})
@cove.concurrent(max_inputs={per_container})
@cove.asgi_app()
def echo():
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({{"type": "lifespan.startup.complete"}})
                elif message["type"] == "lifespan.shutdown":
                    await send({{"type": "lifespan.shutdown.complete"}})
                    return
        elif scope["type"] == "http":
            await send({{"type": "http.response.start", "status": 200, "headers": []}})
            await send({{"type": "http.response.body", "body": b"ok"}})
        else:
            await receive()  # websocket.connect
            await send({{"type": "websocket.accept"}})
            while True:
                message = await receive()
                if message["type"] != "websocket.receive":
                    return
                await send({{"type": "websocket.send", "text": message.get("text")}})

    return app
"""

OPEN_TIMEOUT_S = 300.0
NOFILE = 1 << 20


def raise_nofile(wanted: int) -> int:
    """Raise RLIMIT_NOFILE to `wanted` (hard too, if allowed); return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the client: a minimal WebSocket over asyncio (RFC 6455), one process holding many connections


class _Socket(asyncio.Protocol):
    """One client WebSocket: the handshake, then unfragmented masked text frames out, echoes in."""

    def __init__(self, opened: asyncio.Future[bool]) -> None:
        self.opened = opened
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.waiter: asyncio.Future[bytes] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            self.upgraded = head.startswith(b"HTTP/1.1 101")
            if not self.opened.done():
                self.opened.set_result(self.upgraded)
            if not self.upgraded:
                return
        while len(self.buffer) >= 2:
            opcode, length = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F  # short, unmasked frames
            if len(self.buffer) < 2 + length:
                return
            payload, self.buffer = self.buffer[2 : 2 + length], self.buffer[2 + length :]
            if opcode == 0x9:  # ping (uvicorn's keepalive): answer, or it closes the connection
                self.send(0x8A, payload)
            elif opcode == 0x8:
                assert self.transport is not None
                self.transport.close()
            elif self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(payload)

    def send(self, first: int, payload: bytes) -> None:
        assert self.transport is not None and len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        self.transport.write(bytes((first, 0x80 | len(payload))) + mask + masked)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_result(False)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    async def round_trip(self, payload: bytes) -> float:
        self.waiter = asyncio.get_running_loop().create_future()
        start = time.perf_counter()
        self.send(0x81, payload)
        echo = await self.waiter
        elapsed = time.perf_counter() - start
        if echo != payload:
            raise RuntimeError(f"echo {echo!r} for {payload!r}")
        return elapsed


def _client(pipe: Connection, port: int, host: str, count: int, rate: float, duration_s: float) -> None:
    raise_nofile(count + 1000)
    asyncio.run(_client_main(pipe, port, host, count, rate, duration_s))


async def _client_main(
    pipe: Connection, port: int, host: str, count: int, rate: float, duration_s: float
) -> None:
    loop = asyncio.get_running_loop()
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    sockets: list[_Socket] = []
    errors: list[str] = []
    gate = asyncio.Semaphore(100)  # handshakes in flight per process

    async def open_one() -> None:
        async with gate:
            opened: asyncio.Future[bool] = loop.create_future()
            try:
                _, sock = await loop.create_connection(lambda: _Socket(opened), "127.0.0.1", port)
            except OSError as exc:
                errors.append(f"connect: {exc}")
                return
            assert sock.transport is not None
            sock.transport.write(request)
            if await asyncio.wait_for(opened, OPEN_TIMEOUT_S):
                sockets.append(sock)
            else:
                errors.append(f"handshake: {sock.buffer[:80]!r}")
                sock.transport.close()

    started = time.perf_counter()
    results = await asyncio.gather(*(open_one() for _ in range(count)), return_exceptions=True)
    errors += [repr(r) for r in results if isinstance(r, BaseException)]
    pipe.send(("opened", len(sockets), errors, len(errors), time.perf_counter() - started))
    await loop.run_in_executor(None, pipe.recv)  # "talk"

    latencies: list[float] = []
    failures = 0
    interval = len(sockets) / rate if rate > 0 else duration_s
    deadline = time.perf_counter() + duration_s

    async def talk(sock: _Socket, offset: float) -> None:
        nonlocal failures
        await asyncio.sleep(offset)
        seq = 0
        while time.perf_counter() < deadline and not sock.closed:
            seq += 1
            try:
                latencies.append(await asyncio.wait_for(sock.round_trip(b"m%d" % seq), 30))
            except (TimeoutError, ConnectionError, RuntimeError):
                failures += 1
                return
            await asyncio.sleep(interval)

    n = max(1, len(sockets))
    await asyncio.gather(*(talk(s, interval * i / n) for i, s in enumerate(sockets)))
    alive = sum(not s.closed for s in sockets)
    pipe.send(("talked", latencies, failures, alive))
    await loop.run_in_executor(None, pipe.recv)  # "close"
    for sock in sockets:
        if sock.transport is not None:
            sock.transport.close()
    await asyncio.sleep(0.5)
    pipe.send(("closed",))


# -- the measuring side


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        fields[name] = int(value.split()[0])
    return fields["Rss"], fields["Pss"]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def gateway_pids(server: int) -> list[int]:
    """The server and its gateway worker processes (COVE_GATEWAY_WORKERS): the gateway's memory."""
    workers = []
    for pid in descendants(server):
        try:
            if b"cove._gateway.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                workers.append(pid)
        except OSError:
            continue
    return [server, *workers]


def gateway_memory_kib(server: int) -> tuple[int, int]:
    rss = pss = 0
    for pid in gateway_pids(server):
        r, p = memory_kib(pid)
        rss, pss = rss + r, pss + p
    return rss, pss


def tree_memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of the containers: every process under the server but its gateway workers."""
    rss = pss = 0
    gateway = set(gateway_pids(pid))
    for child in descendants(pid):
        if child in gateway:
            continue
        try:
            r, p = memory_kib(child)
        except (OSError, KeyError):
            continue
        rss, pss = rss + r, pss + p
    return rss, pss


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--containers", type=int, default=4, help="echo containers (default 4)")
    parser.add_argument("--rate", type=float, default=1000.0, help="messages/s in total (default 1000)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of messages (default 20)")
    args = parser.parse_args()
    if not (0 < args.connections <= 50_000 and 0 < args.processes <= 16 and 0 < args.duration <= 300):
        parser.error("--connections in (0, 50000], --processes in (0, 16], --duration in (0, 300]")
    nofile = raise_nofile(NOFILE)
    per_container = -(-args.connections // args.containers) + 16
    cove = Cove(COVE_MAX_CONNECTIONS=str(args.connections + 1000), COVE_RATE_LIMIT_RPS="0")
    clients: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    try:
        source = ECHO.format(name="ws10k", containers=args.containers, per_container=per_container)
        host = cove.deploy("ws10k", source)
        cove.wait_containers(args.containers, "ws10k", timeout=120)
        server = cove.server_pid()
        time.sleep(1.0)
        gateway_processes = gateway_pids(server)
        before, before_tree = gateway_memory_kib(server), tree_memory_kib(server)
        context = multiprocessing.get_context("fork")
        share = [
            args.connections // args.processes + (i < args.connections % args.processes)
            for i in range(args.processes)
        ]
        rate = args.rate / args.processes
        for count in share:
            mine, theirs = context.Pipe()
            process = context.Process(
                target=_client, args=(theirs, cove.port, host, count, rate, args.duration), daemon=True
            )
            process.start()
            clients.append((process, mine))
        opened = refused = 0
        open_s = 0.0
        samples: list[str] = []
        for _, pipe in clients:
            if not pipe.poll(OPEN_TIMEOUT_S + 60):
                raise RuntimeError("a client process did not report its connections in time")
            _, ok, examples, failed, seconds = pipe.recv()
            opened, refused, open_s = opened + ok, refused + failed, max(open_s, seconds)
            samples += examples
        time.sleep(1.0)
        during, during_tree = gateway_memory_kib(server), tree_memory_kib(server)
        for _, pipe in clients:
            pipe.send("talk")
        latencies: list[float] = []
        failures = alive = 0
        for _, pipe in clients:
            if not pipe.poll(args.duration + 120):
                raise RuntimeError("a client process did not report its messages in time")
            _, got, failed, still = pipe.recv()
            latencies += got
            failures, alive = failures + failed, alive + still
        for _, pipe in clients:
            pipe.send("close")
        for process, pipe in clients:
            pipe.poll(60)
            process.join(timeout=60)
    finally:
        for process, _ in clients:
            if process.is_alive():
                process.kill()
                process.join()
        log = (cove.home / "server.log").read_text(errors="replace").splitlines()
        cove.close()
    trouble = collections.Counter(
        line.split(" ", 2)[2][:150] for line in log if " WARNING " in line or " ERROR " in line
    )

    per = max(opened, 1)
    rows = [
        [
            f"gateway ({len(gateway_processes)} processes)",
            "RSS",
            before[0] // 1024,
            during[0] // 1024,
            f"{(during[0] - before[0]) / per:.1f}",
        ],
        [
            f"gateway ({len(gateway_processes)} processes)",
            "PSS",
            before[1] // 1024,
            during[1] // 1024,
            f"{(during[1] - before[1]) / per:.1f}",
        ],
        [
            "containers",
            "RSS",
            before_tree[0] // 1024,
            during_tree[0] // 1024,
            f"{(during_tree[0] - before_tree[0]) / per:.1f}",
        ],
        [
            "containers",
            "PSS",
            before_tree[1] // 1024,
            during_tree[1] // 1024,
            f"{(during_tree[1] - before_tree[1]) / per:.1f}",
        ],
    ]
    print(f"machine: {machine()}; RLIMIT_NOFILE {nofile}")
    print(f"connections: {opened} open at once of {args.connections} ({refused} failed) in {open_s:.1f} s")
    print(f"  {alive} still open after the messages")
    for sample, times in collections.Counter(s[:60] for s in samples).most_common(5):
        print(f"  failure x{times}: {sample}")
    for line, times in trouble.most_common(8):
        print(f"  server log x{times}: {line}")
    print(table(["process", "memory", "before MiB", f"{opened} open MiB", "KiB/connection"], rows))
    if latencies:
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        print(
            f"messages: {len(latencies)} round trips ({failures} failed), "
            f"~{args.rate:g}/s for {args.duration:g} s: "
            f"p50 {q[49] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms, max {max(latencies) * 1000:.1f} ms"
        )
    return 0 if opened == args.connections and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
