"""The orders the server sends its workers, zygotes and Ray actors: frozen dataclasses and their
JSON form (one line each on a control channel).

    Start         serve one function, once: on the listener the worker inherited (`listen_fd`,
                  local backend) or on one it makes at `socket` (Ray nodes)
    BecomeZygote  a fresh worker becomes an image zygote (`cove._container.forkserver`)
    Fork          a zygote forks a function zygote or a container, which then runs `start`
    Reap          the server has read the exit status of the zygote's child `pid`
    Go            a held fork is in its cgroup and network: it may start (with its data limit)

`encode` gives a message's JSON object (its kind under "op"); `decode` reads one back and refuses,
with `UnknownMessage`, an op it does not know, a missing field or one it does not expect: both
ends run the same Cove, so a mismatch is a bug to surface, not to guess around. The answers
(`{"event": "ready" | "failed" | "isolated" | "forked" | "exit", ...}`) stay plain JSON objects.
Stdlib only: zygotes import this before anything of the user's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal


class UnknownMessage(ValueError):
    """A control message this process cannot read."""


@dataclass(frozen=True)
class Start:
    """Serve `function` (a `spec_to_dict` form) from `module_file` in `source_dir`."""

    op: ClassVar[str] = "start"
    container_id: str
    function: Mapping[str, Any]
    module_file: str
    source_dir: str
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # secrets: never in repr
    workdir: str | None = None
    listen_fd: int | None = None
    socket: str | None = None


@dataclass(frozen=True)
class BecomeZygote:
    op: ClassVar[str] = "zygote"


@dataclass(frozen=True)
class Isolation:
    """What a fork makes its own (see `cove._runtime.backends.local.namespaces`)."""

    private_dirs: tuple[str, ...]
    network: bool


@dataclass(frozen=True)
class Fork:
    """Fork `id` as a function zygote or a container; `hold`: wait for `Go` once isolated. `sent`
    is the server's `time.monotonic()` when it asked (one clock for the whole machine)."""

    op: ClassVar[str] = "fork"
    id: str
    role: Literal["function", "container"]
    start: Start
    plan: Isolation | None = None
    hold: bool = False
    sent: float = 0.0


@dataclass(frozen=True)
class Reap:
    op: ClassVar[str] = "reap"
    pid: int


@dataclass(frozen=True)
class Go:
    op: ClassVar[str] = "go"
    data_bytes: int | None = None


Message = Start | BecomeZygote | Fork | Reap | Go
_KINDS: dict[str, type[Message]] = {kind.op: kind for kind in (Start, BecomeZygote, Fork, Reap, Go)}


def encode(message: Message) -> dict[str, Any]:
    """`message` as a JSON object, its kind under "op"."""
    data: dict[str, Any] = {"op": message.op}
    for name in (f.name for f in dataclasses.fields(message)):
        value = getattr(message, name)
        if isinstance(value, Start | Isolation):
            value = encode(value) if isinstance(value, Start) else dataclasses.asdict(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        data[name] = value
    return data


def decode(data: Mapping[str, Any]) -> Message:
    """The message `data` encodes; `UnknownMessage` if it is not one this process knows."""
    op = data.get("op")
    kind = _KINDS.get(op) if isinstance(op, str) else None
    if kind is None:
        raise UnknownMessage(f"unknown control message op {op!r}; known: {', '.join(sorted(_KINDS))}")
    fields = {f.name for f in dataclasses.fields(kind)}
    # "fds": how many descriptors rode along with it, the channel's business, not the message's.
    values = {k: v for k, v in data.items() if k not in ("op", "fds")}
    unexpected = sorted(set(values) - fields)
    if unexpected:
        raise UnknownMessage(f"control message {op!r} has unexpected fields {unexpected}")
    if kind is Fork:
        if "start" in values:  # else reported as a missing field below
            values["start"] = _start(values["start"])
        plan = values.get("plan")
        if plan is not None:
            try:
                values["plan"] = Isolation(tuple(plan["private_dirs"]), bool(plan["network"]))
            except (KeyError, TypeError) as exc:
                raise UnknownMessage(f"control message 'fork' has a malformed plan {plan!r}") from exc
    try:
        return kind(**values)
    except TypeError as exc:
        raise UnknownMessage(f"control message {op!r} is malformed: {exc}") from exc


def _start(data: Any) -> Start:
    if not isinstance(data, Mapping):
        raise UnknownMessage(f"a fork's start must be a start message, not {data!r}")
    start = decode(data)
    if not isinstance(start, Start):
        raise UnknownMessage(f"a fork's start must be a start message, not {start.op!r}")
    return start
