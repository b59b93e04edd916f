"""The phases of one exchange, from its parsed head to its end, and the transitions allowed.

An exchange (`exchange.BaseExchange`, `proxy.Exchange`) moves forward only::

    ARRIVED ──▶ ACQUIRING ──▶ FORWARDED ──▶ STREAMING ──▶ ANSWERED ──▶ DONE
       │            │            │ ├──▶ RELAYING ─────────────────────▶ DONE
       │            │            │ └──▶ DETACHED ──▶ COLLECTING ──────▶ DONE
       └──▶ POLLING ┴────────────┴──▶ ANSWERED (an answer of the gateway's own)

and any phase may end in DONE at once when the client leaves. Which request bytes have arrived
and which flow-control pauses hold are tracked apart: they change independently of the phase.
"""

from __future__ import annotations

import enum
from typing import Final


class Phase(enum.Enum):
    """Where one exchange is in its life."""

    # Members are singletons compared by identity; Enum's own __hash__ hashes the name in Python,
    # which the transition checks on the hot path would pay several times per request.
    __hash__ = object.__hash__

    ARRIVED = "arrived"  # head parsed; its turn came or is coming, not admitted yet
    ACQUIRING = "acquiring"  # admitted; waiting for a container slot (cancelled if the client leaves)
    FORWARDED = "forwarded"  # holds a lease; the request goes upstream, no response byte sent yet
    POLLING = "polling"  # a GET waiting for the result of a call answered with 303
    STREAMING = "streaming"  # the container's response head went to the client; its body follows
    RELAYING = "relaying"  # the container answered 101: a WebSocket relays bytes both ways
    DETACHED = "detached"  # answered 303: the response is collected as the call's result
    COLLECTING = "collecting"  # detached, and the container's response head has arrived
    ANSWERED = "answered"  # the response is complete; the rest of the request body is dropped
    DONE = "done"  # the connection moved on (or the client left); nothing more is written


_TO: Final[dict[Phase, frozenset[Phase]]] = {
    Phase.ARRIVED: frozenset({Phase.ACQUIRING, Phase.POLLING, Phase.ANSWERED, Phase.DONE}),
    Phase.ACQUIRING: frozenset({Phase.FORWARDED, Phase.ANSWERED, Phase.DONE}),
    Phase.FORWARDED: frozenset({Phase.STREAMING, Phase.RELAYING, Phase.DETACHED, Phase.ANSWERED, Phase.DONE}),
    Phase.POLLING: frozenset({Phase.ANSWERED, Phase.DONE}),
    Phase.STREAMING: frozenset({Phase.ANSWERED, Phase.DONE}),
    Phase.RELAYING: frozenset({Phase.DONE}),
    Phase.DETACHED: frozenset({Phase.COLLECTING, Phase.DONE}),
    Phase.COLLECTING: frozenset({Phase.DONE}),
    Phase.ANSWERED: frozenset({Phase.DONE}),
    Phase.DONE: frozenset(),
}

#: Phases in which the client has been sent a response head it is reading the rest of.
HEAD_SENT: Final = frozenset({Phase.STREAMING, Phase.RELAYING})
#: Phases in which the client connection has moved on: done, or answering a detached call.
MOVED_ON: Final = frozenset({Phase.DETACHED, Phase.COLLECTING, Phase.DONE})


class PhaseError(RuntimeError):
    """An exchange was asked to move between two phases that do not follow each other."""


def allowed(old: Phase, new: Phase) -> bool:
    """Whether an exchange in phase `old` may move to `new`.

    >>> allowed(Phase.FORWARDED, Phase.STREAMING), allowed(Phase.DONE, Phase.STREAMING)
    (True, False)
    """
    return new in _TO[old]


def advance(old: Phase, new: Phase) -> Phase:
    """`new`, after checking that an exchange in phase `old` may move there (`PhaseError` if not)."""
    if new not in _TO[old]:
        raise PhaseError(f"an exchange cannot go from {old.name} to {new.name}")
    return new
