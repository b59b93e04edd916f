"""What this host offers for isolation (bubblewrap, pasta) and where a container's parts go.

`Host` probes once per server. `place()` turns a `ContainerRequest` into a `Placement`: the sandbox
needs (for `sandbox.container_argv`) and the paths the worker sees, or, where bubblewrap cannot run,
a plain process on the image's interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

import cove
from cove._bundle import IGNORED_DIRS, IGNORED_SUFFIXES
from cove._runtime.backend import ContainerRequest, StartupError
from cove._runtime.backends.local import sandbox
from cove._runtime.backends.local.sandbox import Bind, ContainerNeeds, HostSystem, NetworkMode
from cove._runtime.tether import tethered
from cove.config import SandboxSetting

log = logging.getLogger("cove.runtime")

NetworkTool = Literal["pasta"]


@functools.cache
def probe_bwrap() -> tuple[str | None, str]:
    """The bwrap executable if it can create the namespaces containers use, else (None, why)."""
    path = shutil.which("bwrap")
    if path is None:
        return None, "bubblewrap is not installed (Debian: apt-get install bubblewrap)"
    try:
        result = subprocess.run(
            [path, "--ro-bind", "/", "/", "--unshare-all", "--unshare-user", "--as-pid-1", "--", "true"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"bubblewrap could not run: {exc}"
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        return None, f"bubblewrap cannot create namespaces here: {reason}"
    return path, ""


def _host_system() -> HostSystem:
    dirs: list[str] = []
    links: list[tuple[str, str]] = []
    for path in sandbox.SYSTEM_PATHS:
        if os.path.islink(path):
            links.append((path, os.readlink(path)))
        elif os.path.isdir(path):
            dirs.append(path)
    etc = tuple(path for path in sandbox.ETC_ALLOWLIST if os.path.lexists(path) and os.path.exists(path))
    return HostSystem(dirs=tuple(dirs), links=tuple(links), etc=etc)


class Host:
    """This machine's isolation tools, probed once; logs one warning for each missing piece."""

    def __init__(self, setting: SandboxSetting, state_dir: Path) -> None:
        self.bwrap: str | None = None
        if setting == "off":
            self.reason = "COVE_SANDBOX=off"
        else:
            self.bwrap, self.reason = probe_bwrap()
        if self.bwrap is None:
            log.warning(
                "event=sandbox_unavailable reason=%r: containers run as plain processes, without "
                "namespaces (no filesystem, network or port isolation)",
                self.reason,
            )
        self.network_tool: NetworkTool | None = None
        if shutil.which("pasta"):
            self.network_tool = "pasta"
        self._warned_network = False
        self.networks: set[Network] = set()  # the pasta processes running now
        self.system = _host_system()
        self.is_root = os.geteuid() == 0
        self.sdk = str(Path(cove.__file__).resolve().parent)
        # Plain processes get PYTHONPATH=<this dir>, holding only a link to the cove package: the
        # server's other site-packages stay out of the image.
        self.plain_sdk = state_dir / "sdk"
        self.plain_sdk.mkdir(parents=True, exist_ok=True)
        link = self.plain_sdk / "cove"
        if not (link.is_symlink() and os.readlink(link) == self.sdk):
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to(self.sdk)

    async def close(self) -> None:
        """Stop the network helpers still running (the server is stopping) and reap them."""
        for network in list(self.networks):
            network.stop()
        await asyncio.gather(*(network.wait(timeout_s=5) for network in list(self.networks)))

    def network_for(self, block_network: bool) -> NetworkMode:
        if block_network:
            return "none"
        if self.network_tool is None and not self._warned_network:
            self._warned_network = True
            log.warning(
                "event=no_outbound_network reason=%r",
                "pasta is not installed (Debian: apt-get install passt); containers have no outbound network",
            )
        return "outbound"


@dataclass(frozen=True)
class Placement:
    """Where one request's container runs and what its worker sees."""

    key: tuple[object, ...]
    needs: ContainerNeeds | None  # None: a plain process
    python: str
    plain_env: dict[str, str] = field(repr=False)
    module_file: str = ""
    source_dir: str = ""
    workdir: str = ""
    cpu: float | None = None
    memory_mib: int | None = None


