"""Fixtures that start the real thing: the `cove` CLI in subprocesses, the server, its workers.

Every process a test starts is stopped by the fixture that started it; as a last resort the
`cove_env` fixture kills any process whose environment names the test's private COVE_HOME.
"""

from __future__ import annotations

import contextlib
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


@pytest.fixture
def cove_env() -> Iterator[CoveEnv]:
    """A fresh COVE_HOME (short path: unix sockets live under it) and, at the end, no process left."""
    home = Path(tempfile.mkdtemp(prefix="cove-"))
    env = CoveEnv(home)
    try:
        yield env
    finally:
        with contextlib.suppress(Exception):
            env.run("server", "stop", check=False, timeout=60)
        for pid in _processes_with_env("COVE_HOME", str(home)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def serve(cove_env: CoveEnv) -> Iterator[object]:
    """Start `cove serve ARGS...`; every process started is interrupted (then killed) at the end."""
    started: list[ServeProcess] = []

    def start(*args: str) -> ServeProcess:
        process = cove_env.serve(*args)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            with contextlib.suppress(Exception):
                process.interrupt(timeout=30)
            process.kill()
