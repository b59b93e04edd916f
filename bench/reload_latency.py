"""Live reload: time from saving an edit under `cove serve` to the URL serving the new code.

    .venv/bin/python bench/reload_latency.py [--runs 10]

Starts a private server (its own COVE_HOME, a free port), serves a one-function app, then edits it
`--runs` times; each time it polls the URL every 5 ms until the new answer appears. The baseline,
measured in the same run, is what a user without live reload pays: stopping `cove serve` and starting
it again until the URL answers.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

APP = """
import cove

app = cove.App("bench-reload")


@app.function()
@cove.fastapi_endpoint()
def version():
    return {"version": VERSION}


VERSION = 0
"""

URL_RE = re.compile(r"(http://[a-z0-9-]+--[a-z0-9-]+\.localhost:(\d+))")


class Serve:
    def __init__(self, env: dict[str, str], app_file: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cove.cli", "serve", str(app_file)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def url(self) -> tuple[str, int]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            match = URL_RE.search(self.lines.get(timeout=60))
            if match:
                return match.group(1), int(match.group(2))
        raise RuntimeError("no URL printed")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=60)


def wait_for(client: httpx.Client, port: int, host: str, expected: int, timeout: float = 30) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            response = client.get(f"http://127.0.0.1:{port}/", headers={"Host": host})
            if response.status_code == 200 and response.json() == {"version": expected}:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"version {expected} never served")


def write(path: Path, version: int) -> None:
    tmp = path.with_name(".tmp-" + path.name)
    tmp.write_text(APP.replace("VERSION = 0", f"VERSION = {version}"))
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="cove-bench-"))
    work = Path(tempfile.mkdtemp(prefix="cove-bench-app-"))
    app_file = work / "bench_reload.py"
    write(app_file, 0)
    env = dict(os.environ, COVE_HOME=str(home), COVE_PORT="0", COVE_WORKSPACE="bench")
    reload_s: list[float] = []
    restart_s: list[float] = []
    try:
        serve = Serve(env, app_file)
        url, port = serve.url()
        host = url.split("//")[1]
        with httpx.Client(timeout=30) as client:
            wait_for(client, port, host, 0)
            for run in range(1, args.runs + 1):
                write(app_file, run)
                reload_s.append(wait_for(client, port, host, run))
                time.sleep(0.3)  # let the previous version drain before the next edit
            serve.stop()
            for run in range(args.runs + 1, args.runs + 1 + max(3, args.runs // 3)):
                write(app_file, run)
                started = time.perf_counter()
                serve = Serve(env, app_file)
                serve.url()
                wait_for(client, port, host, run)
                restart_s.append(time.perf_counter() - started)
                serve.stop()
    finally:
        subprocess.run([sys.executable, "-m", "cove.cli", "server", "stop"], env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    def row(name: str, values: list[float]) -> str:
        p50 = statistics.median(values) * 1000
        worst = max(values) * 1000
        return f"| {name:<38} | {len(values):>4} | {p50:>8.0f} | {worst:>8.0f} |"

    print("| measure                                | runs | p50 (ms) | max (ms) |")
    print("|----------------------------------------|------|----------|----------|")
    print(row("save -> new code served (live reload)", reload_s))
    print(row("baseline: restart cove serve -> served", restart_s))
    ratio = statistics.median(restart_s) / statistics.median(reload_s)
    print(f"\nlive reload is {ratio:.1f}x faster than a restart")


if __name__ == "__main__":
    main()
