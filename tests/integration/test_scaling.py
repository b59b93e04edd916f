"""Containers under load: waves at the cap, shared containers, scale to zero, queue limits, faults."""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path

import pytest

from tests.integration.conftest import URL_RE, CoveEnv, host_request

pytestmark = pytest.mark.integration

SCALING_APP = '''
import os
import signal
import threading
import time

import cove

app = cove.App("scaling")

_lock = threading.Lock()
_running = 0
_barrier = threading.Barrier(4, timeout=20)


def _track(seconds):
    """Run for `seconds`, reporting how many requests this container ran at once."""
    global _running
    with _lock:
        _running += 1
        peak = _running
    started = time.time()
    time.sleep(seconds)
    with _lock:
        _running -= 1
    return {"container": os.environ["COVE_CONTAINER_ID"], "start": started, "end": time.time(), "peak": peak}


@app.function(max_containers=2)
@cove.fastapi_endpoint()
def capped():
    return _track(1.0)


@app.function(max_containers=1)
@cove.concurrent(max_inputs=4)
@cove.fastapi_endpoint()
def shared():
    _barrier.wait()  # only returns once 4 requests are inside this one container at once
    return _track(0.01)


@app.function(scaledown_window=2)
@cove.fastapi_endpoint()
def brief():
    return {"container": os.environ["COVE_CONTAINER_ID"]}


@app.function(max_containers=1)
@cove.fastapi_endpoint()
def slow(seconds: float = 1.0):
    return _track(seconds)


@app.function()
@cove.fastapi_endpoint()
def crash(die: bool = False):
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"container": os.environ["COVE_CONTAINER_ID"]}


@app.function(timeout=1)
@cove.fastapi_endpoint()
def overtime():
    time.sleep(5)
    return "late"
'''


@pytest.fixture
def scaling_urls(tmp_path: Path, cove_env: CoveEnv) -> dict[str, str]:
    cove_env.env["COVE_QUEUE_LIMIT"] = "4"
    app_file = tmp_path / "scaling.py"
    app_file.write_text(SCALING_APP)
    result = cove_env.run("deploy", str(app_file))
    urls = URL_RE.findall(result.stdout)
    return {url.split("--scaling-", 1)[1].split(".localhost")[0]: url for url in urls}


def _parallel(url: str, count: int, path: str = "/") -> list:
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: host_request("GET", url + path), range(count)))


def _max_overlap(results: list[dict]) -> int:
    events = sorted([(r["start"], 1) for r in results] + [(r["end"], -1) for r in results])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_requests_beyond_max_containers_wait_for_a_second_wave(scaling_urls: dict[str, str]) -> None:
    """4 concurrent 1-second requests on max_containers=2: all succeed, on exactly 2 containers,
    never more than 2 running at once (so they ran in two waves)."""
    responses = _parallel(scaling_urls["capped"], 4)
    assert [r.status_code for r in responses] == [200] * 4
    results = [r.json() for r in responses]
    assert len({r["container"] for r in results}) == 2
    assert _max_overlap(results) == 2
    assert all(r["peak"] == 1 for r in results)


def test_concurrent_inputs_share_one_container(scaling_urls: dict[str, str]) -> None:
    """@concurrent(max_inputs=4) on max_containers=1: 4 requests are inside one container at once."""
    responses = _parallel(scaling_urls["shared"], 4)
    assert [r.status_code for r in responses] == [200] * 4
    assert len({r.json()["container"] for r in responses}) == 1


def test_scale_to_zero_after_scaledown_window(scaling_urls: dict[str, str], cove_env: CoveEnv) -> None:
    """With scaledown_window=2 the idle container stops; the next request cold-starts a new one."""
    first = host_request("GET", scaling_urls["brief"]).json()["container"]

    def brief_containers() -> list[str]:
        listing = json.loads(cove_env.run("container", "list", "--app", "scaling", "--json").stdout)
        return [c["id"] for c in listing if c["function"] == "brief"]

    assert brief_containers() == [first]
    deadline = time.monotonic() + 30
    while brief_containers():
        assert time.monotonic() < deadline, "the idle container never stopped"
        time.sleep(0.25)
    second = host_request("GET", scaling_urls["brief"])
    assert second.status_code == 200
    assert second.json()["container"] != first


def test_full_queue_answers_503_naming_the_limit(scaling_urls: dict[str, str]) -> None:
    """One slot and COVE_QUEUE_LIMIT=4: of 6 simultaneous slow requests, 5 are served (1 running,
    4 waiting) and exactly one is refused at once with 503 naming the limit."""
    url = scaling_urls["slow"]
    assert host_request("GET", url + "/?seconds=0").status_code == 200  # warm the one container
    responses = _parallel(url, 6, "/?seconds=2")
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 200, 200, 200, 503]
    (rejected,) = [r for r in responses if r.status_code == 503]
    assert rejected.text == "cove: queue full for slow (4 waiting)\n"


def test_container_killed_mid_request_gives_502_then_recovers(scaling_urls: dict[str, str]) -> None:
    """A container that dies mid-request: that request gets 502 naming the exit; the next one works."""
    url = scaling_urls["crash"]
    before = host_request("GET", url).json()["container"]
    died = host_request("GET", url + "/?die=true")
    assert died.status_code == 502
    assert died.text == "cove: container exited (code -9)\n"
    after = host_request("GET", url)
    assert after.status_code == 200
    assert after.json()["container"] != before


def test_function_timeout_is_504(scaling_urls: dict[str, str]) -> None:
    """A request running past the function's timeout gets 504 naming the limit."""
    response = host_request("GET", scaling_urls["overtime"])
    assert response.status_code == 504
    assert response.text == "cove: function timed out after 1 s\n"


def test_container_stop_command(scaling_urls: dict[str, str], cove_env: CoveEnv) -> None:
    """`cove container stop ID` stops that container; the next request gets a fresh one."""
    first = host_request("GET", scaling_urls["brief"]).json()["container"]
    result = cove_env.run("container", "stop", first)
    assert f"Container {first} stopped." in result.stdout
    assert host_request("GET", scaling_urls["brief"]).json()["container"] != first
    missing = cove_env.run("container", "stop", "ta-000000000000", check=False)
    assert missing.returncode == 1
    assert "not found" in missing.stderr
