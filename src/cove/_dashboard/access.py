"""Who may see the dashboard and who may act on it.

Reads: loopback clients, or any client with an API token (`Authorization: Bearer <id>.<secret>`,
from `cove token create`). Actions (POST): an API token; or a loopback client whose form carries
the CSRF token and whose browser says the request comes from the dashboard itself (`Origin`,
`Sec-Fetch-Site`), so a page on another `*.localhost` host cannot drive a user's browser into
stopping apps (OWASP CSRF cheat sheet: synchronizer token plus origin verification).

The client address is the one the gateway states in `X-Forwarded-For`: only the gateway can
reach the dashboard's unix socket (file mode 0600), and it replaces what clients send there.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Callable
from typing import Literal

from starlette.requests import Request

TokenCheck = Callable[[str, str], bool]
Verdict = Literal["ok", "forbidden", "csrf"]

CSRF_FIELD = "csrf_token"


class Access:
    """The dashboard's access rules, with a per-process secret for its CSRF tokens."""

    def __init__(self, check_token: TokenCheck, secret: bytes | None = None) -> None:
        self._check_token = check_token
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self.csrf_token = hmac.new(self._secret, b"cove-dashboard-action", hashlib.sha256).hexdigest()

    def can_read(self, request: Request) -> bool:
        return is_loopback(client_address(request)) or self._bearer_ok(request)

    def can_act(self, request: Request, form_token: str | None) -> Verdict:
        """Whether a POST may change anything: "ok", "forbidden" (who), or "csrf" (how)."""
        if self._bearer_ok(request):
            return "ok"
        if not is_loopback(client_address(request)):
            return "forbidden"
        if form_token is None or not hmac.compare_digest(form_token, self.csrf_token):
            return "csrf"
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return "csrf"
        origin = request.headers.get("origin")
        if origin is not None and origin != own_origin(request):
            return "csrf"
        return "ok"

    def _bearer_ok(self, request: Request) -> bool:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        token_id, dot, secret = credentials.strip().partition(".")
        if not dot:
            return False
        try:
            return self._check_token(token_id, secret)
        except Exception:  # a malformed id is a refusal, not an error page
            return False


def client_address(request: Request) -> str:
    """The client's address as the gateway stated it (the last `X-Forwarded-For` entry)."""
    forwarded = request.headers.get("x-forwarded-for", "")
    return forwarded.rsplit(",", 1)[-1].strip()


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def own_origin(request: Request) -> str:
    """The dashboard's origin as this request names it (`http://dashboard.localhost:8000`)."""
    proto = request.headers.get("x-forwarded-proto", "http")
    return f"{proto}://{request.headers.get('host', '')}"
