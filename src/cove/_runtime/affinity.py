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

`StickySessions` is the strong form, Modal's `@modal.sessioned()`: a session started through the
API is bound to one container for its whole life and keeps that container from scaling down.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Callable, Collection
from dataclasses import dataclass

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


@dataclass
class StickySession:
    """One `@modal.sessioned()` session: the container it lives on and its activity."""

    container_id: str
    idle_timeout_s: float
    in_flight: int = 0
    last_active: float = 0.0


class StickySessions:
    """Modal's Sticky Sessions (`@modal.sessioned()`): tokens bound to one container for their life.

    A session lives until it is terminated, or until it has had no request in flight for its
    `idle_timeout_s`; while it lives, its container is not scaled down. Pure: the caller passes the
    time and makes the tokens.
    """

    def __init__(self) -> None:
        self._sessions: dict[str, StickySession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def start(self, token: str, container_id: str, idle_timeout_s: float, now: float) -> None:
        self._sessions[token] = StickySession(container_id, idle_timeout_s, last_active=now)

    def get(self, token: str, now: float) -> StickySession | None:
        """The live session of `token`, or None (unknown, terminated or expired: then forgotten)."""
        session = self._sessions.get(token)
        if session is not None and self._expired(session, now):
            del self._sessions[token]
            return None
        return session

    def begin(self, token: str) -> None:
        """A request of the session is in flight."""
        session = self._sessions.get(token)
        if session is not None:
            session.in_flight += 1

    def end(self, token: str, now: float) -> None:
        """A request of the session finished: its idle time counts from now."""
        session = self._sessions.get(token)
        if session is not None:
            session.in_flight = max(0, session.in_flight - 1)
            session.last_active = now

    def terminate(self, token: str) -> bool:
        return self._sessions.pop(token, None) is not None

    def drop(self, token: str) -> None:
        self._sessions.pop(token, None)

    def expire(self, now: float) -> None:
        for token in [t for t, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[token]

    def count(self, container_id: str, now: float) -> int:
        """Live sessions on `container_id`."""
        return sum(
            1 for s in self._sessions.values() if s.container_id == container_id and not self._expired(s, now)
        )

    def _expired(self, session: StickySession, now: float) -> bool:
        return session.in_flight == 0 and now - session.last_active >= session.idle_timeout_s


__all__ = [
    "DEFAULT_IDLE_TTL_S",
    "DEFAULT_MAX_SESSIONS",
    "SessionTable",
    "StickySession",
    "StickySessions",
    "rendezvous_order",
    "rendezvous_score",
]
