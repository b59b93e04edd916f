"""The SDK's connection to the control plane: blocking and async HTTP over the unix socket or a URL.

Where the control plane is, in this order:
1. inside a container, `COVE_CONTAINER_API`: the scoped socket of the container's app, which serves
   function calls and Dicts/Queues/Volumes only (`cove._control.container_api`);
2. `COVE_SERVER_URL` (e.g. `http://10.0.0.5:9000`), sending `Authorization: Bearer $COVE_TOKEN`;
3. the unix socket of the server of `COVE_HOME` (the socket's file mode is the auth).
It never starts a server: a missing server is an error that says how to start one.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from cove import config, exception
from cove._error_body import decode_error
from cove.config import Settings

#: How long to wait for the server to accept a connection.
_CONNECT_TIMEOUT_S = 10.0
#: Read timeout of requests that do not long-poll.
_READ_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Reply:
    """A successful answer of the control plane."""

    status: int
    content_type: str
    content: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        return json.loads(self.content)


class ControlPlane:
    """Where the control plane is, and one blocking `httpx.Client` to it (shared by threads).

    Async requests use a short-lived `httpx.AsyncClient` each: an async client belongs to one event
    loop, and every `asyncio.run` makes a new one.
    """

    def __init__(
        self, *, socket_path: str | None = None, url: str | None = None, token: str | None = None
    ) -> None:
        if (socket_path is None) == (url is None):
            raise ValueError("give exactly one of socket_path and url")
        self.socket_path = socket_path
        self.url = url.rstrip("/") if url else None
        self._headers = {"Authorization": f"Bearer {token}"} if (url and token) else {}
        self._lock = threading.Lock()
        self._sync: httpx.Client | None = None

    @classmethod
    def from_env(cls) -> ControlPlane:
        """The container's scoped socket, else `COVE_SERVER_URL` + `COVE_TOKEN`, else the unix socket
        of `COVE_HOME` (see the module docstring)."""
        container_api = config.env("COVE_CONTAINER_API")
        if container_api:
            return cls(socket_path=container_api)
        if config.env("COVE_IS_REMOTE") == "1" and not config.env("COVE_SERVER_URL"):
            raise exception.ConnectionError(
                "This container has no way to reach the Cove control plane: calling functions from "
                "inside a container needs the local backend (on the Ray backend, see docs/ray.md), or "
                "COVE_SERVER_URL and COVE_TOKEN set as a secret of the function."
            )
        url = config.env("COVE_SERVER_URL")
        if url:
            if not url.startswith(("http://", "https://")):
                raise exception.InvalidError(
                    f"COVE_SERVER_URL must be an http:// or https:// URL, got {url!r} "
                    "(e.g. COVE_SERVER_URL=http://127.0.0.1:9000)."
                )
            return cls(url=url, token=config.env("COVE_TOKEN"))
        return cls(socket_path=str(Settings.from_env().control_socket))

    @property
    def where(self) -> str:
        return self.url or f"unix socket {self.socket_path}"

    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "base_url": self.url or "http://cove",
            "headers": self._headers,
            "timeout": httpx.Timeout(_READ_TIMEOUT_S, connect=_CONNECT_TIMEOUT_S),
        }

    def _sync_client(self) -> httpx.Client:
        with self._lock:
            if self._sync is None:
                transport = httpx.HTTPTransport(uds=self.socket_path) if self.socket_path else None
                self._sync = httpx.Client(transport=transport, **self._client_kwargs())
            return self._sync

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
        content_type: str | None = None,
        read_timeout_s: float = _READ_TIMEOUT_S,
    ) -> Reply:
        """Send one request and block for the answer; errors come back as Cove exceptions."""
        self._check_socket()
        headers = {"Content-Type": content_type} if content_type else None
        timeout = httpx.Timeout(read_timeout_s, connect=_CONNECT_TIMEOUT_S)
        try:
            response = self._sync_client().request(
                method, path, params=params, content=content, headers=headers, timeout=timeout
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        return _reply(response)

    async def arequest(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
        content_type: str | None = None,
        read_timeout_s: float = _READ_TIMEOUT_S,
    ) -> Reply:
        """The async twin of `request`."""
        self._check_socket()
        headers = {"Content-Type": content_type} if content_type else None
        timeout = httpx.Timeout(read_timeout_s, connect=_CONNECT_TIMEOUT_S)
        transport = httpx.AsyncHTTPTransport(uds=self.socket_path) if self.socket_path else None
        try:
            async with httpx.AsyncClient(transport=transport, **self._client_kwargs()) as client:
                response = await client.request(
                    method, path, params=params, content=content, headers=headers, timeout=timeout
                )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        return _reply(response)

    @contextlib.contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
        content_type: str | None = None,
    ) -> Iterator[Iterator[bytes]]:
        """Send one request and iterate over the body of the answer as it arrives (no read timeout:
        a generator may take its time between items; its function's timeout bounds it)."""
        self._check_socket()
        headers = {"Content-Type": content_type} if content_type else None
        timeout = httpx.Timeout(None, connect=_CONNECT_TIMEOUT_S)
        try:
            with self._sync_client().stream(
                method, path, params=params, content=content, headers=headers, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    _reply(response)
                yield _translated(response.iter_raw(), self)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    @contextlib.asynccontextmanager
    async def astream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
        content_type: str | None = None,
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """The async twin of `stream`."""
        self._check_socket()
        headers = {"Content-Type": content_type} if content_type else None
        timeout = httpx.Timeout(None, connect=_CONNECT_TIMEOUT_S)
        transport = httpx.AsyncHTTPTransport(uds=self.socket_path) if self.socket_path else None
        try:
            async with (
                httpx.AsyncClient(transport=transport, **self._client_kwargs()) as client,
                client.stream(
                    method, path, params=params, content=content, headers=headers, timeout=timeout
                ) as response,
            ):
                if response.status_code >= 400:
                    await response.aread()
                    _reply(response)
                yield response.aiter_raw()
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def _check_socket(self) -> None:
        # Also spares httpcore's failed unix connect, which leaves its socket open.
        if self.socket_path is not None and not os.path.exists(self.socket_path):
            raise self._unreachable(FileNotFoundError(f"no server socket at {self.socket_path}"))

    def close(self) -> None:
        with self._lock:
            client, self._sync = self._sync, None
        if client is not None:
            client.close()

    def _unreachable(self, exc: Exception) -> exception.ConnectionError:
        if self.socket_path is not None and self.socket_path == config.env("COVE_CONTAINER_API"):
            return exception.ConnectionError(
                f"This container could not reach the Cove control plane at {self.socket_path} "
                f"({type(exc).__name__}: {exc}): the server is stopping or its app was stopped."
            )
        if self.url:
            return exception.ConnectionError(
                f"Could not reach the Cove server at {self.url} ({type(exc).__name__}: {exc}). "
                "Check COVE_SERVER_URL and that the server listens there, or unset it to use the "
                "local server of COVE_HOME."
            )
        return exception.ConnectionError(
            f"Could not reach the Cove server at {self.where} ({type(exc).__name__}: {exc}). "
            "Start it with `cove server` (or `cove deploy FILE`, which starts one), or set "
            "COVE_SERVER_URL and COVE_TOKEN to use a remote server."
        )


def _translated(chunks: Iterator[bytes], control: ControlPlane) -> Iterator[bytes]:
    try:
        yield from chunks
    except httpx.TransportError as exc:
        raise control._unreachable(exc) from exc


def _reply(response: httpx.Response) -> Reply:
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    if response.status_code >= 400:
        raise decode_error(response.status_code, response.content, content_type)
    return Reply(response.status_code, content_type, response.content, response.headers)


_default: ControlPlane | None = None
_default_pid = 0
_default_lock = threading.Lock()


def control_plane() -> ControlPlane:
    """The process-wide connection, made on first use (after a fork, a new one)."""
    global _default, _default_pid
    with _default_lock:
        if _default is None or _default_pid != os.getpid():
            _default = ControlPlane.from_env()
            _default_pid = os.getpid()
        return _default


@atexit.register
def _close_default() -> None:
    if _default is not None and _default_pid == os.getpid():
        _default.close()


__all__ = ["ControlPlane", "Reply", "control_plane"]
