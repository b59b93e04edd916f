"""The dashboard against a real server: pages, `/metrics`, live logs, and who may act."""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import CoveEnv, host_request
from tests.integration.dashboard_app import csrf_token, deploy_dash

pytestmark = pytest.mark.integration


def _requests_total(dashboard: str) -> dict[str, float]:
    text = host_request("GET", dashboard + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return {
        s.labels["code"]: s.value
        for s in families["cove_http_requests"].samples
        if s.labels["app"] == "dash" and s.labels["function"] == "hello"
    }


def test_pages_list_the_app_and_metrics_count_each_request(cove_env: CoveEnv, tmp_path: Path) -> None:
    url, dashboard = deploy_dash(cove_env, tmp_path)
    apps = host_request("GET", dashboard + "/")
    assert apps.status_code == 200
    assert 'data-app="dash"' in apps.text and url in apps.text
    assert "default-src 'self'" in apps.headers["content-security-policy"]
    for page in ("/apps/deployed/dash", "/containers", "/logs", "/apps/deployed/dash/traffic/hello"):
        assert host_request("GET", dashboard + page).status_code == 200, page
    before = _requests_total(dashboard)
    for i in range(5):
        assert host_request("GET", f"{url}/?name=n{i}").json() == {"hello": f"n{i}"}
    host_request("GET", url + "/missing")  # a 404 of the function's own
    after = _requests_total(dashboard)
    assert after["2xx"] - before.get("2xx", 0) == 5
    assert after["4xx"] - before.get("4xx", 0) == 1
    text = host_request("GET", dashboard + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    count = next(
        s.value
        for s in families["cove_http_request_duration_seconds"].samples
        if s.name.endswith("_count") and s.labels["app"] == "dash"
    )
    assert count == sum(after.values())
    assert next(s.value for s in families["cove_cold_starts"].samples if s.labels["app"] == "dash") >= 1
    traffic = host_request("GET", dashboard + "/api/traffic/deployed/dash/hello").json()
    assert traffic["requests_total"] == sum(after.values())
    assert sum(traffic["requests"]) >= 6 and len(traffic["requests"]) == 3600
    # The containers page shows the container that served them.
    containers = host_request("GET", dashboard + "/containers").text
    assert "data-container=" in containers and "hello" in containers


def test_live_log_stream_shows_a_printed_line_within_two_seconds(cove_env: CoveEnv, tmp_path: Path) -> None:
    url, dashboard = deploy_dash(cove_env, tmp_path)
    host_request("GET", url + "/?name=warm")  # the container is up before the clock starts
    lines: queue.Queue[dict[str, str]] = queue.Queue()
    parts = urlsplit(dashboard)

    def follow() -> None:
        target = f"http://127.0.0.1:{parts.port}/logs/stream?app=dash&kind=deployed&function=hello"
        try:
            with httpx.stream("GET", target, headers={"Host": parts.netloc}, timeout=30) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        lines.put(json.loads(line[6:]))
        except httpx.HTTPError:
            pass  # the server stopped at the end of the test

    threading.Thread(target=follow, daemon=True).start()
    time.sleep(0.5)  # let the stream open
    marker = f"m{time.monotonic_ns()}"
    started = time.monotonic()
    host_request("GET", f"{url}/?name={marker}")
    while True:
        record = lines.get(timeout=max(0.01, 2.0 - (time.monotonic() - started)))
        if record.get("line") == f"hello-log {marker}":
            break
    assert time.monotonic() - started < 2.0
    assert record["function"] == "hello" and record["container"].startswith("ta-")


def test_actions_need_the_csrf_token_from_the_same_origin_or_an_api_token(
    cove_env: CoveEnv, tmp_path: Path
) -> None:
    url, dashboard = deploy_dash(cove_env, tmp_path)
    stop = dashboard + "/apps/deployed/dash/stop"
    token = csrf_token(dashboard)
    assert host_request("POST", stop).status_code == 403  # no token at all
    assert host_request("POST", stop, data={"csrf_token": "0" * 64}).status_code == 403
    cross_site = {"Origin": "http://evil--x.localhost:1", "Sec-Fetch-Site": "same-site"}
    assert host_request("POST", stop, data={"csrf_token": token}, headers=cross_site).status_code == 403
    assert host_request("POST", stop, headers={"Authorization": "Bearer tk-nope.secret"}).status_code == 403
    assert host_request("GET", url + "/").status_code == 200  # still serving
    created = cove_env.run("token", "create").stdout
    found = re.search(r"COVE_TOKEN=(\S+)", created)
    assert found is not None, created
    api_token = found.group(1)
    answer = host_request("POST", stop, headers={"Authorization": f"Bearer {api_token}"})
    assert answer.status_code == 303
    gone = host_request("GET", url + "/")
    assert gone.status_code == 404 and "is stopped" in gone.text
