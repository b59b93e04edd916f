"""Per-container cpu and memory limits: a cgroup (v2, or v1 hierarchies) per container, else rlimits.

`cpu=1.5` becomes a CFS quota of 1.5 CPUs; `memory=512` a hard limit of 512 MiB (the kernel's OOM
killer ends the container past it). Where no cgroup hierarchy is writable (not root, or a delegated
v2 subtree missing its controllers), memory falls back to RLIMIT_DATA and cpu is not limited.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cove._runtime.sandbox import Limits

log = logging.getLogger("cove.runtime")

_ROOT = Path("/sys/fs/cgroup")
_PERIOD_US = 100_000


@dataclass(frozen=True)
class Applied:
    """The limits of one container and the cgroup directories to remove once it has exited."""

    limits: Limits
    directories: tuple[Path, ...] = ()


class Limiter:
    """Creates one cgroup per limited container under `cove/` of the first usable hierarchy."""

    def __init__(self, root: Path = _ROOT) -> None:
        self._root = root
        self._mode = self._detect()
        self._warned = False
        # Groups whose removal failed (their last process was still being reaped): retried later.
        # (Only our own: another server on this machine may be filling a group it just made.)
        self._stale: list[Path] = []

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
                    parent = self._root / "cove"
                    parent.mkdir(exist_ok=True)
                    (self._root / "cgroup.subtree_control").write_text("+cpu +memory")
                    (parent / "cgroup.subtree_control").write_text("+cpu +memory")
                    return "v2"
            return "rlimit"
        if (self._root / "memory").is_dir() and (self._root / "cpu").is_dir():
            try:
                (self._root / "memory" / "cove").mkdir(exist_ok=True)
                (self._root / "cpu" / "cove").mkdir(exist_ok=True)
            except OSError:
                return "rlimit"
            return "v1"
        return "rlimit"

    def apply(self, name: str, cpu: float | None, memory_mib: int | None) -> Applied:
        """Prepare the limits of container `name`; nothing to do when neither is set."""
        self._sweep()
        if cpu is None and memory_mib is None:
            return Applied(Limits())
        memory_bytes = memory_mib * 2**20 if memory_mib is not None else None
        if self._mode in ("v2", "v1"):
            try:
                if self._mode == "v2":
                    return self._v2(name, cpu, memory_bytes)
                return self._v1(name, cpu, memory_bytes)
            except OSError as exc:
                self._warn(f"could not create a cgroup ({exc}); cpu= is not enforced, memory= uses rlimits")
        elif cpu is not None:
            self._warn("no writable cgroup hierarchy: cpu= is not enforced, memory= uses RLIMIT_DATA")
        return Applied(Limits(data_bytes=memory_bytes))

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("event=limits_degraded reason=%r", message)

    def _v2(self, name: str, cpu: float | None, memory_bytes: int | None) -> Applied:
        group = self._root / "cove" / name
        group.mkdir(exist_ok=True)
        if memory_bytes is not None:
            (group / "memory.max").write_text(str(memory_bytes))
            with contextlib.suppress(OSError):
                (group / "memory.swap.max").write_text("0")
        if cpu is not None:
            (group / "cpu.max").write_text(f"{max(1000, int(cpu * _PERIOD_US))} {_PERIOD_US}")
        return Applied(Limits(cgroup_procs=(str(group / "cgroup.procs"),)), (group,))

    def _v1(self, name: str, cpu: float | None, memory_bytes: int | None) -> Applied:
        groups: list[Path] = []
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

    def close(self) -> None:
        """Last chance for groups still being emptied (the server is stopping)."""
        self._sweep()