def _entries(directory: str) -> tuple[str, ...]:
    """Top-level names of a source directory worth showing a container (as bundles filter them)."""
    names: list[str] = []
    with contextlib.suppress(OSError), os.scandir(directory) as scan:
        for entry in scan:
            if entry.name in IGNORED_DIRS or entry.name.endswith(IGNORED_SUFFIXES) or entry.name == ".cove":
                continue
            if entry.is_dir() or entry.is_file():  # follows links; skips sockets and dangling links
                names.append(entry.name)
    return tuple(sorted(names))


def _inodes(paths: list[str]) -> tuple[int, ...]:
    found: list[int] = []
    for path in paths:
        try:
            found.append(os.stat(path).st_ino)
        except OSError:
            found.append(-1)
    return tuple(found)


def _listing(directory: Path) -> tuple[str, ...]:
    with contextlib.suppress(OSError):
        return tuple(sorted(os.listdir(directory)))
    return ()


def place(host: Host, request: ContainerRequest) -> Placement:
    """Map a request onto this host: a sandbox when bubblewrap runs here, else a plain process."""
    fn = request.function
    image = request.image
    if request.volumes and (image is None or host.bwrap is None):
        raise StartupError(
            f"{fn.tag} mounts Volumes, which need the bubblewrap sandbox (install bubblewrap, "
            "and do not set COVE_SANDBOX=off)"
        )
    if image is None:
        # No image: the server's interpreter and environment, as before images existed.
        env = dict(os.environ)
        return Placement(
            key=("server",),
            needs=None,
            python=sys.executable,
            plain_env=env,
            module_file=request.module_file,
            source_dir=request.source_dir,
            workdir=request.source_dir,
        )
    relative = os.path.relpath(request.module_file, request.source_dir)
    if host.bwrap is None:
        env = {
            "PATH": f"{image.venv}/bin:{sandbox.DEFAULT_PATH}",
            "HOME": os.path.expanduser("~"),
            "LANG": "C.UTF-8",
            "VIRTUAL_ENV": image.venv,
            "PYTHONPATH": str(host.plain_sdk),
            "PYTHONUNBUFFERED": "1",
            **dict(image.env),
        }
        return Placement(
            key=("plain", image.key, image.build_id, tuple(sorted(env.items()))),
            needs=None,
            python=f"{image.venv}/bin/python",
            plain_env=env,
            module_file=request.module_file,
            source_dir=request.source_dir,
            workdir=request.source_dir,
            cpu=fn.cpu,
            memory_mib=fn.memory_mib,
        )
    workdir = image.workdir or sandbox.HOME
    source_entries = _entries(request.source_dir)
    taken = {f"{sandbox.HOME}/{name}" for name in source_entries}
    extra = tuple(Bind(src, dst) for src, dst in request.extra_source if dst not in taken)
    image_home: tuple[str, ...] = ()
    workdir_entries: tuple[str, ...] = ()
    if image.rootfs is not None:
        image_home = tuple(
            name for name in _listing(Path(image.rootfs) / "root") if f"{sandbox.HOME}/{name}" not in taken
        )
        inner = PurePosixPath(workdir)
        if not (inner == PurePosixPath("/tmp") or PurePosixPath(sandbox.HOME) in (inner, *inner.parents)):
            workdir_entries = _listing(Path(image.rootfs) / workdir.lstrip("/"))
    needs = ContainerNeeds(
        command=("python", "-m", "cove._container.entrypoint"),
        venv=image.venv,
        sdk=host.sdk,
        run_dir="/",  # per container: filled in at spawn
        interpreter=image.interpreter,
        rootfs=image.rootfs,
        host=host.system,
        files=tuple(Bind(src, dst) for src, dst in image.files),
        source_dir=request.source_dir,
        source_entries=source_entries,
        extra_source=extra,
        mounts=(
            *(Bind(src, dst) for src, dst in request.mounts),
            *(Bind(src, dst, writable=True) for src, dst in request.volumes),  # Volumes
        ),
        workdir=workdir,
        image_home=image_home,
        workdir_entries=workdir_entries,
        env=image.env,
        network=host.network_for(fn.block_network),
        host_is_root=host.is_root,
        api_dir=os.path.dirname(request.api_socket) if request.api_socket else None,
    )
    # Binds pin inodes: a file replaced by an editor's atomic save is a new inode that an older
    # sandbox would not see, so the inodes are part of what makes a spare fit.
    bound = [f"{request.source_dir}/{name}" for name in source_entries]
    bound += [src for src, _ in (*request.mounts, *request.extra_source)]
    return Placement(
        key=("sandbox", image.build_id, sandbox.spare_key(needs), _inodes(bound), fn.cpu, fn.memory_mib),
        needs=needs,
        python="python",
        plain_env={},
        module_file=f"{sandbox.HOME}/{relative}",
        source_dir=sandbox.HOME,
        workdir=workdir,
        cpu=fn.cpu,
        memory_mib=fn.memory_mib,
    )


