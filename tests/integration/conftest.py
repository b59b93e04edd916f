"""Fixtures that start the real thing: the `cove` CLI in subprocesses, the server, its workers.

Every process a test starts is stopped by the fixture that started it; as a last resort the
`cove_env` fixture kills any process whose environment names the test's private COVE_HOME.

Which server a test gets: `shared_cove` / `shared_serve` (one server per module) unless the test
needs its own, then `cove_env` / `serve`. A server start and stop is the largest fixed cost of an
integration test. Under pytest-xdist use `--dist loadfile` (one file per worker at a time), so a
module's shared server is started once.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from cove._probe import control_socket_alive

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
URL_RE = re.compile(r"(http://[a-z0-9-]+--[a-z0-9-]+\.localhost:\d+)")


def cove_command() -> list[str]:
    return [sys.executable, "-m", "cove.cli"]


def _processes_with_env(name: str, value: str) -> list[int]:
    needle = f"{name}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as file:
                if needle in file.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


class CoveEnv:
    """A private COVE_HOME with its own server, reachable on a free port."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = dict(os.environ)
        self.env.update(
            COVE_HOME=str(home),
            COVE_PORT="0",
            COVE_WORKSPACE="test",
            PYTHONUNBUFFERED="1",
            COLUMNS="200",
        )
        self.env.pop("COVE_DEV_SUFFIX", None)

    def run(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*cove_command(), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"cove {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def serve(self, *args: str) -> ServeProcess:
        return ServeProcess(self, list(args))


class ServeProcess:
    """A running `cove serve`, its output collected line by line."""

    def __init__(self, cove: CoveEnv, args: list[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [*cove_command(), "serve", *args],
            env=cove.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line.rstrip("\n"))
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """Block until a line of output matches `pattern`; fail with all output if it never does."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matched {pattern!r} in {timeout}s; output:\n" + self.text())
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"cove serve exited before {pattern!r}; output:\n" + self.text())
            match = regex.search(line)
            if match:
                return match

    def urls(self, count: int, timeout: float = 90) -> list[str]:
        """The first `count` endpoint URLs `cove serve` printed (each on its own line)."""
        found = []
        while len(found) < count:
            found.append(self.wait_for(URL_RE.pattern, timeout).group(1))
        return found

    def text(self) -> str:
        return "\n".join(self.output)

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C, as a user would; return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._reader.join(timeout=5)

    def kill(self) -> None:
        """Kill whatever is left of the process group and release the pipe."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def host_request(method: str, url: str, **kwargs: object) -> httpx.Response:
    """Send a request to a `*.localhost` URL: to 127.0.0.1 with the URL's host in the Host header.

    curl and browsers resolve `*.localhost` to loopback themselves (RFC 6761); Python's resolver
    here does not, so the test does what they do.
    """
    parts = urlsplit(url)
    target = f"http://127.0.0.1:{parts.port}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
    headers = dict(kwargs.pop("headers", None) or {})  # type: ignore[call-overload]
    headers["Host"] = parts.netloc
    timeout = kwargs.pop("timeout", 60.0)
    return httpx.request(method, target, headers=headers, timeout=timeout, **kwargs)  # type: ignore[arg-type]


def _wait_gone(pid: int, timeout_s: float) -> None:
    """Until `pid` has exited (or is a zombie nobody reaped yet), at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as file:
                if file.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    return
        except (OSError, IndexError):
            return
        time.sleep(0.02)


def _stop_server(home: Path) -> None:
    """What `cove server stop` does, from this process: ask the server to stop, wait for it to exit.

    Done here rather than through the CLI because every test's teardown pays for it: a CLI process
    costs a Python start and the CLI's imports, and nothing is asked at all when no server runs.
    """
    socket_path = home / "server.sock"
    if not control_socket_alive(socket_path):
        return
    try:
        pid: int | None = int(json.loads((home / "server.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        pid = None
    transport = httpx.HTTPTransport(uds=str(socket_path))
    with (
        contextlib.suppress(httpx.TransportError),
        httpx.Client(transport=transport, base_url="http://cove", timeout=60) as client,
    ):
        client.post("/v1/server/stop")
    if pid is not None:
        _wait_gone(pid, 60)


@contextlib.contextmanager
def private_cove() -> Iterator[CoveEnv]:
    """A fresh COVE_HOME (short path: unix sockets live under it) and, at the end, no process left."""
    home = Path(tempfile.mkdtemp(prefix="cove-"))
    env = CoveEnv(home)
    try:
        yield env
    finally:
        with contextlib.suppress(Exception):
            _stop_server(home)
        for pid in _processes_with_env("COVE_HOME", str(home)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def cove_env() -> Iterator[CoveEnv]:
    """A COVE_HOME and server of this test's own: for tests that change the server's environment or
    settings, restart, kill or corrupt it, or read state (app lists, logs) that others would add to."""
    with private_cove() as env:
        yield env


@pytest.fixture(scope="module")
def shared_cove() -> Iterator[CoveEnv]:
    """One COVE_HOME and server for every test of a module that uses it (a server start and stop
    per module, not per test). A test using it must leave it as it found it: its own app names,
    every app it serves or deploys stopped, no change to `shared_cove.env` (copy it instead)."""
    with private_cove() as env:
        yield env


class Serve:
    """Start `cove serve ARGS...` against one COVE_HOME; `close()` interrupts (then kills) each."""

    def __init__(self, cove: CoveEnv) -> None:
        self.cove = cove
        self.started: list[ServeProcess] = []

    def __call__(self, *args: str) -> ServeProcess:
        process = self.cove.serve(*args)
        self.started.append(process)
        return process

    def close(self) -> None:
        for process in self.started:
            with contextlib.suppress(Exception):
                process.interrupt(timeout=30)
            process.kill()


@pytest.fixture
def serve(cove_env: CoveEnv) -> Iterator[Serve]:
    """Start `cove serve ARGS...` on this test's own server; every process is stopped at the end."""
    start = Serve(cove_env)
    try:
        yield start
    finally:
        start.close()


@pytest.fixture
def shared_serve(shared_cove: CoveEnv) -> Iterator[Serve]:
    """Start `cove serve ARGS...` on the module's shared server; each is interrupted at the end of
    the test, which stops its ephemeral app (so the next test finds the server as it was)."""
    start = Serve(shared_cove)
    try:
        yield start
    finally:
        start.close()
