"""Endpoints calling the other functions of their own app from inside their containers, under
`cove serve` and `cove deploy`, through the app's scoped control socket (and nothing else of the API).

The app (tests/integration/calls_app.py) is written for Modal (`import modal`) and runs unchanged.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import URL_RE, CoveEnv, host_request

pytestmark = pytest.mark.integration

APP = Path(__file__).with_name("calls_app.py")


def _urls(text: str) -> dict[str, str]:
    """Endpoint URLs by function: `...--calls-fanout-async-dev...` -> "fanout_async"."""
    found = {}
    for url in URL_RE.findall(text):
        label = url.split("--calls-", 1)[1].split(".", 1)[0].removesuffix("-dev")
        found[label.replace("-", "_")] = url
    return found


def _get(url: str) -> Any:
    response = host_request("GET", url + "/?x=3", timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _check_fanout(body: dict[str, Any]) -> None:
    assert body["remote"] == 9
    assert body["map"] == [0, 1, 4]
    assert body["starmap"] == [3, 7]
    assert body["spawn"] == 9
    assert body["gen"] == [0, 1, 2]
    # `endless` never finishes: its first item arrived because items are streamed, not collected.
    assert body["streamed"] == "first"
    assert body["cls"] == 15
    assert body["local"] == 9
    assert body["remote_on_generator"].startswith("A generator function cannot be called with `.remote(...)`")
    assert body["callee"] != body["caller"]  # the callee runs in a container of its own


def test_endpoints_call_their_apps_functions_under_serve_and_deploy_and_nothing_else(
    tmp_path: Path, cove_env: CoveEnv, serve
) -> None:
    """One server for both: the served app first (with the socket's refusals), then the deployed one."""
    shutil.copy(APP, tmp_path / "calls_app.py")
    process = serve(str(tmp_path / "calls_app.py"))
    process.wait_for("Serving")
    urls = _urls(process.text())
    _check_fanout(_get(urls["fanout"]))
    assert _get(urls["fanout_async"]) == {
        "remote_aio": 9,
        "gen_aio": [0, 1, 2],
        "map_aio": [1, 4],
        "from_name_gen": None,
    }
    probe = _get(urls["probe"])
    assert probe["path"] == "/cove/api/control.sock"
    assert probe["beside_it"] == ["control.sock"]
    for route in ("tokens", "secrets", "deploy", "stop_server", "logs", "dotdot", "other_ephemeral"):
        assert probe[route] == 403, (route, probe)
    assert probe["message"].startswith("cove: GET /v1/secrets is not available to containers")
    assert process.interrupt() == 0

    result = cove_env.run("deploy", str(tmp_path / "calls_app.py"))
    urls = _urls(result.stdout)
    _check_fanout(_get(urls["fanout"]))
    body = _get(urls["fanout_async"])
    assert body["remote_aio"] == 9 and body["gen_aio"] == [0, 1, 2]
    assert body["from_name_gen"] == [0, 1]  # Function.from_name(...).remote_gen from a container
