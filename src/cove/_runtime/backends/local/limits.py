"""Per-container limits: a cgroup (v2, or v1 hierarchies) per container, else rlimits.

`cpu=1.5` becomes a CFS quota of 1.5 CPUs; `memory=512` a hard limit of 512 MiB (the kernel's OOM
killer ends the container past it); every container gets a cap on its processes and threads
(`COVE_MAX_PIDS`, pids.max: a fork past it fails with EAGAIN, and the container's log says the cap
was hit). Where no cgroup hierarchy is writable (not root, or a delegated v2 subtree missing its
controllers), memory falls back to RLIMIT_DATA, and cpu and the process cap are not enforced
(RLIMIT_NPROC counts a whole user's processes, not a container's, and binds no root).

Groups are named `<owner>.<container id>`, the owner naming the server's COVE_HOME: a server that
starts removes the empty groups an earlier server of its home left behind (killed, it removed none).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cove._runtime.backends.local.sandbox import Limits

log = logging.getLogger("cove.runtime")

_ROOT = Path("/sys/fs/cgroup")
_PERIOD_US = 100_000


def owner_of(home: Path) -> str:
    """The prefix of the cgroups of the server of `home` (one server per home at a time)."""
    return "cove-" + hashlib.sha256(str(home).encode()).hexdigest()[:12]


def leftover_groups(owner: str, root: Path = _ROOT) -> list[Path]:
    """The cgroups of `owner` that exist now, in any hierarchy."""
    parents = [root / "cove", *(root / kind / "cove" for kind in ("memory", "cpu", "pids"))]
    return [group for parent in parents if parent.is_dir() for group in parent.glob(f"{owner}.*")]


@dataclass(frozen=True)
class Applied:
    """The limits of one container and the cgroup directories to remove once it has exited."""

    limits: Limits
    directories: tuple[Path, ...] = ()


class Limiter:
    """Creates one cgroup per limited container under `cove/` of the first usable hierarchy.

    `owner` prefixes the groups' names (one server per owner at a time); `max_pids` caps each
    container's processes (0: no cap).
    """

    def __init__(self, root: Path = _ROOT, *, owner: str = "cove", max_pids: int = 0) -> None:
        self._root = root
        self._owner = owner
        self._max_pids = max_pids
        self._pids = False  # a pids controller is usable (set by _detect)
        self._mode = self._detect()
        self._warned = False
        # Groups whose removal failed (their last process was still being reaped): retried later.
        # (Only our own: another server on this machine may be filling a group it just made.)
        self._stale: list[Path] = []
        self._remove_leftovers()

    @property
    def mode(self) -> str:
        """ "v2", "v1" or "rlimit"."""
        return self._mode

    def _detect(self) -> str:
        if os.geteuid() != 0:
            return "rlimit"
        controllers = self._root / "cgroup.controllers"
        if controllers.is_file():
            with contextlib.suppress(OSError):
                available = controllers.read_text().split()
                if {"cpu", "memory"} <= set(available):
                    enable = "+cpu +memory" + (" +pids" if "pids" in available else "")
                    parent = self._root / "cove"
                    parent.mkdir(exist_ok=True)
                    (self._root / "cgroup.subtree_control").write_text(enable)
                    (parent / "cgroup.subtree_control").write_text(enable)
                    self._pids = "pids" in available
                    return "v2"
            return "rlimit"
        if (self._root / "memory").is_dir() and (self._root / "cpu").is_dir():
            try:
                (self._root / "memory" / "cove").mkdir(exist_ok=True)
                (self._root / "cpu" / "cove").mkdir(exist_ok=True)
            except OSError:
                return "rlimit"
            with contextlib.suppress(OSError):
                if (self._root / "pids").is_dir():
                    (self._root / "pids" / "cove").mkdir(exist_ok=True)
                    self._pids = True
            return "v1"
        return "rlimit"

    def _parents(self) -> list[Path]:
        if self._mode == "v2":
            return [self._root / "cove"]
        if self._mode == "v1":
            return [self._root / kind / "cove" for kind in ("memory", "cpu", "pids")]
        return []

    def _remove_leftovers(self) -> None:
        """Remove the empty groups of an earlier server of this owner (a busy one stays)."""
        for parent in self._parents():
            with contextlib.suppress(OSError):
                for group in parent.glob(f"{self._owner}.*"):
                    with contextlib.suppress(OSError):
                        group.rmdir()

    def apply(self, name: str, cpu: float | None, memory_mib: int | None) -> Applied:
        """Prepare the limits of container `name` (its process cap, and `cpu`/`memory_mib` if set)."""
        self._sweep()
        pids = self._max_pids if self._max_pids > 0 and self._pids else None
        if cpu is None and memory_mib is None and pids is None:
            if self._max_pids > 0:
                self._warn("COVE_MAX_PIDS is not enforced: no writable pids cgroup controller here")
            return Applied(Limits())
        memory_bytes = memory_mib * 2**20 if memory_mib is not None else None
        group = f"{self._owner}.{name}"
        if self._mode in ("v2", "v1"):
            try:
                if self._mode == "v2":
                    return self._v2(group, cpu, memory_bytes, pids)
                return self._v1(group, cpu, memory_bytes, pids)
            except OSError as exc:
                self._warn(
                    f"could not create a cgroup ({exc}); cpu= and COVE_MAX_PIDS are not enforced, "
                    "memory= uses rlimits"
                )
        elif cpu is not None:
            self._warn("no writable cgroup hierarchy: cpu= is not enforced, memory= uses RLIMIT_DATA")
        return Applied(Limits(data_bytes=memory_bytes))

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("event=limits_degraded reason=%r", message)

    def _v2(self, name: str, cpu: float | None, memory_bytes: int | None, pids: int | None) -> Applied:
        group = self._root / "cove" / name
        group.mkdir(exist_ok=True)
        if pids is not None:
            (group / "pids.max").write_text(str(pids))
        if memory_bytes is not None:
            (group / "memory.max").write_text(str(memory_bytes))
            with contextlib.suppress(OSError):
                (group / "memory.swap.max").write_text("0")
        if cpu is not None:
            (group / "cpu.max").write_text(f"{max(1000, int(cpu * _PERIOD_US))} {_PERIOD_US}")
        return Applied(Limits(cgroup_procs=(str(group / "cgroup.procs"),)), (group,))

    def _v1(self, name: str, cpu: float | None, memory_bytes: int | None, pids: int | None) -> Applied:
        groups: list[Path] = []
        if pids is not None:
            group = self._root / "pids" / "cove" / name
            group.mkdir(exist_ok=True)
            groups.append(group)
            (group / "pids.max").write_text(str(pids))
        if memory_bytes is not None:
            group = self._root / "memory" / "cove" / name
            group.mkdir(exist_ok=True)
            groups.append(group)
            (group / "memory.limit_in_bytes").write_text(str(memory_bytes))
        if cpu is not None:
            group = self._root / "cpu" / "cove" / name
            group.mkdir(exist_ok=True)
            groups.append(group)
            (group / "cpu.cfs_period_us").write_text(str(_PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(max(1000, int(cpu * _PERIOD_US))))
        procs = tuple(str(group / "cgroup.procs") for group in groups)
        return Applied(Limits(cgroup_procs=procs), tuple(groups))

    def release(self, applied: Applied) -> None:
        """Remove a container's cgroups (after its processes have exited; else on a later sweep)."""
        for group in applied.directories:
            try:
                group.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                self._stale.append(group)

    def _sweep(self) -> None:
        stale, self._stale = self._stale, []
        for group in stale:
            try:
                group.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                self._stale.append(group)

    @property
    def max_pids(self) -> int | None:
        """The process cap each container gets, or None where it is not enforced."""
        return self._max_pids if self._max_pids > 0 and self._pids and self._mode != "rlimit" else None

    async def close(self, timeout_s: float = 2.0) -> None:
        """Last chance for groups still being emptied (the server is stopping): the kernel empties
        a group as its last processes are reaped, with no event to wait for (cgroup v1), so retry
        for a moment; what is left, the next server of this owner removes."""
        deadline = time.monotonic() + timeout_s
        self._sweep()
        while self._stale and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            self._sweep()
        if self._stale:
            log.info(
                "event=cgroups_left count=%d (removed when a server of this home starts)", len(self._stale)
            )


def pids_refused(applied: Applied) -> int:
    """How many forks the container's process cap refused so far (pids.events' `max`; 0 if none)."""
    for group in applied.directories:
        try:
            text = (group / "pids.events").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "max" and value.strip().isdigit():
                return int(value)
    return 0
