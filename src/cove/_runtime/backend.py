"""The runtime backend interface: what the pool needs from whatever starts containers."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from cove._spec import FunctionSpec

Stream = Literal["stdout", "stderr", "system"]
#: (container_id, stream, line) -> None; lines come without their trailing newline.
LogSink = Callable[[str, Stream, str], None]


class ContainerState(enum.Enum):
    """Lifecycle of a container. Allowed moves: STARTING→READY|FAILED, READY→DRAINING|EXITED,
    DRAINING→EXITED, any→EXITED when the process dies."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    EXITED = "exited"


@dataclass(frozen=True)
class ContainerRequest:
    """What a backend needs to start one container of a function."""

    app_name: str
    function: FunctionSpec
    module_file: str
    source_dir: str
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # secrets: never in repr


class StartupError(Exception):
    """A container could not start; `reason` is one line for the 503 body, details are in the logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ContainerHandle(Protocol):
    """One running container, as seen by the pool."""

    @property
    def id(self) -> str: ...

    @property
    def address(self) -> str: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait_ready(self) -> None:
        """Return once the container accepts requests; raise `StartupError` if it cannot."""

    async def wait_exit(self) -> int:
        """Return the exit code once the container's process has ended."""

    async def stop(self, grace_s: float = 30.0) -> None:
        """Ask the container to stop (SIGTERM: drain, run @exit), kill it after `grace_s`."""


class Backend(Protocol):
    """Starts containers. The local backend runs worker processes; others may run elsewhere."""

    async def start(self) -> None: ...

    def launch(self, request: ContainerRequest, log: LogSink) -> ContainerHandle:
        """Begin starting a container; readiness is awaited through the handle."""

    async def close(self) -> None: ...
