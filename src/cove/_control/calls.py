"""Function calls: each `.remote()`/`.spawn()` input run as an owned task, and its result kept for `.get()`.

A call takes a slot of its function's pool (cold-starting a container if need be, exactly as a web
request does), POSTs the pickled input to the container's `/__cove__/call`, and stores the pickled
result bytes. The server never unpickles user data: call and input ids travel in headers, and its own
failures (timeout, container exit, startup failure) are encoded by `cove._payload`.

Results are kept in memory, at most `max_calls` of them and for `ttl_s` seconds after they finish;
`close()` cancels running calls (their waiters get a "server stopped" error) and closes connections.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx

from cove._control.apps import AppRegistry
from cove._control.records import AppKind
from cove._gateway.connpool import TCP_SCHEME
from cove._gateway.upstream import UpstreamError
from cove._payload import (
    CALL_ID_HEADER,
    CALL_PATH,
    CONTENT_TYPE,
    FRAME_ERROR,
    FRAME_ITEM,
    INPUT_ID_HEADER,
    FrameReader,
    encode_frame,
    encode_platform_error,
)
from cove._runtime.pool import FunctionPool
from cove._spec import FunctionSpec
from cove.exception import (
    ExecutionError,
    InvalidError,
    NotFoundError,
    OutputExpiredError,
    ResourceExhaustedError,
)

log = logging.getLogger("cove.calls")

DEFAULT_MAX_CALLS = 10_000
DEFAULT_TTL_S = 24 * 3600.0
#: How many ids of dropped results are remembered, to answer "expired" rather than "not found".
_EXPIRED_MEMORY = 20_000
#: Connections to containers are pooled per socket; idle ones beyond this many are closed.
_MAX_CLIENTS = 256


def new_call_id() -> str:
    return "fc-" + secrets.token_hex(12)


def new_input_id() -> str:
    return "in-" + secrets.token_hex(12)


@dataclass(eq=False)
class _Call:
    id: str
    app_name: str
    tag: str
    result: asyncio.Future[bytes]
    finished_at: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass(eq=False)
class _ContainerClient:
    client: httpx.AsyncClient
    in_flight: int = 0


class CallRegistry:
    """Runs function calls on the pools of deployed apps and keeps their results for a while."""

    def __init__(
        self,
        registry: AppRegistry,
        *,
        max_calls: int = DEFAULT_MAX_CALLS,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._max_calls = max_calls
        self._ttl_s = ttl_s
        self._clock = clock
        self._calls: collections.OrderedDict[str, _Call] = collections.OrderedDict()
        self._expired: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._clients: collections.OrderedDict[str, _ContainerClient] = collections.OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()
        self._next_sweep = 0.0
        self._closed = False

    def _pool(self, app_name: str, tag: str, kind: AppKind, how: str) -> FunctionPool:
        if self._closed:
            raise InvalidError("The Cove server is shutting down; call again once it is back.")
        record, pool = self._registry.function_pool(app_name, tag, kind)
        if pool.spec.web is not None:
            endpoints = record.current.endpoints if record.current else ()
            url = next((e.url for e in endpoints if e.tag == tag), None)
            raise InvalidError(
                f"A webhook function cannot be invoked for remote execution with .{how}. "
                f"Invoke {tag!r} via its web url {url!r} instead."
            )
        if pool.spec.is_generator and how != "remote_gen":
            raise InvalidError(
                f"A generator function cannot be called with `.{how}(...)`: {tag!r} yields its results. "
                "Use `.remote_gen(...)` instead."
            )
        if how == "remote_gen" and not pool.spec.is_generator:
            raise InvalidError(
                f"A non-generator function cannot be called with `.remote_gen(...)`: {tag!r} returns its "
                "result. Use `.remote(...)` instead."
            )
        return pool

    def spawn(self, app_name: str, tag: str, payload: bytes, kind: AppKind = "deployed") -> str:
        """Start a call of function `tag` of app `app_name` (deployed, or the running ephemeral one
        with `kind="ephemeral"`); return its `fc-` id."""
        pool = self._pool(app_name, tag, kind, "remote")
        self._evict()
        call = _Call(new_call_id(), app_name, tag, asyncio.get_running_loop().create_future())
        self._calls[call.id] = call
        call.task = asyncio.ensure_future(self._run(call, pool, payload))
        return call.id

    def stream(
        self, app_name: str, tag: str, payload: bytes, kind: AppKind = "deployed"
    ) -> AsyncIterator[bytes]:
        """Run one input of generator function `tag`, relaying its frames as the container sends them.

        Checks are made now (so a bad call is an error answer, not a broken stream); the iterator
        takes a slot of the pool, streams, and ends with a frame of the server's own if the container
        failed, timed out or stopped before its last frame.
        """
        pool = self._pool(app_name, tag, kind, "remote_gen")
        return self._stream(new_call_id(), app_name, pool, payload)

    async def _stream(
        self, call_id: str, app_name: str, pool: FunctionPool, payload: bytes
    ) -> AsyncIterator[bytes]:
        spec = pool.spec
        name = f"Function {spec.tag!r} of app {app_name!r}"
        try:
            lease = await pool.acquire()
        except UpstreamError as exc:
            yield encode_frame(FRAME_ERROR, _refused(name, call_id, exc))
            return
        entry = self._client_for(lease.address)
        entry.in_flight += 1
        broken = False
        ended = False
        reader = FrameReader()
        headers = {"content-type": CONTENT_TYPE, CALL_ID_HEADER: call_id, INPUT_ID_HEADER: new_input_id()}
        try:
            async with asyncio.timeout(spec.timeout_s):
                async with entry.client.stream(
                    "POST", CALL_PATH, content=payload, headers=headers
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        yield encode_frame(FRAME_ERROR, self._check_answer(name, call_id, spec, response))
                        return
                    async for chunk in response.aiter_raw():
                        for kind, _ in reader.feed(chunk):
                            ended = kind != FRAME_ITEM
                        yield chunk
            if not ended and reader.pending == 0:
                yield encode_frame(
                    FRAME_ERROR,
                    encode_platform_error(
                        "ExecutionError",
                        f"{name} ended its stream of results before its last item ({call_id}). "
                        f"See `cove app logs {app_name}`.",
                    ),
                )
        except TimeoutError:
            broken = True
            log.warning("call=%s function=%s event=timeout timeout_s=%g", call_id, spec.tag, spec.timeout_s)
            if not ended and reader.pending == 0:
                yield encode_frame(
                    FRAME_ERROR,
                    encode_platform_error(
                        "FunctionTimeoutError",
                        f"{name} timed out after {spec.timeout_s:g} s ({call_id}). "
                        "Give it longer with @app.function(timeout=...).",
                    ),
                )
        except httpx.TransportError as exc:
            broken = True
            detail = (await lease.failure_message()).strip().removeprefix("cove: ")
            if not ended and reader.pending == 0:
                yield encode_frame(
                    FRAME_ERROR,
                    encode_platform_error(
                        "ExecutionError",
                        f"{name} failed: its container exited while running {call_id} ({detail}; {exc!r}). "
                        f"See `cove app logs {app_name}`.",
                    ),
                )
        finally:
            entry.in_flight -= 1
            if broken or not ended:
                self._drop_client(lease.address)
            lease.release(broken=broken or not ended)

    async def result(self, call_id: str, timeout_s: float) -> bytes | None:
        """The result bytes of a call, waiting at most `timeout_s`; None if it is still running."""
        call = self._calls.get(call_id)
        if call is None:
            if call_id in self._expired:
                raise OutputExpiredError(
                    f"The result of function call {call_id} has expired: results are kept for "
                    f"{self._ttl_s / 3600:g} h and at most {self._max_calls} calls."
                )
            raise NotFoundError(
                f"Function call {call_id!r} not found on this server. Use the object_id of a "
                "FunctionCall spawned on this server (ids start with 'fc-')."
            )
        if not call.result.done() and timeout_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(call.result), timeout=timeout_s)
        return call.result.result() if call.result.done() else None

    async def close(self) -> None:
        """Cancel running calls (their results become errors), then close container connections."""
        self._closed = True
        tasks = [c.task for c in self._calls.values() if c.task is not None and not c.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for call in self._calls.values():
            if not call.result.done():
                call.result.set_result(
                    encode_platform_error(
                        "ExecutionError", "The Cove server stopped while the call was running; call again."
                    )
                )
        clients, self._clients = list(self._clients.values()), collections.OrderedDict()
        await asyncio.gather(*(c.client.aclose() for c in clients), return_exceptions=True)
        await asyncio.gather(*self._closing, return_exceptions=True)

    # -- running one call ----------------------------------------------------------------------

    async def _run(self, call: _Call, pool: FunctionPool, payload: bytes) -> None:
        try:
            outcome = await self._execute(call, pool, payload)
        except asyncio.CancelledError:
            outcome = encode_platform_error(
                "ExecutionError", f"Function call {call.id} was cancelled: the Cove server is stopping."
            )
            self._finish(call, outcome)
            raise
        except Exception as exc:  # a bug of ours: the caller still gets an answer
            log.exception("call=%s function=%s event=internal_error", call.id, call.tag)
            outcome = encode_platform_error("ExecutionError", f"Cove failed to run {call.id}: {exc!r}")
        self._finish(call, outcome)

    def _finish(self, call: _Call, outcome: bytes) -> None:
        if not call.result.done():
            call.result.set_result(outcome)
            call.finished_at = self._clock()

    async def _execute(self, call: _Call, pool: FunctionPool, payload: bytes) -> bytes:
        spec = pool.spec
        name = f"Function {spec.tag!r} of app {call.app_name!r}"
        try:
            lease = await pool.acquire()
        except UpstreamError as exc:
            return _refused(name, call.id, exc)
        address = lease.address
        broken = timed_out = False
        entry = self._client_for(address)
        entry.in_flight += 1
        try:
            response = await asyncio.wait_for(
                entry.client.post(
                    CALL_PATH,
                    content=payload,
                    headers={
                        "content-type": CONTENT_TYPE,
                        CALL_ID_HEADER: call.id,
                        INPUT_ID_HEADER: new_input_id(),
                    },
                ),
                timeout=spec.timeout_s,
            )
        except TimeoutError:
            # The input may still be running: releasing with timed_out ends the container (as
            # Modal does; under @concurrent its other inputs fail too) and it is replaced.
            broken = timed_out = True
            log.warning("call=%s function=%s event=timeout timeout_s=%g", call.id, spec.tag, spec.timeout_s)
            return encode_platform_error(
                "FunctionTimeoutError",
                f"{name} timed out after {spec.timeout_s:g} s ({call.id}). "
                "Give it longer with @app.function(timeout=...).",
            )
        except httpx.TransportError as exc:
            broken = True
            detail = (await lease.failure_message()).strip().removeprefix("cove: ")
            log.warning("call=%s function=%s event=container_failed detail=%r", call.id, spec.tag, detail)
            return encode_platform_error(
                "ExecutionError",
                f"{name} failed: its container exited while running {call.id} ({detail}; {exc!r}). "
                f"See `cove app logs {call.app_name}`.",
            )
        finally:
            entry.in_flight -= 1
            if broken:
                self._drop_client(address)
            lease.release(broken=broken, timed_out=timed_out)
        return self._check_answer(name, call.id, spec, response)

    @staticmethod
    def _check_answer(name: str, call_id: str, spec: FunctionSpec, response: httpx.Response) -> bytes:
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        if response.status_code == 200 and content_type == CONTENT_TYPE:
            return response.content
        return encode_platform_error(
            "ExecutionError",
            f"{name} answered {call_id} with HTTP {response.status_code} ({content_type or 'no type'}): "
            f"{response.text[:300]!r}. Is {spec.tag!r} a non-web function of the deployed version?",
        )

    # -- bookkeeping ---------------------------------------------------------------------------

    def _client_for(self, address: str) -> _ContainerClient:
        entry = self._clients.get(address)
        if entry is None:
            # A local container listens on a unix socket; a Ray container on `tcp://HOST:PORT`.
            tcp = address.removeprefix(TCP_SCHEME) if address.startswith(TCP_SCHEME) else None
            client = httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport() if tcp else httpx.AsyncHTTPTransport(uds=address),
                base_url=f"http://{tcp}" if tcp else "http://container",
                # The function's own timeout bounds a call (asyncio.wait_for above), not httpx.
                timeout=httpx.Timeout(None, connect=30.0),
            )
            entry = self._clients[address] = _ContainerClient(client)
            self._prune_clients()
        else:
            self._clients.move_to_end(address)
        return entry

    def _drop_client(self, address: str) -> None:
        entry = self._clients.get(address)
        if entry is not None and entry.in_flight == 0:
            del self._clients[address]
            self._close_later(entry.client)

    def _prune_clients(self) -> None:
        idle = [a for a, e in self._clients.items() if e.in_flight == 0]
        for address in idle[: max(0, len(self._clients) - _MAX_CLIENTS)]:
            self._close_later(self._clients.pop(address).client)

    def _close_later(self, client: httpx.AsyncClient) -> None:
        task = asyncio.ensure_future(client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _evict(self) -> None:
        """Drop results past their TTL (swept once a minute), then the oldest finished beyond `max_calls`."""
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + 60.0
            for call_id, call in list(self._calls.items()):
                if call.finished_at is not None and now - call.finished_at > self._ttl_s:
                    self._drop_result(call_id)
        if len(self._calls) < self._max_calls:
            return
        for call_id, call in list(self._calls.items()):  # oldest first
            if len(self._calls) < self._max_calls:
                break
            if call.finished_at is not None:
                self._drop_result(call_id)

    def _drop_result(self, call_id: str) -> None:
        del self._calls[call_id]
        self._remember_expired(call_id)

    def _remember_expired(self, call_id: str) -> None:
        self._expired[call_id] = None
        while len(self._expired) > _EXPIRED_MEMORY:
            self._expired.popitem(last=False)


def _refused(name: str, call_id: str, exc: UpstreamError) -> bytes:
    """The result of a call its pool refused: a full queue is a limit reached, else it could not run."""
    error = ResourceExhaustedError if exc.kind == "queue_full" else ExecutionError
    reason = exc.message.strip().removeprefix("cove: ")
    return encode_platform_error(error.__name__, f"{name} could not run {call_id}: {reason}")


__all__ = ["CallRegistry", "new_call_id"]
