"""Requests past the HTTP limit: Modal's 303 polling protocol through the real server."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.integration.conftest import URL_RE, host_request, private_cove

pytestmark = pytest.mark.integration

SLOW_APP = """
import time

import cove

app = cove.App("slow")


@app.function(timeout=60)
@cove.fastapi_endpoint()
def report(seconds: float = 5.0, name: str = "q3"):
    time.sleep(seconds)
    return {"report": name, "took": seconds}
"""


@pytest.fixture(scope="module")
def slow_url() -> Iterator[str]:
    """The app above deployed once for the module, on a server whose HTTP limit is 2 s."""
    with private_cove() as cove:
        cove.env["COVE_HTTP_TIMEOUT"] = "2"
        app_file = cove.home / "slow.py"
        app_file.write_text(SLOW_APP)
        (url,) = URL_RE.findall(cove.run("deploy", str(app_file)).stdout)
        yield url


def test_303_chain_until_the_result_is_ready(slow_url: str) -> None:
    """With COVE_HTTP_TIMEOUT=2 a 5-second call answers 303 to `?__cove_function_call_id=fc-…`; polling
    that Location gets 303 while it runs, then the result, which can be fetched again."""
    url = slow_url

    first = host_request("GET", url + "/?seconds=5&name=annual")
    assert first.status_code == 303
    location = first.headers["location"]
    query = parse_qs(urlsplit(location).query)
    assert query["seconds"] == ["5"]
    assert query["name"] == ["annual"]
    (call_id,) = query["__cove_function_call_id"]
    assert call_id.startswith("fc-")

    poll_url = url + location if location.startswith("/") else url + "/" + location.lstrip("/")
    statuses = []
    for _ in range(10):  # bounded: 5 s of work, 2 s per poll
        response = host_request("GET", poll_url)
        statuses.append(response.status_code)
        if response.status_code != 303:
            break
    assert statuses[-1] == 200, statuses
    assert statuses[0] == 303  # the call needs 5 s; the first poll ends 4 s after it began
    assert response.json() == {"report": "annual", "took": 5.0}
    again = host_request("GET", poll_url)
    assert again.status_code == 200
    assert again.json() == {"report": "annual", "took": 5.0}
    assert host_request("POST", poll_url).status_code == 400


def test_fast_requests_are_not_redirected(slow_url: str) -> None:
    """Under the limit a request is answered directly."""
    response = host_request("GET", slow_url + "/?seconds=0.1")
    assert response.status_code == 200
    assert response.json()["took"] == 0.1
