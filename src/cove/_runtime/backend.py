"""The runtime backend interface: what the pool needs from whatever starts containers."""

from __future__ import annotations

import enum
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from cove._spec import FunctionSpec

Stream = Literal["stdout", "stderr", "system"]
#: (container_id, stream, line) -> None; lines come without their trailing newline.
LogSink = Callable[[str, Stream, str], None]


#: Unix socket paths are limited to 107 bytes (sun_path); keep ours well below.
_MAX_SOCKET_DIR = 80


def socket_dir(home: Path) -> Path:
    """The directory of the sockets the server makes for containers and their apps (any backend):
    under COVE_HOME when the path is short enough, else a private one in the temp dir."""
    candidate = home / "run"
    if len(str(candidate)) > _MAX_SOCKET_DIR:
        candidate = Path(tempfile.gettempdir()) / f"cove-{os.getuid()}-{abs(hash(str(home))) % 10**8}"
    candidate.mkdir(parents=True, exist_ok=True, mode=0o700)
    return candidate


class ContainerState(enum.Enum):
    """Lifecycle of a container. Allowed moves: STARTING→READY|FAILED, READY→DRAINING|EXITED,
    DRAINING→EXITED, any→EXITED when the process dies."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    EXITED = "exited"


@dataclass(frozen=True)
class ImageLayout:
    """A built image, as a backend runs it: host paths of its parts and what the recipe sets.

    `files` are baked copies (copy=True) as (host path, container path); `interpreter` are the host
    paths the virtualenv's base Python needs, made visible at the same place.
    """

    key: str
    build_id: str
    venv: str
    interpreter: tuple[str, ...] = ()
    rootfs: str | None = None
    files: tuple[tuple[str, str], ...] = ()
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    workdir: str | None = None


@dataclass(frozen=True)
class ContainerRequest:
    """What a backend needs to start one container of a function.

    Without an `image` the container runs on the server's own interpreter, unsandboxed (tests of
    the pool and gateway use that). `mounts` are (host path, container path) pairs of
    `add_local_file`/`add_local_dir`, and `extra_source` those of `add_local_python_source` that
    live outside `source_dir`; both are mounted read-only. `api_socket` is the host path of the
    scoped control socket of the app (see `cove._control.container_api`). `volumes` are (host
    directory, container path) pairs of the Volumes the function mounts, read-write.
    """

    app_name: str
    function: FunctionSpec
    module_file: str
    source_dir: str
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # secrets: never in repr
    image: ImageLayout | None = None
    mounts: tuple[tuple[str, str], ...] = ()
    extra_source: tuple[tuple[str, str], ...] = ()
    app_kind: Literal["ephemeral", "deployed"] = "deployed"
    api_socket: str | None = None  # host path of the app's scoped control socket, if it has one
    volumes: tuple[tuple[str, str], ...] = ()


#: Inside a container: the path of its app's scoped control socket (read by `cove._client`).
CONTAINER_API_ENV = "COVE_CONTAINER_API"
#: Inside a container: its home and working directory, where the app's sources appear (each
#: top-level entry of its source directory, and each `add_local_python_source` package).
CONTAINER_HOME = "/root"


@dataclass(frozen=True)
class Capabilities:
    """What a backend can run, so the control plane asks this instead of naming backends.

    `image_layouts`: the image layouts it runs. "built" is an `ImageLayout` built on this machine
    (a virtualenv, perhaps a Debian root filesystem) that the server builds before it launches;
    "recipe" means the backend installs the recipe's packages itself where the container lands
    (Ray's runtime_env), so nothing is built here. `host_paths`: containers run on this machine,
    so they can mount host directories (Volumes) and reach the app's scoped control socket.
    """

    image_layouts: frozenset[Literal["built", "recipe"]]
    host_paths: bool

    @property
    def builds_images(self) -> bool:
        """The server must build images before launching: the backend cannot install a recipe."""
        return "recipe" not in self.image_layouts


def app_env(request: ContainerRequest, api_socket: str | None) -> dict[str, str]:
    """What a container is told about its app: name, kind and where its scoped control socket is
    (`api_socket`, as the container sees it; None when this backend gives it none)."""
    env = {"COVE_APP_NAME": request.app_name, "COVE_APP_KIND": request.app_kind}
    if api_socket is not None:
        env[CONTAINER_API_ENV] = api_socket
    return env


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
    def returncode(self) -> int | None:
        """The exit code if the container is known to have ended now, else None. Never waits: the
        gateway's loop asks it (issue 14, item 1)."""

    async def exit_code(self, within_s: float) -> int | None:
        """The exit code once the container has ended, waiting at most `within_s` for it (None if
        it still runs). The gateway asks right after a container's connection broke: a process
        killed mid-request closes its sockets a moment before its exit status is known."""

    async def wait_ready(self) -> None:
        """Return once the container accepts requests; raise `StartupError` if it cannot."""

    async def wait_exit(self) -> int:
        """Return the exit code once the container's process has ended."""

    async def stop(self, grace_s: float = 30.0) -> None:
        """Ask the container to stop (SIGTERM: drain, run @exit), kill it after `grace_s`."""


class Backend(Protocol):
    """Starts containers. The local backend runs worker processes; others may run elsewhere."""

    @property
    def capabilities(self) -> Capabilities: ...

    async def start(self) -> None: ...

    def prepare(self, request: ContainerRequest) -> None:
        """A version that may launch `request` is live: keep a warm spare ready for it."""

    def release(self, request: ContainerRequest) -> None:
        """That version is gone: its spares may go."""

    def launch(self, request: ContainerRequest, log: LogSink) -> ContainerHandle:
        """Begin starting a container; readiness is awaited through the handle."""

    async def close(self) -> None: ...
