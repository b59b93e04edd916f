"""A forked container's own namespaces inside its zygote's sandbox: user, mount and (web_server) network.

A zygote runs in a bubblewrap sandbox with one capability kept, CAP_SETFCAP, and runs no code of the
user's with more (the sandbox's bounding set holds nothing else). A container forked from it calls
`isolate()` before any user code of its own runs:

1. a new user namespace (where it is root with every capability, over its own namespaces only),
   mapping its root to the sandbox's root: allowed because the process that created the namespace had
   CAP_SETFCAP in the sandbox (Linux ≥ 5.12 asks for it when root is mapped);
2. a new mount namespace, where `/tmp`, the home directory and a working directory elsewhere become
   fresh tmpfs mounts with the zygote's top-level entries bound back in (read-only ones stay
   read-only): new files are the container's own, as in a sandbox of its own;
3. for `web_server` functions a new network namespace with loopback up, so two containers of one
   function both bind their port (the server attaches outbound network to it, as for a sandbox);
4. every capability dropped (bounding, ambient, effective, permitted), as bubblewrap's `--cap-drop ALL`.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2
_CAP_SETFCAP = 31
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Plan:
    """What one forked container gets of its own. `staging` is a directory the sandbox always has
    (its run dir), used for a moment and left behind as an empty private tmpfs."""

    private_dirs: tuple[str, ...]
    network: bool
    staging: str = "/cove/run"


def private_dirs(home: str, workdir: str) -> tuple[str, ...]:
    """The writable directories a container must not share with its siblings: /tmp, the home
    directory, and the working directory unless it lies in one of those."""
    dirs = ["/tmp", home]
    inner = PurePosixPath(workdir)
    if not any(PurePosixPath(d) in (inner, *inner.parents) for d in dirs):
        dirs.append(workdir)
    return tuple(dirs)


def isolate(plan: Plan, *, keep_setfcap: bool = False) -> None:
    """Enter the container's own namespaces and drop every capability (see the module docstring).

    A function zygote keeps CAP_SETFCAP (and nothing else), so that its own forks can do the same.
    """
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | (CLONE_NEWNET if plan.network else 0)), "unshare")
    _write("/proc/self/uid_map", "0 0 1\n")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/gid_map", "0 0 1\n")
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    _make_private(plan.private_dirs, plan.staging)
    if plan.network:
        _loopback_up()
    drop_capabilities(keep=(_CAP_SETFCAP,) if keep_setfcap else ())


def _make_private(dirs: Sequence[str], staging: str) -> None:
    _mount("tmpfs", staging, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0700")
    olds: list[str] = []
    for index, directory in enumerate(dirs):
        old = f"{staging}/old{index}"
        os.mkdir(old)
        _mount(directory, old, None, _MS_BIND | _MS_REC)
        olds.append(old)
    for directory, old in zip(dirs, olds, strict=True):
        mode = "mode=1777" if directory == "/tmp" else "mode=0755"
        _mount("tmpfs", directory, "tmpfs", _MS_NOSUID | _MS_NODEV, mode)
        for name in os.listdir(old):
            _bind_back(f"{old}/{name}", f"{directory}/{name}")
    for old in olds:
        _check(_libc.umount2(old.encode(), _MNT_DETACH), f"umount {old}")
        os.rmdir(old)


def _bind_back(source: str, target: str) -> None:
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
        return
    if os.path.isdir(source):
        os.mkdir(target)
    else:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o600))
    # Recursive: mounts under a bound entry came from the sandbox as one locked unit.
    _mount(source, target, None, _MS_BIND | _MS_REC)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | _IFF_UP))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_capabilities(keep: Sequence[int] = ()) -> None:
    """Drop every capability but `keep` for good: from the bounding and ambient sets, then the rest."""
    with open("/proc/sys/kernel/cap_last_cap") as file:
        last = int(file.read())
    for capability in range(last + 1):
        if capability not in keep:
            _check(_libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0), "drop from the bounding set")
    _check(_libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for capability in keep:
        word, bit = divmod(capability, 32)
        data[word].effective |= 1 << bit
        data[word].permitted |= 1 << bit
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    result = _libc.mount(
        source.encode() if source else None,
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    _check(result, f"mount {source or ''} on {target}")


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
