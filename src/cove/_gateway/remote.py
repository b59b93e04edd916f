"""A worker's view of the owner's state: upstreams, leases, long-poll results and metrics over a channel.

A gateway worker process (`worker.py`) runs the ordinary `Gateway` with these stand-ins:

- `RemoteUpstream.acquire` asks the owner for a lease (the owner's pool queues, scales and applies
  the workspace rate limit, so there is one queue and one bucket for all processes) and answers
  with the container's socket path; the worker then talks to the container directly.
- `RemoteLease.release` tells the owner (no answer awaited); `failure_message` asks it.
- `RemoteCallStore` registers every 303 call with the owner, so a poll that lands on another
  process finds the result there.
- finished requests are reported to the owner (batched per turn of the loop, sent before the
  client can ask for more), whose dashboard and `/metrics` show the totals.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from cove._gateway.channel import Channel, Message, call
from cove._gateway.longpoll import CallResult, CallStore, Running, error_result
from cove._gateway.upstream import Lease, UpstreamError

_log = logging.getLogger("cove.gateway")


class OwnerLink:
    """The worker's end of its channel to the owner, plus a blocking socket for the rare sync asks."""

    def __init__(self, channel_path: str) -> None:
        self._path = channel_path
        self.channel = Channel(self._on_message, self._on_lost)
        self._ids = itertools.count(1)
        self._acquiring: dict[int, asyncio.Future[Message]] = {}
        self._watching: dict[str, Running] = {}
        self._sync: socket.socket | None = None
        self._observed: list[tuple[str, str, int, float, float]] = []
        self._finished = 0
        self._flush: asyncio.Handle | None = None
        # message kind -> callable(*args); the worker adds its own
        self._drains: dict[int, Callable[[], None]] = {}  # lease id -> `Lease.on_drain` callback
        self.handlers: dict[str, Any] = {"ping": self._ping, "drain": self._drain}
        self.lost = asyncio.Event()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_unix_connection(lambda: self.channel, self._path)

    # -- acquire / release

    async def acquire(self, host: str, session: bytes | None) -> RemoteLease:
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._acquiring[request_id] = future
        self.channel.send(("acquire", request_id, host, session))
        try:
            answer = await future
        except asyncio.CancelledError:
            # The client left while it waited: the owner drops the wait, or gives the lease back.
            self._acquiring.pop(request_id, None)
            self.channel.send(("cancel", request_id))
            raise
        if answer[0] == "refused":
            _, status, message, headers = answer
            raise UpstreamError(status, message, headers)
        _, lease_id, address = answer
        return RemoteLease(self, lease_id, address)

    async def config(self) -> Message:
        """The owner's settings and routes; every change after this answer is pushed here too."""
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.handlers["config"] = lambda *config: future.set_result(config)
        self.channel.send(("config",))
        return await future

    def release(self, lease_id: int, broken: bool, timed_out: bool) -> None:
        self._drains.pop(lease_id, None)
        self.channel.send(("release", lease_id, broken, timed_out))

    def on_drain(self, lease_id: int, callback: Callable[[], None]) -> None:
        """Have the owner's lease call `callback` (here, once) when its connection must end."""
        self._drains[lease_id] = callback
        self.channel.send(("on_drain", lease_id))

    def _drain(self, lease_id: int) -> None:
        callback = self._drains.pop(lease_id, None)
        if callback is not None:
            callback()

    async def failure_message(self, lease_id: int) -> str:
        """Why the lease's container failed, as the owner's pool says (it may wait for the exit)."""
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._acquiring[request_id] = future
        self.channel.send(("failure", request_id, lease_id))
        try:
            answer = await future
        finally:
            self._acquiring.pop(request_id, None)
        return str(answer[1]) if answer[0] == "failure" else "cove: upstream failed\n"

    def ask(self, message: Message) -> Message:
        """A blocking round trip to the owner, for proxy-token checks (cached per token)."""
        if self._sync is None:
            self._sync = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sync.connect(self._path)
            call(self._sync, ("sync",))
        return call(self._sync, message)

    # -- long-poll results and metrics

    def call_started(self, call_id: str) -> None:
        self.channel.send(("call_start", call_id))

    def call_finished(self, call_id: str, result: CallResult) -> None:
        self.channel.send(("call_finish", call_id, result))

    def watch(self, call_id: str) -> Running:
        running = self._watching.get(call_id)
        if running is None:
            running = self._watching[call_id] = Running()
            self.channel.send(("call_watch", call_id))
        return running

    def observe(self, route: tuple[str, str] | None, status: int, started: float) -> None:
        """A request finished here; `route` is its (app, function), None if it was never routed."""
        self._finished += 1
        if route is not None:
            self._observed.append((*route, status, started, time.monotonic()))
        if self._flush is None:  # reported at the end of this turn of the loop, with the others
            self._flush = asyncio.get_running_loop().call_soon(self._send_observed)

    def _send_observed(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        observed, self._observed = self._observed, []
        finished, self._finished = self._finished, 0
        if finished:
            self.channel.send(("observed", observed, finished))

    def _ping(self, number: int) -> None:
        """The owner's barrier: everything before it is applied here and reported there."""
        self._send_observed()
        self.channel.send(("pong", number))

    def close(self) -> None:
        self._send_observed()
        self.channel.close()
        if self._sync is not None:
            self._sync.close()

    # -- from the owner

    def _on_message(self, message: Message) -> None:
        kind = message[0]
        if kind == "lease" or kind == "refused" or kind == "failure":
            future = self._acquiring.pop(message[1], None)
            if future is not None and not future.done():
                future.set_result((kind, *message[2:]))
            elif kind == "lease":  # cancelled meanwhile: give it straight back
                self.release(message[2], False, False)
        elif kind == "call_result":
            _, call_id, result = message
            running = self._watching.pop(call_id, None)
            if running is None:
                return
            if result is None:
                result = error_result(404, f"cove: unknown or expired function call {call_id[:100]}")
            watchers, running.watchers = running.watchers, []
            for watcher in watchers:
                watcher(result)
        else:
            self.handlers[kind](*message[1:])

    def _on_lost(self) -> None:
        for future in self._acquiring.values():
            if not future.done():
                future.set_result(("refused", 503, "cove: gateway worker lost its owner; retry", ()))
        self._acquiring.clear()
        self.lost.set()


class RemoteLease:
    """A lease the owner holds on the worker's behalf."""

    __slots__ = ("_address", "_id", "_link")

    def __init__(self, link: OwnerLink, lease_id: int, address: str) -> None:
        self._link = link
        self._id = lease_id
        self._address = address

    @property
    def address(self) -> str:
        return self._address

    def release(self, *, broken: bool = False, timed_out: bool = False) -> None:
        self._link.release(self._id, broken, timed_out)

    async def failure_message(self) -> str:
        return await self._link.failure_message(self._id)

    def on_drain(self, callback: Callable[[], None]) -> None:
        """`Lease.on_drain`: the owner's pool says when this long-lived connection must end."""
        self._link.on_drain(self._id, callback)


class RemoteUpstream:
    """The owner's upstream for one host; also a `SessionUpstream` (the session goes along)."""

    __slots__ = ("_host", "_link")

    def __init__(self, link: OwnerLink, host: str) -> None:
        self._link = link
        self._host = host

    async def acquire(self, session: bytes | None = None) -> Lease:
        return await self._link.acquire(self._host, session)


class RemoteCallStore(CallStore):
    """This worker's 303 calls, each also registered with the owner; unknown ids are asked there."""

    __slots__ = ("_link",)

    def __init__(self, link: OwnerLink) -> None:
        super().__init__()
        self._link = link

    def start(self) -> str:
        call_id = super().start()
        self._link.call_started(call_id)
        return call_id

    def finish(self, call_id: str, result: CallResult) -> None:
        super().finish(call_id, result)
        self._link.call_finished(call_id, result)

    def lookup(self, call_id: str) -> CallResult | Running | None:
        found = super().lookup(call_id)
        return found if found is not None else self._link.watch(call_id)
