"""The sandbox as pure functions: what a container (or an image build step) needs in, bwrap's argv out.

Nothing here touches the disk or the clock. The caller says which host paths exist (system
directories, the top-level entries of the app's source), so the argv is a function of its inputs.

What a container sees (local backend, bubblewrap):

    /                  read-only. The image's root filesystem (images with apt_install/run_commands),
                       or an empty root with the host's system dirs (/usr, /bin, ... and a short
                       allow-list of /etc) for virtualenv-only images.
    <interpreter>      the base Python of the image's virtualenv, read-only at its host path
    /cove/venv         the image's virtualenv, read-only (on PATH)
    /cove/sdk/cove     the Cove package (the worker's own code), read-only (PYTHONPATH=/cove/sdk)
    /root              private tmpfs: HOME and working directory, with each top-level entry of the
                       app's source bound read-only inside it
    <remote paths>     baked files (copy=True) and mounted local files/dirs, read-only
    /cove/run          the container's own directory on the host (scratch for a zygote's forks). Its
                       HTTP socket is not here: the server makes it where no container can write
                       and passes it down as a listening descriptor (see `spawner`)
    /cove/api          read-only: the directory of its app's scoped control socket (`control.sock`),
                       through which it may call functions of its app and nothing else of the API
    /tmp               private tmpfs
    /dev, /proc        minimal devices; a /proc of its own PID namespace

It runs in new user, mount, PID, IPC, UTS, cgroup and network namespaces with every capability
dropped. Its network namespace has only loopback; outbound access (`network="outbound"`) is added by
the caller, which attaches a user-mode network stack (pasta) to the namespace after start.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from cove._runtime.backend import CONTAINER_HOME

#: Container paths of the pieces Cove itself puts in every container.
VENV = "/cove/venv"
SDK = "/cove/sdk"
RUN = "/cove/run"
HOME = CONTAINER_HOME
API_DIR = "/cove/api"

NetworkMode = Literal["none", "outbound"]

#: /etc entries a virtualenv-only image sees from the host: name service, TLS roots, time zone,
#: linker cache. Everything else in the host's /etc (shadow, ssh keys, ...) stays invisible.
ETC_ALLOWLIST = (
    "/etc/alternatives",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/debian_version",
    "/etc/gai.conf",
    "/etc/group",
    "/etc/host.conf",
    "/etc/hosts",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/mime.types",
    "/etc/nsswitch.conf",
    "/etc/os-release",
    "/etc/passwd",
    "/etc/protocols",
    "/etc/resolv.conf",
    "/etc/services",
    "/etc/ssl",
    "/etc/timezone",
)
#: Host system directories a virtualenv-only image sees (or the symlinks to them, on merged-/usr hosts).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

#: Capabilities a build step keeps (Docker's default set without MKNOD and NET_RAW): enough for
#: apt/dpkg to chown files and drop to the `_apt` user, not enough to mount or load modules.
BUILD_CAPABILITIES = (
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Bind:
    """A host path made visible at `target` in the sandbox."""

    source: str
    target: str
    writable: bool = False


@dataclass(frozen=True)
class HostSystem:
    """The host's system directories as found on disk, for images without a root filesystem.

    `dirs` are bound read-only at the same path, `links` are recreated as symlinks ((path, target),
    e.g. ("/bin", "usr/bin") on merged-/usr Debian), `etc` are the allow-listed /etc entries that exist.
    """

    dirs: tuple[str, ...] = ("/usr",)
    links: tuple[tuple[str, str], ...] = ()
    etc: tuple[str, ...] = ()


@dataclass(frozen=True)
class Limits:
    """Resource limits applied before the sandbox starts.

    `cgroup_procs` are `cgroup.procs` files (v2, or one per v1 hierarchy) that the caller prepared
    with the limits; the process joins them first, so everything in the sandbox is accounted there.
    `data_bytes` is the RLIMIT_DATA fallback for memory where no cgroup can be used.
    """

    cgroup_procs: tuple[str, ...] = ()
    data_bytes: int | None = None


@dataclass(frozen=True)
class ContainerNeeds:
    """Everything that decides what one container sees. Equal needs → interchangeable sandboxes."""

    command: tuple[str, ...]
    venv: str
    sdk: str
    run_dir: str
    interpreter: tuple[str, ...] = ()
    rootfs: str | None = None
    host: HostSystem = HostSystem()
    files: tuple[Bind, ...] = ()
    source_dir: str | None = None
    source_entries: tuple[str, ...] = ()
    extra_source: tuple[Bind, ...] = ()
    mounts: tuple[Bind, ...] = ()
    workdir: str = HOME
    image_home: tuple[str, ...] = ()
    workdir_entries: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    network: NetworkMode = "outbound"
    hostname: str = "cove"
    control_fd: int | None = None
    info_fd: int | None = None
    host_is_root: bool = True
    limits: Limits = Limits()
    api_dir: str | None = None  # host directory of the app's scoped control socket (→ API_DIR)


@dataclass(frozen=True)
class BuildNeeds:
    """One image build step run inside a writable root filesystem, with network access."""

    command: tuple[str, ...]
    rootfs: str
    binds: tuple[Bind, ...] = ()
    workdir: str = "/"
    env: tuple[tuple[str, str], ...] = ()
    host_is_root: bool = True


def _check_absolute(path: str, what: str) -> None:
    if not PurePosixPath(path).is_absolute():
        raise ValueError(f"{what} must be an absolute path, got {path!r}")


def _is_under(path: str, parent: str) -> bool:
    p, q = PurePosixPath(path), PurePosixPath(parent)
    return p == q or q in p.parents


def _bind_args(bind: Bind) -> list[str]:
    _check_absolute(bind.source, "a bind source")
    _check_absolute(bind.target, "a bind target")
    return ["--bind" if bind.writable else "--ro-bind", bind.source, bind.target]


def _entry(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"a directory entry is one name, got {name!r}")
    return name


def _restore(rootfs: str | None, directory: str, entries: tuple[str, ...]) -> list[str]:
    if rootfs is None:
        return []
    argv: list[str] = []
    for name in entries:
        path = f"{directory.rstrip('/')}/{_entry(name)}"
        argv += ["--ro-bind", f"{rootfs.rstrip('/')}{path}", path]
    return argv


def container_env(needs: ContainerNeeds) -> list[tuple[str, str]]:
    """The container's whole environment (the server's own is never inherited). No secrets here:
    those arrive with the start message, so they never appear in an argv or a process listing."""
    env: dict[str, str] = {
        "PATH": f"{VENV}/bin:{DEFAULT_PATH}",
        "HOME": HOME,
        "LANG": "C.UTF-8",
        "VIRTUAL_ENV": VENV,
        "PYTHONPATH": SDK,
        "PYTHONUNBUFFERED": "1",
    }
    for key, value in needs.env:
        if key == "PATH":
            # The image's PATH still finds the virtualenv's python first.
            value = f"{VENV}/bin:{value}"
        elif key == "PYTHONPATH":
            value = f"{SDK}:{value}"
        env[key] = value
    if needs.control_fd is not None:
        env["COVE_CONTROL_FD"] = str(needs.control_fd)
    return sorted(env.items())


def container_argv(needs: ContainerNeeds, bwrap: str = "bwrap") -> list[str]:
    """The argv that starts `needs.command` in its sandbox (see the module docstring for the layout)."""
    if not needs.command:
        raise ValueError("a container needs a command")
    for path in (needs.venv, needs.sdk, needs.run_dir, needs.workdir, *needs.interpreter):
        _check_absolute(path, "a container path")
    argv = [bwrap]
    if needs.rootfs is not None:
        _check_absolute(needs.rootfs, "the image's root filesystem")
        # Bound writable only while bwrap creates mount points; remounted read-only below, before
        # the command runs.
        argv += ["--bind", needs.rootfs, "/"]
    else:
        for path in needs.host.dirs:
            argv += ["--ro-bind", path, path]
        for link, target in needs.host.links:
            argv += ["--symlink", target, link]
        for path in needs.host.etc:
            if needs.network == "none" and path == "/etc/resolv.conf":
                continue  # nothing to resolve with
            argv += ["--ro-bind", path, path]
    if needs.rootfs is not None and needs.network == "outbound":
        argv += ["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
    argv += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", HOME]
    # /root (and a working dir elsewhere) are private and writable; what the image put there is
    # bound back read-only on top.
    argv += _restore(needs.rootfs, HOME, needs.image_home)
    if not _is_under(needs.workdir, HOME) and not _is_under(needs.workdir, "/tmp"):
        argv += ["--tmpfs", needs.workdir]
        argv += _restore(needs.rootfs, needs.workdir, needs.workdir_entries)
    for path in needs.interpreter:
        argv += ["--ro-bind", path, path]
    argv += ["--ro-bind", needs.venv, VENV]
    argv += ["--ro-bind", needs.sdk, f"{SDK}/cove"]
    for bind in needs.files:
        argv += _bind_args(bind)
    if needs.source_dir is not None:
        _check_absolute(needs.source_dir, "the source directory")
        for entry in needs.source_entries:
            argv += ["--ro-bind", f"{needs.source_dir.rstrip('/')}/{_entry(entry)}", f"{HOME}/{entry}"]
    for bind in needs.extra_source:
        argv += _bind_args(bind)
    for bind in needs.mounts:
        argv += _bind_args(bind)
    argv += ["--bind", needs.run_dir, RUN]
    if needs.api_dir is not None:
        _check_absolute(needs.api_dir, "the control socket's directory")
        # Read-only: connecting to a socket needs no write access to its mount, and the container
        # can neither replace the socket nor add others next to it.
        argv += ["--ro-bind", needs.api_dir, API_DIR]
    argv += ["--remount-ro", "/"]
    argv += [
        "--unshare-all",  # user, ipc, pid, net, uts, cgroup
        "--unshare-user",
        "--hostname",
        needs.hostname,
        "--die-with-parent",
        # bwrap's own minimal init is PID 1 (it reaps orphans); the command is its only child. The
        # supervisor signals the command itself, since neither bwrap nor its init forwards signals.
        "--new-session",
        "--cap-drop",
        "ALL",
        "--chdir",
        needs.workdir,
        "--clearenv",
    ]
    for key, value in container_env(needs):
        argv += ["--setenv", key, value]
    if needs.info_fd is not None:
        argv += ["--info-fd", str(needs.info_fd)]
    argv += ["--", *needs.command]
    return with_limits(argv, needs.limits)


def with_limits(argv: Sequence[str], limits: Limits) -> list[str]:
    """Prefix `argv` with a shell that joins the cgroups and sets rlimits, then execs it."""
    steps = [f"echo $$ > {shlex.quote(path)}" for path in limits.cgroup_procs]
    if limits.data_bytes is not None:
        if limits.data_bytes <= 0:
            raise ValueError(f"a memory limit must be positive, got {limits.data_bytes}")
        steps.append(f"ulimit -d {max(1, limits.data_bytes // 1024)}")
    if not steps:
        return list(argv)
    script = " && ".join([*steps, 'exec "$@"'])
    return ["/bin/sh", "-c", script, "cove-limits", *argv]


def build_env(env: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """A build step's environment: a fixed base plus the step's (and the image's) variables."""
    merged = {
        "PATH": f"{VENV}/bin:{DEFAULT_PATH}",
        "HOME": HOME,
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    merged.update(dict(env))
    return sorted(merged.items())


def build_argv(needs: BuildNeeds, bwrap: str = "bwrap") -> list[str]:
    """The argv that runs one build step with `needs.rootfs` as a writable root and the network shared."""
    if not needs.command:
        raise ValueError("a build step needs a command")
    _check_absolute(needs.rootfs, "the image's root filesystem")
    _check_absolute(needs.workdir, "the working directory")
    argv = [bwrap, "--bind", needs.rootfs, "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    argv += ["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
    for bind in needs.binds:
        argv += _bind_args(bind)
    argv += ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
    if not needs.host_is_root:
        # Unprivileged bubblewrap: a user namespace where the step is root of its own files.
        argv += ["--unshare-user", "--uid", "0", "--gid", "0"]
    argv += ["--share-net", "--hostname", "cove-build", "--die-with-parent", "--new-session"]
    argv += ["--cap-drop", "ALL"]
    for capability in BUILD_CAPABILITIES:
        argv += ["--cap-add", capability]
    argv += ["--chdir", needs.workdir, "--clearenv"]
    for key, value in build_env(needs.env):
        argv += ["--setenv", key, value]
    argv += ["--", *needs.command]
    return argv


def spare_key(needs: ContainerNeeds) -> tuple[object, ...]:
    """What makes two containers' sandboxes interchangeable: everything but their own run dir, fds and
    cgroups (the caller adds the limits' values)."""
    return (
        needs.command,
        needs.venv,
        needs.sdk,
        needs.interpreter,
        needs.rootfs,
        needs.host,
        needs.files,
        needs.source_dir,
        needs.source_entries,
        needs.extra_source,
        needs.mounts,
        needs.workdir,
        needs.image_home,
        needs.workdir_entries,
        needs.env,
        needs.network,
        needs.hostname,
        needs.host_is_root,
        needs.api_dir,
    )
