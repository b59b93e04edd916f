"""What the app registry keeps: apps, their versions, endpoints and sources, as plain records."""

from __future__ import annotations

import asyncio
import enum
import re
import time
from dataclasses import dataclass, field
from typing import Literal

from cove._runtime.backend import ContainerRequest
from cove._runtime.pool import FunctionPool
from cove._spec import AppSpec
from cove.exception import InvalidError

_APP_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
AppKind = Literal["ephemeral", "deployed"]


class AppState(enum.Enum):
    """RUNNING→STOPPED; a stopped app's hosts answer 404 until it runs again."""

    RUNNING = "running"
    STOPPED = "stopped"


def validate_app_name(name: str) -> str:
    if not _APP_NAME_RE.match(name) or name.startswith("ap-"):
        raise InvalidError(
            f"Invalid app name {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
            "(not starting with 'ap-'), e.g. cove.App('my-app')."
        )
    return name


@dataclass(frozen=True)
class Source:
    """Where a version's code lives: the user's file and the directory put on `sys.path`."""

    module_file: str
    source_dir: str


@dataclass(frozen=True)
class Endpoint:
    """One web function of a running version, at its URL."""

    tag: str
    host: str
    url: str
    kind: str
    custom_domains: tuple[str, ...] = ()
    requires_proxy_auth: bool = False


@dataclass(eq=False)
class Version:
    """One immutable version of an app with the pools serving it."""

    number: int
    spec: AppSpec
    source: Source
    endpoints: tuple[Endpoint, ...]
    pools: dict[str, FunctionPool]
    created_at: float = field(default_factory=time.time)
    requests: tuple[ContainerRequest, ...] = ()  # what its pools launch; spares are kept for these


@dataclass(eq=False)
class AppRecord:
    name: str
    kind: AppKind
    state: AppState = AppState.RUNNING
    current: Version | None = None
    versions: int = 0
    session: str | None = None
    created_at: float = field(default_factory=time.time)
    session_changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def log_key(self) -> str:
        """Logs of `cove serve` and of the deployed app of the same name are kept apart."""
        return self.name if self.kind == "deployed" else f"{self.name}@serve"

    def container_count(self) -> int:
        if self.current is None or self.state is AppState.STOPPED:
            return 0
        return sum(p.container_count for p in self.current.pools.values())
