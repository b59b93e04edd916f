"""A container cannot make the gateway connect anywhere but to the container itself (issue 12, item 1).

A hostile container used to unlink its own HTTP socket (`/cove/run/http.sock`, in the run dir it can
write) and put a link to the server's control socket in its place: the gateway then proxied public
requests to the control API (secrets listed, tokens minted). The gateway now connects only to a
socket the server made, in a directory no container sees, whatever the container does to its files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cove._runtime.backends.local.isolation import probe_bwrap
from tests.integration.conftest import URL_RE, CoveEnv, host_request

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(probe_bwrap()[0] is None, reason=f"no sandbox here: {probe_bwrap()[1]}"),
]

HIJACK_APP = """
import os
import socket

from fastapi.responses import JSONResponse

import cove

app = cove.App("hijack")


def _listening_paths():
    paths = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        with sock:
            try:
                if sock.family == socket.AF_UNIX and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    paths.add(sock.getsockname())
            except OSError:
                pass
    return sorted(p for p in paths if isinstance(p, str) and p)


def _replace(path, target):
    steps = []
    for step in (lambda: os.unlink(path), lambda: os.symlink(target, path)):
        try:
            step()
            steps.append("ok")
        except OSError as exc:
            steps.append(type(exc).__name__)
    return steps


@app.function(block_network=True)
@cove.fastapi_endpoint()
def swap(target: str):
    done = {path: _replace(path, target) for path in {"/cove/run/http.sock", *_listening_paths()}}
    # Close this connection: the gateway's next one is a new connect() to the container's address.
    return JSONResponse(done, headers={"Connection": "close"})
"""


@pytest.mark.parametrize("zygote", ["0", "1"], ids=["fresh-workers", "zygotes"])
def test_a_container_cannot_redirect_the_gateway_to_the_control_socket(
    tmp_path: Path, cove_env: CoveEnv, zygote: str
) -> None:
    """The container replaces every socket path it can find (its run dir's, the host path of the
    socket it serves on) with a link to the control socket; the gateway still reaches only the
    container: /v1/secrets through the endpoint's URL is the app's own 404, never the secret list."""
    cove_env.env["COVE_ZYGOTE"] = zygote
    cove_env.run("secret", "create", "hijack-canary", "CANARY=1")
    (tmp_path / "hijack.py").write_text(HIJACK_APP)
    (url,) = URL_RE.findall(cove_env.run("deploy", str(tmp_path / "hijack.py"), timeout=300).stdout)
    control = cove_env.home / "server.sock"
    assert control.exists()

    swapped = host_request("GET", url, params={"target": str(control)})
    assert swapped.status_code == 200, swapped.text
    print("container's attempts:", json.dumps(swapped.json()))
    for _ in range(5):  # each on a new connection to the container (it closed the last one)
        answer = host_request("GET", url + "/v1/secrets", headers={"Connection": "close"})
        assert "hijack-canary" not in answer.text, answer.text
        assert answer.status_code == 404, answer.text
        answer = host_request(
            "POST", url + "/v1/tokens", json={"name": "stolen"}, headers={"Connection": "close"}
        )
        assert answer.status_code == 404, answer.text
    assert "stolen" not in cove_env.run("token", "list").stdout
