"""The gateway's connection pool reaches containers on unix sockets and, as `tcp://HOST:PORT`, on TCP
(the Ray backend's containers on other machines)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from cove._gateway.connpool import ConnectionPool

pytestmark = pytest.mark.integration


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.got = asyncio.Event()

    def upstream_data(self, data: bytes) -> None:
        self.data += data
        self.got.set()

    def upstream_lost(self, exc: Exception | None) -> None:
        self.got.set()

    def upstream_write_paused(self) -> None:
        pass

    def upstream_write_resumed(self) -> None:
        pass


class _EchoServer:
    """Answers each line with `echo <line>`; `close()` waits for every connection to end."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        while line := await reader.readline():
            writer.write(b"echo " + line)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self.server.wait_closed()


async def _exchange(pool: ConnectionPool, address: str) -> bytes:
    conn = await pool.connect(address)
    sink = _Sink()
    conn.sink = sink
    conn.transport.write(b"hello\n")
    await asyncio.wait_for(sink.got.wait(), 10)
    pool.put(conn)
    return bytes(sink.data)


def test_a_tcp_address_opens_a_tcp_connection_with_nodelay_and_is_pooled_per_address() -> None:
    async def main() -> None:
        echo = _EchoServer()
        echo.server = server = await asyncio.start_server(echo, "127.0.0.1", 0)
        address = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        pool = ConnectionPool()
        try:
            assert await _exchange(pool, address) == b"echo hello\n"
            assert pool.idle_count(address) == 1
            conn = pool.take(address)
            assert conn is not None
            sock = conn.transport.get_extra_info("socket")
            assert sock.family == socket.AF_INET
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            pool.put(conn)
        finally:
            pool.close()
            await echo.close()

    asyncio.run(main())


def test_any_other_address_stays_a_unix_socket_path(tmp_path: Path) -> None:
    async def main() -> None:
        path = str(tmp_path / "c.sock")
        echo = _EchoServer()
        echo.server = await asyncio.start_unix_server(echo, path)
        pool = ConnectionPool()
        try:
            assert await _exchange(pool, path) == b"echo hello\n"
            conn = pool.take(path)
            assert conn is not None and conn.transport.get_extra_info("socket").family == socket.AF_UNIX
            pool.put(conn)
        finally:
            pool.close()
            await echo.close()

    asyncio.run(main())


def test_a_tcp_address_nobody_listens_on_raises_oserror_like_a_missing_socket() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the connect

    async def main() -> None:
        pool = ConnectionPool()
        with pytest.raises(OSError):
            await pool.connect(f"tcp://127.0.0.1:{port}")
        pool.close()

    asyncio.run(main())
