"""What the gateway enforces before it forwards anything: input limits, proxy auth, rate limit.

`Limits` bounds what a client may send and how long it may take (hostile input, issue 7.4);
`Policy` bundles the limits with the workspace's rate limit, the proxy-token checker and the
trusted proxies, built once per gateway and shared by every connection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Final

from cove._gateway.auth import ProxyAuth
from cove._gateway.clientip import TrustedProxies
from cove._gateway.ratelimit import TokenBucket
from cove.config import Settings

#: Modal's WebSocket message cap (reference §4.2); the container's uvicorn has the same one.
WS_MAX_MESSAGE_BYTES: Final = 2 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Bounds on client input; past each, the gateway answers the status named and closes.

    - `max_body_bytes`: request body (413); streamed, never buffered whole. Modal: 4 GiB.
    - `max_head_bytes`: request line plus headers (431).
    - `max_request_line_bytes`: request target (414).
    - `header_timeout_s`: from a connection's start, or a request's first byte, to the end of its
      head (408 and close; a connection that sent nothing is just closed). Stops slowloris.
    - `body_timeout_s`: a request body that stalls (no byte arrives while the gateway is reading)
      this long is answered 408 and its connection closed, so its container slot is freed
      (issue 12: clients that send one byte of a body held containers forever).
    - `send_timeout_s`: a client that reads nothing of its response this long (the gateway's
      write buffer stays full) is disconnected, freeing its slot; nginx's `send_timeout`.
    - `idle_timeout_s`: a keep-alive connection with no request for this long is closed.
      Upgraded (WebSocket) connections have no idle timeout.
    - `max_connections`: open client connections; a new one past it is answered 503 and closed.
    - `max_ws_message_bytes`: a client WebSocket message larger than this closes the
      connection with 1009.
    """

    # The defaults of the COVE_* settings of the same names (written once, in config.py).
    max_body_bytes: int = Settings.max_body_bytes
    max_head_bytes: int = Settings.max_head_bytes
    max_request_line_bytes: int = Settings.max_request_line_bytes
    header_timeout_s: float = Settings.header_timeout_s
    body_timeout_s: float = Settings.body_timeout_s
    send_timeout_s: float = Settings.send_timeout_s
    idle_timeout_s: float = Settings.keepalive_timeout_s
    max_connections: int = Settings.max_connections
    max_ws_message_bytes: int = WS_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_s"):
                ok = not isinstance(value, bool) and isinstance(value, int | float) and 0 < value < math.inf
                kind = "a positive finite number of seconds"
            else:
                ok = not isinstance(value, bool) and isinstance(value, int) and value > 0
                kind = "a positive integer"
            if not ok:
                raise ValueError(f"Limits.{field.name} must be {kind}, got {value!r}")


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything a connection checks a request against, shared by all of a gateway's connections."""

    limits: Limits
    bucket: TokenBucket | None = None  # None: no rate limit
    proxy_auth: ProxyAuth | None = None  # None: no verifier, so `requires_proxy_auth` routes refuse all
    trusted: TrustedProxies | None = None  # None: the peer is always the client
