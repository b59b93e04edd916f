"""Session affinity for HTTP servers: which container serves a `Modal-Session-ID`, decided purely.

Modal routes a session by rendezvous hashing of the header over the server's containers, "a
best-effort hint": when containers are added, some sessions move. Cove keeps Modal's hashing for a
session's *first* request and then remembers the choice, so a session stays on its container for as
long as that container is in rotation, however the pool grows; only when it goes (scaled down,
crashed, replaced by a new version) does the session move, again by rendezvous hashing so that all
the session's next requests agree on the new container. A container that is full (at
`max_concurrency`) lends the request to another one without moving the session.

Pins are forgotten after `idle_ttl_s` without a request (Modal's sticky-session default idle
timeout, 600 s) and the table is bounded (oldest pins go first), so clients inventing session ids
cannot grow it without bound. No I/O: the clock is passed in.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Callable, Collection

#: Modal's default `idle_timeout` of a sticky session.
DEFAULT_IDLE_TTL_S = 600.0
#: Most sessions remembered per pool; beyond it the least recently used pin is dropped.
DEFAULT_MAX_SESSIONS = 100_000


def rendezvous_score(session: bytes, container_id: str) -> int:
    """The highest-random-weight score of one container for one session (stable across processes)."""
    digest = hashlib.blake2b(session + b"\x00" + container_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(session: bytes, container_ids: Collection[str]) -> list[str]:
    """`container_ids` from most to least preferred for `session` (ties broken by id)."""
    return sorted(container_ids, key=lambda cid: (-rendezvous_score(session, cid), cid))


class SessionTable:
    """Session id -> container id pins, least recently used first; pure apart from the given clock."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        idle_ttl_s: float = DEFAULT_IDLE_TTL_S,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        self._clock = clock
        self._idle_ttl_s = idle_ttl_s
        self._max = max_sessions
        self._pins: collections.OrderedDict[bytes, tuple[str, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._pins)

    def pinned(self, session: bytes) -> str | None:
        """The container `session` is pinned to, if the pin has not expired."""
        entry = self._pins.get(session)
        if entry is None:
            return None
        container_id, last_used = entry
        if self._clock() - last_used >= self._idle_ttl_s:
            del self._pins[session]
            return None
        return container_id

    def choose(
        self, session: bytes, candidates: Collection[str], has_room: Callable[[str], bool]
    ) -> str | None:
        """The container to serve `session` now, among the `candidates` in rotation.

        The pinned container if it is a candidate (and has room); else the session is pinned anew
        to its rendezvous choice among the candidates. A pinned or chosen container without room
        lends the request to the next container in rendezvous order that has room, leaving the pin
        as it is. None: no candidate has room.
        """
        now = self._clock()
        pinned = self.pinned(session)
        order = rendezvous_order(session, candidates)
        if pinned is None or pinned not in candidates:
            if not order:
                return None
            pinned = order[0]
        self._pins[session] = (pinned, now)
        self._pins.move_to_end(session)
        self._evict(now)
        if has_room(pinned):
            return pinned
        return next((cid for cid in order if cid != pinned and has_room(cid)), None)

    def _evict(self, now: float) -> None:
        while self._pins:
            session, (_, last_used) = next(iter(self._pins.items()))
            if len(self._pins) > self._max or now - last_used >= self._idle_ttl_s:
                del self._pins[session]
            else:
                break


__all__ = [
    "DEFAULT_IDLE_TTL_S",
    "DEFAULT_MAX_SESSIONS",
    "SessionTable",
    "rendezvous_order",
    "rendezvous_score",
]
