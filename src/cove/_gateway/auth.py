"""Proxy auth: which proxy token a request carries, and whether it is valid (reference §4.6).

An endpoint declared with `requires_proxy_auth=True` only answers requests carrying a workspace
proxy token (`cove token create --proxy`: id `wk-…`, secret `ws-…`), sent as Modal sends them:

- `Modal-Key: wk-…` and `Modal-Secret: ws-…`;
- `Authorization: Bearer wk-….ws-…` (for OpenAI-style clients that only set a bearer token);
- `Proxy-Authorization: Basic base64(wk-…:ws-…)` (Modal's legacy form).

The gateway strips all three before forwarding (`messages.scan_request_headers`), so the app never
sees the workspace's credentials; an `Authorization` header that is not a proxy token passes on.

`ProxyAuth` asks the control plane's verifier (a SQLite lookup) and remembers positive answers
for `ttl_s`, so a busy endpoint does not query the database per request. Revoking a token makes
the control plane call `forget(token_id)` at once (issue 12), so a revoked token stops working
with the next request, not `ttl_s` later. Negative answers are not remembered: a token just
created works at once.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable, Sequence
from typing import Final

_log = logging.getLogger("cove.gateway")

UNAUTHORIZED: Final = "cove: missing credentials for proxy authorization"
#: RFC 9110 §11.6.1: a 401 carries a challenge.
CHALLENGE: Final = (("WWW-Authenticate", 'Bearer realm="cove proxy token"'),)

_ID_PREFIX: Final = b"wk-"
_SECRET_PREFIX: Final = b"ws-"
_MAX_TOKEN_BYTES: Final = 512  # far above real tokens; longer values are not even looked up


def is_proxy_bearer(value: bytes) -> bool:
    """Whether an `Authorization` value is a proxy token (`Bearer wk-….ws-…`), to strip it."""
    return value[:7].lower() == b"bearer " and value[7:].lstrip()[:3] == _ID_PREFIX


def credentials(found: Sequence[tuple[bytes, bytes]]) -> tuple[str, str] | None:
    """The (token id, secret) among a request's credential headers, or None.

    `found` holds (lowercased name, value) of its `modal-key`, `modal-secret`, proxy-token
    `authorization` and `proxy-authorization` headers, as `scan_request_headers` collects them.

    >>> credentials([(b"authorization", b"Bearer wk-1.ws-2")])
    ('wk-1', 'ws-2')
    >>> credentials([(b"modal-key", b"wk-1"), (b"modal-secret", b"ws-2")])
    ('wk-1', 'ws-2')
    """
    key = secret = other = None
    for name, value in found:
        if name == b"modal-key":
            key = value.strip()
        elif name == b"modal-secret":
            secret = value.strip()
        elif other is None:
            if name == b"authorization":
                token_id, _, token_secret = value[7:].strip().partition(b".")
                other = (token_id, token_secret)
            elif name == b"proxy-authorization":
                other = _basic(value)
    # Modal-Key/Modal-Secret first: Modal's primary form.
    pair = (key, secret) if key is not None and secret is not None else other
    if pair is None or not _valid(*pair):
        return None
    return pair[0].decode("ascii"), pair[1].decode("ascii")


def _basic(value: bytes) -> tuple[bytes, bytes] | None:
    scheme, _, encoded = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    token_id, colon, token_secret = decoded.partition(b":")
    return (token_id, token_secret) if colon else None


def _valid(token_id: bytes, secret: bytes) -> bool:
    return (
        token_id.startswith(_ID_PREFIX)
        and secret.startswith(_SECRET_PREFIX)
        and len(token_id) + len(secret) <= _MAX_TOKEN_BYTES
        and token_id.isascii()
        and secret.isascii()
    )


class ProxyAuth:
    """Checks proxy tokens with `verify(token_id, secret)`, remembering valid ones for `ttl_s`.

    At most `max_entries` valid tokens are remembered (the oldest forgotten first). `clock` is
    injected so expiry is testable without waiting. A verifier that raises counts as a refusal.
    """

    __slots__ = ("_clock", "_max_entries", "_ttl_s", "_valid", "_verify")

    def __init__(
        self,
        verify: Callable[[str, str], bool],
        *,
        ttl_s: float = 10.0,
        max_entries: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not ttl_s >= 0 or max_entries < 1:
            raise ValueError(f"ProxyAuth needs ttl_s >= 0 and max_entries >= 1, got {ttl_s=} {max_entries=}")
        self._verify = verify
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._valid: dict[tuple[str, str], float] = {}  # (id, secret) -> expiry, in insertion order

    def __repr__(self) -> str:
        return f"<cove ProxyAuth remembered={len(self._valid)} ttl_s={self._ttl_s:g}>"

    def check(self, found: Sequence[tuple[bytes, bytes]] | None) -> bool:
        """Whether the credential headers `found` (see `credentials`) hold a valid proxy token."""
        if not found:
            return False
        pair = credentials(found)
        if pair is None:
            return False
        now = self._clock()
        expires = self._valid.get(pair)
        if expires is not None:
            if expires > now:
                return True
            del self._valid[pair]
        try:
            ok = bool(self._verify(*pair))
        except Exception:
            _log.exception("proxy token verifier failed token_id=%s", pair[0][:40])
            return False
        if ok and self._ttl_s > 0:
            if len(self._valid) >= self._max_entries:
                del self._valid[next(iter(self._valid))]
            self._valid[pair] = now + self._ttl_s
        return ok

    def forget(self, token_id: str | None = None) -> None:
        """Drop the remembered answers for `token_id` (it was revoked), or for every token."""
        if token_id is None:
            self._valid.clear()
            return
        for pair in [pair for pair in self._valid if pair[0] == token_id]:
            del self._valid[pair]