#: pasta configures the namespace within milliseconds; this long means it is stuck.
_NETWORK_ATTACH_TIMEOUT_S = 30.0


class Network:
    """A container's outbound network: the pasta process attached to its namespace, owned by the
    server (a child of its event loop's thread, killed by the kernel if the server dies; see `tether`)."""

    def __init__(self, process: asyncio.subprocess.Process, live: set[Network]) -> None:
        self.process = process
        self._reaped = asyncio.ensure_future(process.wait())
        live.add(self)
        self._reaped.add_done_callback(lambda _: live.discard(self))

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """Stop pasta (it serves a namespace that is gone or going); the event loop reaps it."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()

    async def wait(self, timeout_s: float) -> None:
        """Wait until pasta has exited and been reaped; kill it past `timeout_s`."""
        try:
            await asyncio.wait_for(asyncio.shield(self._reaped), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self._reaped


async def attach_network(host: Host, pid: int) -> Network | None:
    """Give the network namespace of `pid` outbound access through a user-mode stack (None: no tool,
    or it failed, which is logged; the container then has loopback only).

    pasta runs outside the sandbox, in the foreground as the server's child (so it dies with the
    server), and writes its pid to the pipe named by `--pid` once the namespace is configured: that
    line is the readiness signal. Inbound port forwarding stays off and the host's loopback is not
    mapped in, so a container cannot reach services listening on the host's 127.0.0.1.
    """
    if host.network_tool != "pasta":
        return None
    ready_read, ready_write = os.pipe()
    argv = [
        "pasta",
        "--foreground",
        "--config-net",
        "--quiet",
        "--no-map-gw",
        "-t",
        "none",
        "-u",
        "none",
        "-T",
        "none",
        "-U",
        "none",
        "--pid",
        f"/dev/fd/{ready_write}",
        "--netns",
        f"/proc/{pid}/ns/net",
        "--userns",
        f"/proc/{pid}/ns/user",
    ]
    if host.is_root:
        argv += ["--runas", "0"]  # pasta would drop to `nobody`, who may not enter our namespaces
    with tempfile.TemporaryFile() as errors:
        try:
            process = await asyncio.create_subprocess_exec(
                *tethered(argv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=errors,
                pass_fds=(ready_write,),
                start_new_session=True,
            )
        except BaseException:
            os.close(ready_read)
            raise
        finally:
            os.close(ready_write)
        network = Network(process, host.networks)
        try:
            line = await asyncio.wait_for(
                asyncio.to_thread(_read_line, ready_read), _NETWORK_ATTACH_TIMEOUT_S
            )
        except BaseException:
            network.stop()
            raise
        if line:
            return network
        code = await process.wait()
        errors.seek(0)
        log.warning(
            "event=network_attach_failed tool=pasta code=%s error=%r",
            code,
            errors.read().decode("utf-8", "replace").strip()[-300:],
        )
        return None


def _read_line(fd: int) -> bytes:
    """The first line written to pipe `fd` (b"" if every writer closed it first); closes `fd`."""
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = os.read(fd, 64)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data
