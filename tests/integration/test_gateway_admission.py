"""What the gateway checks before forwarding, through real sockets: proxy auth, the workspace rate
limit, and whose `X-Forwarded-For` it believes. The upstream is the uvicorn app of
`test_gateway_proxy.py`, whose `/echo` returns the headers it received.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from cove._gateway import Route
from tests.integration import test_gateway_proxy as proxy
from tests.integration.test_gateway_proxy import HOST, GatewayThread, TestUpstream

pytestmark = pytest.mark.integration

uvicorn_server = proxy.uvicorn_server
app_dir = proxy.app_dir
start_gateway = proxy.start_gateway
upstream = proxy.upstream

TOKEN_ID = "wk-0123456789abcdef"
SECRET = "ws-correct-horse-battery-staple"


class Verifier:
    """Stands in for `Store.check_token(id, secret, "proxy")`, counting the lookups."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, token_id: str, secret: str) -> bool:
        self.calls += 1
        return (token_id, secret) == (TOKEN_ID, SECRET)


@pytest.fixture
def verifier() -> Verifier:
    return Verifier()


@pytest.fixture
def authed(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream, verifier: Verifier
) -> GatewayThread:
    return start_gateway(
        {
            HOST: Route("shop", "square", upstream, requires_proxy_auth=True),
            "open.localhost": Route("shop", "public", upstream),
        },
        verify_proxy_token=verifier,
    )


def received_headers(response_json: dict[str, Any]) -> dict[str, str]:
    return {name: value for name, value in response_json["headers"]}


# -- proxy auth


def test_a_request_without_credentials_is_401(authed: GatewayThread, upstream: TestUpstream) -> None:
    with authed.client() as client:
        response = client.get("/echo")
    assert response.status_code == 401
    assert response.text == "cove: missing credentials for proxy authorization\n"
    assert response.headers["www-authenticate"].startswith("Bearer ")
    assert upstream.releases == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Modal-Key": TOKEN_ID, "Modal-Secret": SECRET},
        {"Authorization": f"Bearer {TOKEN_ID}.{SECRET}"},
        {"Proxy-Authorization": "Basic " + base64.b64encode(f"{TOKEN_ID}:{SECRET}".encode()).decode()},
    ],
    ids=["modal-key", "bearer", "basic"],
)
def test_each_credential_form_passes_and_none_reaches_the_app(
    authed: GatewayThread, headers: dict[str, str]
) -> None:
    with authed.client() as client:
        response = client.get("/echo", headers=headers)
    assert response.status_code == 200
    seen = received_headers(response.json())
    assert not {"modal-key", "modal-secret", "authorization", "proxy-authorization"} & set(seen)


@pytest.mark.parametrize(
    "headers",
    [
        {"Modal-Key": TOKEN_ID, "Modal-Secret": "ws-wrong"},
        {"Modal-Key": TOKEN_ID},
        {"Authorization": f"Bearer {TOKEN_ID}"},
        {"Authorization": "Bearer some-app-token"},
    ],
    ids=["wrong-secret", "no-secret", "bearer-without-secret", "app-bearer"],
)
def test_wrong_or_partial_credentials_are_401(authed: GatewayThread, headers: dict[str, str]) -> None:
    with authed.client() as client:
        assert client.get("/echo", headers=headers).status_code == 401


def test_the_apps_own_authorization_passes_next_to_the_proxy_token(authed: GatewayThread) -> None:
    headers = {"Modal-Key": TOKEN_ID, "Modal-Secret": SECRET, "Authorization": "Bearer app-token"}
    with authed.client() as client:
        response = client.get("/echo", headers=headers)
    assert response.status_code == 200
    assert received_headers(response.json())["authorization"] == "Bearer app-token"


def test_a_valid_token_is_looked_up_once_for_many_requests(authed: GatewayThread, verifier: Verifier) -> None:
    headers = {"Modal-Key": TOKEN_ID, "Modal-Secret": SECRET}
    with authed.client() as client:
        for _ in range(5):
            assert client.get("/echo", headers=headers).status_code == 200
    assert verifier.calls == 1


def test_public_endpoints_ignore_but_still_strip_proxy_credentials(
    authed: GatewayThread, verifier: Verifier
) -> None:
    headers = {"Modal-Key": TOKEN_ID, "Modal-Secret": SECRET}
    with authed.client(host="open.localhost") as client:
        response = client.get("/echo", headers=headers)
    assert response.status_code == 200
    assert "modal-secret" not in received_headers(response.json())
    assert verifier.calls == 0


