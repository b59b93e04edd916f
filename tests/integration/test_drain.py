"""Redeploys and long-lived connections: WebSockets and streams stay on the version that took them.

A redeploy moves new connections to the new version at once; open WebSockets and streaming
responses stay on the old version's containers until they end or `COVE_DRAIN_S` runs out, then a
WebSocket is closed with 1001 (going away) and a stream ends with its last chunk, after a whole
chunk. `cove app stop` ends them at once the same way. Every test runs the real CLI, server,
containers and `websockets`/`httpx` clients over loopback.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import URL_RE, CoveEnv

pytestmark = pytest.mark.integration

#: Generous bounds for a loaded machine; nothing is asserted about time.
WAIT_S = 120.0

LIVE = """
import asyncio

import cove

app = cove.App("live")
VERSION = 1


@app.function(timeout=600)
@cove.concurrent(max_inputs=200)
@cove.asgi_app()
def web():
    from fastapi import FastAPI, WebSocket, WebSocketDisconnect
    from fastapi.responses import StreamingResponse

    api = FastAPI()

    @api.websocket("/ws")
    async def echo(sock: WebSocket):
        await sock.accept()
        await sock.send_text(f"hello v{VERSION}")
        try:
            while True:
                text = await sock.receive_text()
                await sock.send_text(f"{text} v{VERSION}")
        except WebSocketDisconnect:
            pass

    @api.get("/stream")
    async def stream(n: int = 10, delay: float = 0.1):
        async def lines():
            for i in range(n):
                # One chunk per line, padded so that a torn chunk would show.
                yield f"{i} v{VERSION} " + "x" * 2000 + "\\n"
                await asyncio.sleep(delay)

        return StreamingResponse(lines(), media_type="text/plain")

    return api
"""

LINE_RE = re.compile(r"^(\d+) v(\d+) x{2000}$")


def _write(path: Path, version: int) -> None:
    path.write_text(LIVE.replace("VERSION = 1", f"VERSION = {version}"))


def _deploy(cove: CoveEnv, path: Path, version: int) -> str:
    _write(path, version)
    result = cove.run("deploy", str(path), timeout=WAIT_S)
    (url,) = URL_RE.findall(result.stdout)
    return str(url)


class Gateway:
    """Where the deployed endpoint is: the gateway's loopback port and the Host it routes on."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.netloc = parts.netloc
        self.port = int(parts.port or 0)

    async def open(self) -> tuple[ClientConnection, int]:
        """A WebSocket to the endpoint and the version that greeted it."""
        sock = await connect(
            f"ws://{self.netloc}/ws",
            host="127.0.0.1",
            port=self.port,
            open_timeout=WAIT_S,
            ping_interval=None,
        )
        greeting = str(await asyncio.wait_for(sock.recv(), WAIT_S))
        assert greeting.startswith("hello v"), greeting
        return sock, int(greeting.removeprefix("hello v"))

    def stream(self, client: httpx.Client, n: int, delay: float) -> Iterator[str]:
        with client.stream(
            "GET",
            f"http://127.0.0.1:{self.port}/stream?n={n}&delay={delay}",
            headers={"Host": self.netloc},
            timeout=WAIT_S,
        ) as response:
            assert response.status_code == 200
            yield from response.iter_lines()


class Talker:
    """One open WebSocket sending numbered messages one at a time, and checking every echo."""

    def __init__(self, sock: ClientConnection, version: int, name: str) -> None:
        self.sock = sock
        self.version = version  # the version that greeted it, which must echo every message
        self.name = name
        self.sent = 0
        self.echoed = 0
        self.wrong: list[str] = []

    async def exchange(self) -> None:
        message = f"{self.name}-{self.sent}"
        self.sent += 1
        await self.sock.send(message)
        echo = await asyncio.wait_for(self.sock.recv(), WAIT_S)
        if echo == f"{message} v{self.version}":
            self.echoed += 1
        else:
            self.wrong.append(f"{message!r} -> {echo!r}")


async def _talk_while(talkers: list[Talker], done: asyncio.Event) -> None:
    """Every talker exchanges messages, one after another, until `done` (then one more round)."""

    async def run(talker: Talker) -> None:
        while True:
            finished = done.is_set()
            await talker.exchange()
            if finished:
                return
            await asyncio.sleep(0.05)

    await asyncio.gather(*(run(t) for t in talkers))


async def _deploy_while_talking(cove: CoveEnv, path: Path, version: int, talkers: list[Talker]) -> None:
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def deploy() -> None:
        try:
            await loop.run_in_executor(None, _deploy, cove, path, version)
        finally:
            done.set()

    await asyncio.gather(deploy(), _talk_while(talkers, done))


