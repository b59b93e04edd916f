"""Shared pieces of the benchmarks: a private Cove server, a bare uvicorn, HTTP load and a table.

Scripts stop what they start in `finally`: a `Cove` owns a temporary COVE_HOME (gateway on a free
port, workspace `bench`) and runs `cove server stop` on `close()`; a `Uvicorn` owns one process.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The seed guide's endpoint; `{decorators}` adds e.g. `@cove.concurrent(max_inputs=100)`.
COVE_SQUARE = """
import time
import cove

app = cove.App("{name}")

@app.function({options})
{decorators}
@cove.fastapi_endpoint()
def square(x: int):
    {body}
    return {{"square": x**2}}
"""

#: The same function as a FastAPI app built the way Modal's (and Cove's) wrapper builds it.
BARE_SQUARE = """
import time
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

web_app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
web_app.add_middleware(
    CORSMiddleware, allow_origins=["*"], allow_credentials=True, allow_methods=["*"], allow_headers=["*"]
)

@web_app.get("/")
def square(x: int):
    {body}
    return {{"square": x**2}}
"""

URL_RE = re.compile(r"http://([a-z0-9-]+--[a-z0-9-]+\.localhost):(\d+)")


def cove_square(name: str, options: str = "", decorators: str = "", body: str = "pass") -> str:
    return COVE_SQUARE.format(name=name, options=options, decorators=decorators, body=body)


def bare_square(body: str = "pass") -> str:
    return BARE_SQUARE.format(body=body)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str, host: str | None = None, timeout: float = 30) -> tuple[int, bytes]:
    """One GET on a fresh connection to 127.0.0.1:port, with `host` as the Host header."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host} if host else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Cove:
    """A private Cove server: its own COVE_HOME and app directory, both removed on `close()`."""

    def __init__(self, **settings: str) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="cove-bench-"))
        self.work = Path(tempfile.mkdtemp(prefix="cove-bench-app-"))
        self.env = dict(os.environ, COVE_HOME=str(self.home), COVE_PORT="0", COVE_WORKSPACE="bench")
        self.env.update(settings)
        self.port = 0

    def cli(self, *args: str, timeout: float = 120) -> str:
        argv = [sys.executable, "-m", "cove.cli", *args]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            command = " ".join(args)
            raise RuntimeError(f"cove {command} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout

    def deploy(self, name: str, source: str) -> str:
        """Deploy `source` as app file `<name>.py`; return the first endpoint's host name."""
        app_file = self.work / f"{name.replace('-', '_')}.py"
        app_file.write_text(source)
        match = URL_RE.search(self.cli("deploy", str(app_file)))
        if match is None:
            raise RuntimeError(f"cove deploy {app_file} printed no URL")
        self.port = int(match.group(2))
        return match.group(1)

    def apps(self) -> list[dict[str, Any]]:
        return json.loads(self.cli("app", "list", "--json"))  # type: ignore[no-any-return]

    def containers(self, app: str | None = None) -> int:
        return sum(int(a["containers"]) for a in self.apps() if app is None or a["name"] == app)

    def wait_containers(self, count: int, app: str | None = None, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (have := self.containers(app)) != count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{have} containers after {timeout:.0f} s, expected {count}")
            time.sleep(0.2)

    def server_pid(self) -> int:
        return int(json.loads((self.home / "server.json").read_text())["pid"])

    def startup_s(self) -> list[float]:
        """Every container's `event=ready startup_s=...` from the server log, in order."""
        log = (self.home / "server.log").read_text()
        return [float(s) for s in re.findall(r"event=ready startup_s=([\d.]+)", log)]

    def close(self) -> None:
        stop = [sys.executable, "-m", "cove.cli", "server", "stop"]
        subprocess.run(stop, env=self.env, capture_output=True, timeout=120)
        shutil.rmtree(self.home, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)


class Uvicorn:
    """`uvicorn bare:web_app --loop uvloop --http httptools --no-access-log`, one worker, on TCP."""

    def __init__(self, source: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cove-bench-bare-"))
        (self.dir / "bare.py").write_text(source)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> float:
        """Start the process; return seconds until it answered its first request."""
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "bare:web_app", "--app-dir", str(self.dir)),
                *("--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"),
                *("--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"),
            ],
            start_new_session=True,
        )
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited with code {self.process.returncode}")
            try:
                if get(self.port, "/?x=1", timeout=timeout)[0] == 200:
                    return time.perf_counter() - started
            except OSError:
                time.sleep(0.005)
        raise RuntimeError(f"uvicorn did not answer within {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class Load:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx responses plus socket errors
    tool: str


def load(port: int, path: str, host: str, connections: int, duration_s: float, python: bool = False) -> Load:
    """Keep `connections` keep-alive connections busy for `duration_s`: wrk if installed, else Python."""
    if shutil.which("wrk") and not python:
        return wrk(port, path, host, connections, duration_s)
    return asyncio.run(_python_load(port, path, host, connections, duration_s))


def wrk(port: int, path: str, host: str, connections: int, duration_s: float, threads: int = 1) -> Load:
    """`wrk -t<threads> --latency` against the gateway (or any server) for `duration_s` seconds."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s", "--latency"]
    argv += ["-H", f"Host: {host}"]
    out = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=duration_s + 60
    ).stdout
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def percentile(p: str) -> float:
        match = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        if match is None:
            raise RuntimeError(f"wrk printed no {p}% latency:\n{out}")
        return float(match.group(1)) * scale[match.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{out}")
    counts = re.findall(r"(?:Non-2xx or 3xx responses:|connect|read|write|timeout) (\d+)", out)
    errors = sum(int(n) for n in counts)
    return Load(float(rps.group(1)), percentile("50"), percentile("99"), errors, "wrk")


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response with a Content-Length body; return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(head[9:12])


async def _python_load(port: int, path: str, host: str, connections: int, duration_s: float) -> Load:
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration_s

    async def client() -> None:
        nonlocal errors
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            errors += 1
            return
        try:
            while (start := time.perf_counter()) < deadline:
                writer.write(request)
                status = await read_response(reader)
                latencies.append(time.perf_counter() - start)
                errors += not 200 <= status < 300
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(connections))), duration_s + 30)
    elapsed = time.perf_counter() - started
    if not latencies:
        raise RuntimeError(f"no response from 127.0.0.1:{port} ({errors} errors)")
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return Load(len(latencies) / elapsed, q[49] * 1000, q[98] * 1000, errors, "python asyncio client")


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose `--help` is the script's docstring, verbatim."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def pct(values: list[float], p: int) -> float:
    """The p-th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine() -> str:
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    model = cpu.group(1) if cpu else platform.processor()
    cores = len(os.sched_getaffinity(0))
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    return f"nproc={cores}, {mem_gb:.0f} GiB RAM, {model}, Python {platform.python_version()}, loadavg {load}"
