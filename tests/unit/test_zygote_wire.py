"""The zygote protocol's framing: JSON lines, each carrying its own file descriptors, in order."""

from __future__ import annotations

import asyncio
import os
import socket

from cove._container.forkserver import _Conduit
from cove._runtime.backends.local.forks import Wire


def test_messages_arrive_in_order_each_with_its_own_descriptors() -> None:
    """Back-to-back fork requests and a reap between them: the zygote's end pairs every message with
    exactly the descriptors sent along with it."""
    server_end, zygote_end = socket.socketpair()
    pipes = [os.pipe() for _ in range(3)]

    async def send() -> None:
        wire = Wire(server_end)
        await wire.send({"op": "fork", "id": "a"}, [pipes[0][1], pipes[1][1]])
        await wire.send({"op": "reap", "pid": 7})
        await wire.send({"op": "fork", "id": "b"}, [pipes[2][1]])

    try:
        asyncio.run(send())
        conduit = _Conduit(zygote_end)
        received = [conduit.receive() for _ in range(3)]
        assert [(m["op"], len(fds)) for m, fds in (r for r in received if r is not None)] == [
            ("fork", 2),
            ("reap", 0),
            ("fork", 1),
        ]
        first, _, last = (r for r in received if r is not None)
        for fd, tag in ((first[1][0], b"a0"), (first[1][1], b"a1"), (last[1][0], b"b0")):
            os.write(fd, tag)
            os.close(fd)
        assert [os.read(read, 10) for read, _ in pipes] == [b"a0", b"a1", b"b0"]
    finally:
        server_end.close()
        zygote_end.close()
        for read, write in pipes:
            os.close(read)
            os.close(write)


def test_the_zygote_answers_on_the_same_channel_and_end_of_stream_is_none() -> None:
    server_end, zygote_end = socket.socketpair()
    conduit = _Conduit(zygote_end)
    conduit.send(event="forked", id="a", pid=42)
    zygote_end.close()

    async def read() -> list[object]:
        wire = Wire(server_end)
        return [await wire.receive(), await wire.receive()]

    try:
        assert asyncio.run(read()) == [{"event": "forked", "id": "a", "pid": 42}, None]
    finally:
        server_end.close()
