"""The CLI's connection to the control plane, and starting a background server when none runs."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx

from cove import exception
from cove._error_body import decode_error
from cove._probe import control_socket_alive
from cove.config import Settings, env

_SERVER_START_TIMEOUT_S = 30.0


class ControlClient:
    """JSON over HTTP on the server's unix socket, or on COVE_SERVER_URL with COVE_TOKEN;
    errors come back as Cove exceptions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.remote_url = env("COVE_SERVER_URL")
        self._http = self._client(timeout=httpx.Timeout(120.0))

    def _client(self, timeout: httpx.Timeout) -> httpx.Client:
        if self.remote_url:
            token = env("COVE_TOKEN") or ""
            return httpx.Client(
                base_url=self.remote_url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
            )
        transport = httpx.HTTPTransport(uds=str(self.settings.control_socket))
        return httpx.Client(transport=transport, base_url="http://cove", timeout=timeout)

    @property
    def where(self) -> str:
        return self.remote_url or str(self.settings.control_socket)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise exception.ConnectionError(
                f"Could not reach the Cove server at {self.where}: {exc}. "
                "Is it running? Start it with `cove server`."
            ) from exc
        return _decode(response)

    def stream_lines(self, method: str, path: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Yield one JSON object per line of a streaming response until the server ends it."""
        try:
            with (
                httpx.Client(
                    transport=httpx.HTTPTransport(uds=str(self.settings.control_socket)),
                    base_url="http://cove",
                    timeout=httpx.Timeout(10.0, read=None),
                ) as client,
                client.stream(method, path, **kwargs) as response,
            ):
                if response.status_code >= 400:
                    response.read()
                    _decode(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise exception.ConnectionError(
                f"Lost the connection to the Cove server at {self.where}: {exc}. "
                "Is it running? Start it with `cove server`."
            ) from exc

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/v1/health")  # type: ignore[no-any-return]


def _decode(response: httpx.Response) -> Any:
    """The JSON body of a successful answer; an error answer raised as its `cove.exception` class."""
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", "")
        raise decode_error(response.status_code, response.content, content_type)
    try:
        return response.json()
    except ValueError:
        return {"message": response.text}


def ensure_server(settings: Settings, *, on_start: Any = None) -> ControlClient:
    """Connect to the server for `settings.home`, starting one in the background if none runs
    (a remote server, COVE_SERVER_URL, is never started from here)."""
    if not env("COVE_SERVER_URL") and not control_socket_alive(settings.control_socket):
        if on_start is not None:
            on_start()
        start_background_server(settings)
    return ControlClient(settings)


def start_background_server(settings: Settings) -> int:
    """Start `cove server` detached from this terminal; return once it serves (or raise)."""
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = settings.home / "server.log"
    read_fd, write_fd = os.pipe()
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "cove.cli", "server", "--ready-fd", str(write_fd)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            pass_fds=(write_fd,),
            start_new_session=True,
            close_fds=True,
        )
    os.close(write_fd)
    deadline = time.monotonic() + _SERVER_START_TIMEOUT_S
    data = b""
    try:
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                process.kill()
                raise exception.ConnectionError(
                    f"The Cove server did not start within {_SERVER_START_TIMEOUT_S:g} s; see {log_path}."
                )
            ready, _, _ = select.select([read_fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(read_fd, 4096)
            if not chunk:  # the server exited before it was ready
                code = process.wait()
                tail = _tail(log_path)
                last = tail.rsplit("\n", 1)[-1]
                if last.startswith("Error: "):  # the server said why in one line: say just that
                    raise exception.ConnectionError(f"The Cove server could not start: {last[7:]}")
                raise exception.ConnectionError(
                    f"The Cove server exited during startup (code {code}). Last lines of {log_path}:\n{tail}"
                )
            data += chunk
    finally:
        os.close(read_fd)
    return process.pid


def _tail(path: os.PathLike[str] | str, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return "".join(file.readlines()[-lines:]).rstrip()
    except OSError:
        return ""
