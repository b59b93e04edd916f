"""The workspace rate limit: a token bucket, a pure function of its settings and an injected clock.

Modal limits a workspace to 200 function calls or HTTP requests a second with a 5 s burst
(reference §4.4); the gateway does the same with one `TokenBucket` per workspace (one gateway
serves one workspace today). A request that finds the bucket empty is answered `429` with
`Retry-After` (`retry_after`). On the hot path a request costs one clock read and a few float
operations; nothing is allocated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final

from cove.config import Settings

#: Modal's defaults: 200 requests a second, and up to 5 seconds' worth of them at once.
DEFAULT_RATE_PER_S: Final = Settings.rate_limit_rps  # COVE_RATE_LIMIT_RPS's default (config.py)
DEFAULT_BURST_S: Final = Settings.rate_limit_burst_s
_ALMOST_ONE: Final = 1.0 - 1e-9


class TokenBucket:
    """`rate_per_s` tokens a second flow into a bucket holding at most `rate_per_s * burst_s`.

    It starts full, so a quiet workspace may send a whole burst at once; past that, requests pass
    at `rate_per_s`. The capacity is at least one token, so some request can always pass.

    >>> now = [0.0]
    >>> bucket = TokenBucket(2.0, 1.0, clock=lambda: now[0])
    >>> bucket.take(), bucket.take(), bucket.take()
    (0.0, 0.0, 0.5)
    >>> now[0] = 0.5
    >>> bucket.take()
    0.0
    """

    __slots__ = ("_capacity", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(
        self,
        rate_per_s: float = DEFAULT_RATE_PER_S,
        burst_s: float = DEFAULT_BURST_S,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (("rate_per_s", rate_per_s), ("burst_s", burst_s)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"TokenBucket {name} must be a positive finite number, got {value!r}")
        self._rate = float(rate_per_s)
        self._capacity = max(1.0, self._rate * burst_s)
        self._clock = clock
        self._tokens = self._capacity
        self._stamp = clock()

    def __repr__(self) -> str:
        return f"<cove TokenBucket rate_per_s={self._rate:g} capacity={self._capacity:g}>"

    @property
    def rate_per_s(self) -> float:
        return self._rate

    @property
    def capacity(self) -> float:
        """The most tokens the bucket holds: the burst a quiet workspace may send at once."""
        return self._capacity

    def available(self) -> float:
        """Tokens in the bucket now (fractional), without taking any."""
        elapsed = self._clock() - self._stamp
        tokens = self._tokens + elapsed * self._rate if elapsed > 0 else self._tokens
        return min(tokens, self._capacity)

    def take(self) -> float:
        """Take one token: 0.0 when granted, else the seconds until one will be there.

        A refused request takes nothing, so clients retrying in a loop do not push each other's
        wait further out. A clock that steps backwards adds no tokens.
        """
        now = self._clock()
        elapsed = now - self._stamp
        tokens = self._tokens
        if elapsed > 0:
            tokens += elapsed * self._rate
            if tokens > self._capacity:
                tokens = self._capacity
            self._stamp = now
        if tokens >= _ALMOST_ONE:  # a client retrying when told to is not refused by rounding
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / self._rate


def retry_after(wait_s: float) -> str:
    """The `Retry-After` value for a wait: whole seconds, rounded up, at least 1 (RFC 9110 §10.2.3).

    >>> retry_after(0.004), retry_after(1.0), retry_after(1.2)
    ('1', '1', '2')
    """
    return str(max(1, math.ceil(wait_s)))