def test_fifty_websockets_lose_no_message_across_three_redeploys(tmp_path: Path, cove_env: CoveEnv) -> None:
    """50 WebSockets exchange messages through 3 redeploys: each keeps the version that greeted it,
    every message sent gets its echo from that version, and each redeploy's new connections reach
    the new version (and keep it through the next redeploys)."""
    path = tmp_path / "live.py"
    gateway = Gateway(_deploy(cove_env, path, 1))

    async def scenario() -> list[Talker]:
        talkers: list[Talker] = []
        for i in range(50):
            sock, version = await gateway.open()
            assert version == 1
            talkers.append(Talker(sock, version, f"a{i}"))
        try:
            for version in (2, 3, 4):
                await _deploy_while_talking(cove_env, path, version, talkers)
                for i in range(5):  # new connections go to the version just deployed
                    sock, greeted = await gateway.open()
                    assert greeted == version, (
                        f"a new connection after deploying v{version} reached v{greeted}"
                    )
                    talkers.append(Talker(sock, greeted, f"v{version}-{i}"))
            await asyncio.gather(*(t.exchange() for t in talkers))  # one more round for every one
        finally:
            await asyncio.gather(*(t.sock.close() for t in talkers), return_exceptions=True)
        return talkers

    talkers = asyncio.run(scenario())
    wrong = [w for t in talkers for w in t.wrong]
    assert not wrong, wrong[:10]
    assert all(t.echoed == t.sent for t in talkers)
    first = talkers[:50]
    assert all(t.version == 1 for t in first)
    assert min(t.sent for t in first) >= 4  # each talked during each of the 3 redeploys and after


def test_a_stream_across_a_redeploy_completes_on_its_version(tmp_path: Path, cove_env: CoveEnv) -> None:
    """A streaming response running while the app is redeployed gets every chunk from its own
    version and its proper end, while a new request already reaches the new version."""
    path = tmp_path / "live.py"
    gateway = Gateway(_deploy(cove_env, path, 1))
    lines: list[str] = []
    with httpx.Client() as client:
        stream = gateway.stream(client, n=30, delay=0.2)
        lines.append(next(stream))
        deployer = threading.Thread(target=_deploy, args=(cove_env, path, 2))
        deployer.start()
        try:
            lines.extend(stream)  # ends without error only if the chunked body was ended properly
        finally:
            deployer.join(timeout=WAIT_S)
        fresh = list(gateway.stream(client, n=1, delay=0))
    matches = [LINE_RE.match(line) for line in lines]
    assert all(matches), lines
    assert [int(m.group(1)) for m in matches if m] == list(range(30))
    assert {m.group(2) for m in matches if m} == {"1"}
    assert LINE_RE.match(fresh[0]) and fresh[0].split()[1] == "v2"


def test_after_the_drain_grace_websockets_close_1001_and_streams_end_cleanly(
    tmp_path: Path, cove_env: CoveEnv
) -> None:
    """With COVE_DRAIN_S=3, a WebSocket and an endless stream of the replaced version run on until
    the grace ends; then the WebSocket is closed with 1001 (going away) and the stream ends with its
    last chunk after a whole line (no torn chunk), while new connections reach the new version."""
    cove_env.env["COVE_DRAIN_S"] = "3"
    path = tmp_path / "live.py"
    gateway = Gateway(_deploy(cove_env, path, 1))

    async def scenario() -> tuple[int | None, int, list[str]]:
        sock, version = await gateway.open()
        assert version == 1
        talker = Talker(sock, 1, "old")
        lines: list[str] = []

        def read_stream() -> None:
            with httpx.Client() as client:
                for line in gateway.stream(client, n=100_000, delay=0.05):
                    lines.append(line)

        loop = asyncio.get_running_loop()
        reader = loop.run_in_executor(None, read_stream)
        await loop.run_in_executor(None, _deploy, cove_env, path, 2)
        new_sock, new_version = await gateway.open()
        await new_sock.close()
        assert new_version == 2
        code: int | None = None
        try:
            # The old version keeps answering until the grace ends (bounded: fail, never hang).
            for _ in range(int(WAIT_S / 0.05)):
                await talker.exchange()
                await asyncio.sleep(0.05)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else -1
        await asyncio.wait_for(reader, WAIT_S)  # raises if the stream broke instead of ending
        return code, talker.echoed, lines

    code, echoed, lines = asyncio.run(scenario())
    assert code == 1001
    assert echoed > 0
    assert len(lines) > 1
    assert all(LINE_RE.match(line) and line.split()[1] == "v1" for line in lines), lines[-3:]


def test_app_stop_closes_websockets_at_once_with_1001(tmp_path: Path, cove_env: CoveEnv) -> None:
    """`cove app stop` does not wait for the drain grace: open WebSockets, of the current version
    and of one being drained after a redeploy, are closed with 1001 (going away)."""
    path = tmp_path / "live.py"
    gateway = Gateway(_deploy(cove_env, path, 1))

    async def scenario() -> list[int | None]:
        old, _ = await gateway.open()
        await asyncio.get_running_loop().run_in_executor(None, _deploy, cove_env, path, 2)
        current, version = await gateway.open()
        assert version == 2
        stop = ("app", "stop", "live", "--yes")
        await asyncio.get_running_loop().run_in_executor(None, lambda: cove_env.run(*stop))
        codes: list[int | None] = []
        for sock in (old, current):
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(sock.recv(), WAIT_S)
            codes.append(closed.value.rcvd.code if closed.value.rcvd is not None else None)
        return codes

    assert asyncio.run(scenario()) == [1001, 1001]
