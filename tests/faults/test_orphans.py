"""Nothing the server started outlives it (issue 12, item 8a): after `kill -9` of the server, its
sandboxes, zygotes, containers and their pasta network helpers are gone within seconds, and the
next server of that COVE_HOME removes the cgroups the killed one left."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from cove._runtime.backends.local.isolation import probe_bwrap
from cove._runtime.backends.local.limits import Limiter, leftover_groups, owner_of
from tests.integration.conftest import URL_RE, CoveEnv, host_request

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(probe_bwrap()[0] is None, reason=f"no sandbox here: {probe_bwrap()[1]}"),
]

NETWORKED_APP = """
import subprocess
import sys

import cove

app = cove.App("orphans")


@app.function()
@cove.fastapi_endpoint()
def hello():
    return "hello"


@app.function()
@cove.web_server(8000, startup_timeout=30)
def site():
    subprocess.Popen([sys.executable, "-m", "http.server", "8000"])
"""

Process = tuple[int, str]  # pid and start time: a pid reused meanwhile is another process


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def _alive(process: Process) -> bool:
    fields = _stat(process[0])
    return fields is not None and fields[19] == process[1] and fields[0] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def _of_server(server: int, home: Path) -> set[Process]:
    """The server's descendants, and any process naming its COVE_HOME (environment or argv)."""
    parents: dict[int, int] = {}
    starts: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            parents[int(entry)] = int(fields[1])
            starts[int(entry)] = fields[19]
    found = {server}
    changed = True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                changed = True
    needle = str(home).encode()
    for pid in parents:
        try:
            named = needle in Path(f"/proc/{pid}/environ").read_bytes()
            named = named or needle in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if named and pid != os.getpid():
            found.add(pid)
    return {(pid, starts[pid]) for pid in found if pid in starts}


def _survivors(processes: set[Process], timeout: float) -> set[Process]:
    """Those of `processes` still alive once all have ended or `timeout` has passed."""
    deadline = time.monotonic() + timeout
    alive = {p for p in processes if _alive(p)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = {p for p in alive if _alive(p)}
    return alive


def test_a_killed_server_leaves_no_process_behind(tmp_path: Path, cove_env: CoveEnv) -> None:
    """Containers with outbound network (pasta attached to the image zygote's sandbox and to a
    web_server fork's own namespace) all end, helpers included, when the server gets SIGKILL; the
    next server removes the killed one's cgroups, and, stopped, leaves no process either."""
    (tmp_path / "orphans.py").write_text(NETWORKED_APP)
    urls = URL_RE.findall(cove_env.run("deploy", str(tmp_path / "orphans.py"), timeout=300).stdout)
    for url in urls:
        assert host_request("GET", url).status_code == 200
    server = json.loads((cove_env.home / "server.json").read_text())["pid"]
    started = _of_server(server, cove_env.home)
    helpers = [pid for pid, _ in started if "pasta" in _cmdline(pid) or "passt" in _cmdline(pid)]
    assert helpers, "no pasta ran: " + "\n".join(_cmdline(pid) for pid, _ in started)

    os.kill(server, signal.SIGKILL)
    survivors = _survivors(started, timeout=15)
    assert not survivors, "outlived the server:\n" + "\n".join(_cmdline(pid) for pid, _ in survivors)

    left = leftover_groups(owner_of(cove_env.home.resolve()))
    assert left or Limiter(max_pids=1).max_pids is None  # every container has a group, where possible
    cove_env.run("app", "list")  # starts a server for this home again
    assert not [group for group in left if group.exists()]

    # A server stopped the normal way leaves nothing behind either.
    state = json.loads((cove_env.home / "server.json").read_text())
    for url in urls:  # the new server listens on a new port
        response = host_request("GET", url.rsplit(":", 1)[0] + f":{state['gateway_port']}")
        assert response.status_code == 200, response.text
    server = state["pid"]
    started = _of_server(server, cove_env.home)
    cove_env.run("server", "stop")
    survivors = _survivors(started, timeout=30)
    assert not survivors, "outlived `cove server stop`:\n" + "\n".join(_cmdline(pid) for pid, _ in survivors)
