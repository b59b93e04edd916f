"""Every code sample of the seed guide, served by the real `cove serve` and called over HTTP.

The samples share one server (each its own app, stopped when its test ends), but for the one that
needs a setting in the server's environment.
"""

from __future__ import annotations

import socket

import pytest

from tests.integration.conftest import EXAMPLES, CoveEnv, Serve, host_request

pytestmark = pytest.mark.integration


def test_hello_world_get_answers_json_string(shared_serve: Serve) -> None:
    """`@web_endpoint()` with no arguments: GET returns the function's string as JSON."""
    proc = shared_serve(str(EXAMPLES / "hello.py"))
    (url,) = proc.urls(1)
    assert url.startswith("http://test--hello-f-dev.localhost:")
    response = host_request("GET", url)
    assert response.status_code == 200
    assert response.json() == "Hello world!"


def test_query_parameter_becomes_argument(shared_serve: Serve) -> None:
    """GET ?x=42 passes x=42 as an int; a missing or non-int x is FastAPI's 422."""
    proc = shared_serve(str(EXAMPLES / "square.py"))
    (url,) = proc.urls(1)
    assert host_request("GET", url + "/?x=42").json() == {"square": 1764}
    assert host_request("GET", url + "/?x=nope").status_code == 422
    assert host_request("GET", url).status_code == 422


def test_post_dict_body(shared_serve: Serve) -> None:
    """`method="POST"` with a Dict parameter takes the JSON body; GET on it is 405."""
    proc = shared_serve(str(EXAMPLES / "square_post.py"))
    (url,) = proc.urls(1)
    response = host_request("POST", url, json={"x": 42})
    assert response.status_code == 200
    assert response.json() == {"square": 1764}
    assert host_request("GET", url).status_code == 405


def test_pydantic_model_and_html_response(shared_serve: Serve) -> None:
    """A Pydantic body is validated and an HTMLResponse passes through unchanged."""
    proc = shared_serve(str(EXAMPLES / "pydantic_item.py"))
    (url,) = proc.urls(1)
    response = host_request("POST", url, json={"name": "Erik", "qty": 10})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == "<html>Hello, Erik!</html>"
    assert host_request("POST", url, json={"qty": 10}).status_code == 422


def test_fastapi_asgi_app_routes(shared_serve: Serve) -> None:
    """`@asgi_app` serves the whole FastAPI app: POST /foo echoes, GET /bar renders."""
    proc = shared_serve(str(EXAMPLES / "fastapi_asgi.py"))
    (url,) = proc.urls(1)
    assert "--fastapi-asgi-fastapi-app-dev.localhost:" in url
    assert host_request("POST", url + "/foo", json={"a": [1, 2]}).json() == {"a": [1, 2]}
    bar = host_request("GET", url + "/bar?arg=Cove")
    assert bar.status_code == 200
    assert bar.text == "<h1>Hello Fast Cove!</h1>"
    assert host_request("GET", url + "/missing").status_code == 404


def test_flask_wsgi_app(shared_serve: Serve) -> None:
    """`@wsgi_app` serves Flask through a2wsgi: GET / and POST /echo with a JSON body."""
    proc = shared_serve(str(EXAMPLES / "flask_wsgi.py"))
    (url,) = proc.urls(1)
    assert host_request("GET", url).text == "Hello Flask World!"
    assert host_request("POST", url + "/echo", json={"k": "v"}).json() == {"k": "v"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_web_server_relays_to_container_port(cove_env: CoveEnv, serve: Serve) -> None:
    """`@web_server(port)`: the function starts `python -m http.server`; requests reach it."""
    # Its own server: the port reaches the container through the server's environment.
    cove_env.env["COVE_EXAMPLE_PORT"] = str(_free_port())
    proc = serve(str(EXAMPLES / "file_server.py"))
    (url,) = proc.urls(1)
    response = host_request("GET", url + "/")
    assert response.status_code == 200
    assert "Directory listing for /" in response.text


def test_bearer_token_from_secret(shared_cove: CoveEnv, shared_serve: Serve) -> None:
    """The seed's HTTPBearer sample: 401 without or with a wrong token, 200 with the secret's."""
    shared_cove.run("secret", "create", "my-web-auth-token", "AUTH_TOKEN=secret-random-token")
    proc = shared_serve(str(EXAMPLES / "bearer_auth.py"))
    (url,) = proc.urls(1)
    assert url.startswith("http://test--auth-example-f-dev.localhost:")
    assert host_request("GET", url).status_code == 401
    wrong = host_request("GET", url, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json() == {"detail": "Incorrect bearer token"}
    right = host_request("GET", url, headers={"Authorization": "Bearer secret-random-token"})
    assert right.status_code == 200
    assert right.json() == "success!"
    assert "secret-random-token" not in proc.text()


def test_client_ip_is_the_peer_not_a_spoofed_header(shared_serve: Serve) -> None:
    """`request.client.host` is the address the gateway saw; a client's X-Forwarded-For is ignored."""
    proc = shared_serve(str(EXAMPLES / "client_ip.py"))
    (url,) = proc.urls(1)
    assert host_request("GET", url).json() == "Your IP address is 127.0.0.1"
    spoofed = host_request("GET", url, headers={"X-Forwarded-For": "203.0.113.9"})
    assert spoofed.json() == "Your IP address is 127.0.0.1"


def test_modal_script_runs_unchanged(shared_serve: Serve) -> None:
    """`import modal` / `from modal.exception import ...` resolve to Cove inside cove serve."""
    proc = shared_serve(str(EXAMPLES / "modal_script.py"))
    (url,) = proc.urls(1)
    assert host_request("GET", url + "/?name=cove").json() == {
        "hello": "cove",
        "modal_is_cove": True,
        "error_root": "Error",
    }


def test_class_enter_runs_once_per_container(shared_serve: Serve) -> None:
    """`@enter` runs before the first request and the instance persists across requests."""
    proc = shared_serve(str(EXAMPLES / "lifecycle_cls.py"))
    (url,) = proc.urls(1)
    assert "--lifecycle-model-predict-dev.localhost:" in url
    first = host_request("GET", url + "/?name=a").json()
    second = host_request("GET", url + "/?name=b").json()
    assert first == {"text": "hello a", "calls": 1}
    assert second == {"text": "hello b", "calls": 2}