def test_without_a_verifier_endpoints_requiring_auth_refuse_everyone(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream
) -> None:
    gw = start_gateway({HOST: Route("shop", "square", upstream, requires_proxy_auth=True)})
    with gw.client() as client:
        response = client.get("/echo", headers={"Modal-Key": TOKEN_ID, "Modal-Secret": SECRET})
    assert response.status_code == 401


# -- rate limit


def test_past_the_burst_requests_are_429_with_retry_after(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream
) -> None:
    """A bucket of 3 that refills one token per 100 s: the 4th request waits ~100 s."""
    gw = start_gateway({HOST: Route("shop", "square", upstream)}, rate_limit_rps=0.01, rate_limit_burst_s=300)
    with gw.client() as client, gw.client(host="nowhere.localhost") as stranger:
        for _ in range(10):  # platform answers (404) take no tokens
            assert stranger.get("/echo").status_code == 404
        assert [client.get("/echo").status_code for _ in range(3)] == [200, 200, 200]
        refused = client.get("/echo")
    assert refused.status_code == 429
    assert refused.text == "cove: rate limit exceeded\n"
    assert 1 <= int(refused.headers["retry-after"]) <= 100
    assert upstream.wait_releases(3) == [False] * 3  # the refused one never reached a container


def test_without_a_rate_limit_nothing_is_refused(gw_unlimited: GatewayThread) -> None:
    with gw_unlimited.client() as client:
        assert {client.get("/echo").status_code for _ in range(50)} == {200}


@pytest.fixture
def gw_unlimited(start_gateway: Callable[..., GatewayThread], upstream: TestUpstream) -> GatewayThread:
    return start_gateway({HOST: Route("shop", "square", upstream)}, rate_limit_rps=0)


# -- trusted proxies


@pytest.mark.parametrize(
    ("trusted", "client_ip"),
    [
        ([], "127.0.0.1"),  # no trusted proxies: the peer, whatever it claims
        (["10.0.0.0/8"], "127.0.0.1"),  # the peer is not trusted: its claim is ignored
        (["127.0.0.1"], "10.1.2.3"),  # the right-most entry the trusted peer did not vouch for
        (["127.0.0.0/8", "10.0.0.0/8"], "6.6.6.6"),
    ],
)
def test_x_forwarded_for_is_believed_only_from_trusted_proxies(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream, trusted: list[str], client_ip: str
) -> None:
    gw = start_gateway({HOST: Route("shop", "square", upstream)}, trusted_proxies=trusted)
    claims = {"X-Forwarded-For": "6.6.6.6, 10.1.2.3", "X-Forwarded-Proto": "https"}
    with gw.client() as client:
        body = client.get("/echo", headers=claims).json()
    headers = body["headers"]
    assert body["client"] == client_ip
    assert [v for k, v in headers if k == "x-forwarded-for"] == [client_ip]
    proto = "https" if client_ip != "127.0.0.1" else "http"
    assert [v for k, v in headers if k == "x-forwarded-proto"] == [proto]


URL_CLAIMS = {
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Port": "6666",
    "X-Forwarded-Prefix": "/evil",
    "X_Forwarded_Host": "evil.example",
}


def test_forwarded_host_port_and_prefix_from_clients_never_reach_the_app(gw_unlimited: GatewayThread) -> None:
    """Apps build absolute URLs and redirects from these; an untrusted client must not choose them."""
    with gw_unlimited.client() as client:
        headers = client.get("/echo", headers=URL_CLAIMS).json()["headers"]
    assert [(k, v) for k, v in headers if "forwarded" in k] == [
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
    ]


def test_a_trusted_proxy_states_forwarded_host_port_and_prefix(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream
) -> None:
    gw = start_gateway({HOST: Route("shop", "square", upstream)}, trusted_proxies=["127.0.0.1"])
    with gw.client() as client:
        headers = client.get("/echo", headers=URL_CLAIMS).json()["headers"]
    assert sorted((k, v) for k, v in headers if "forwarded" in k) == [
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-port", "6666"),
        ("x-forwarded-prefix", "/evil"),
        ("x-forwarded-proto", "http"),
    ]
