"""Per-container limits as files: plain directories laid out as cgroup v2 stand in for /sys/fs/cgroup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cove._runtime.backends.local.limits import Limiter, leftover_groups, owner_of, pids_refused

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the limiter uses cgroups only as root")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    return tmp_path


def test_every_container_gets_the_process_cap_in_a_group_named_after_its_owner(root: Path) -> None:
    limiter = Limiter(root, owner="cove-abc", max_pids=64)
    applied = limiter.apply("ta-1", None, None)
    group = root / "cove" / "cove-abc.ta-1"
    assert applied.directories == (group,)
    assert applied.limits.cgroup_procs == (str(group / "cgroup.procs"),)
    assert (group / "pids.max").read_text() == "64"
    assert "+pids" in (root / "cove" / "cgroup.subtree_control").read_text()
    assert limiter.max_pids == 64


def test_no_cap_and_no_cpu_or_memory_make_no_group(root: Path) -> None:
    limiter = Limiter(root, owner="cove-abc", max_pids=0)
    assert limiter.apply("ta-1", None, None).directories == ()
    assert limiter.max_pids is None


def test_a_new_limiter_removes_the_empty_groups_of_its_owner_only(root: Path) -> None:
    Limiter(root, owner="cove-abc", max_pids=64).apply("ta-1", None, None)
    Limiter(root, owner="cove-xyz", max_pids=64).apply("ta-2", None, None)
    assert len(leftover_groups("cove-abc", root)) == 1
    for group in (root / "cove").iterdir():  # plain directories: empty them as the kernel would
        for child in group.iterdir() if group.is_dir() else ():
            child.unlink()
    Limiter(root, owner="cove-abc", max_pids=64)
    assert leftover_groups("cove-abc", root) == []
    assert len(leftover_groups("cove-xyz", root)) == 1


def test_refused_forks_are_read_from_pids_events(root: Path) -> None:
    applied = Limiter(root, owner="cove-abc", max_pids=8).apply("ta-1", None, None)
    assert pids_refused(applied) == 0
    (applied.directories[0] / "pids.events").write_text("max 3\n")
    assert pids_refused(applied) == 3


def test_owners_differ_per_home() -> None:
    assert owner_of(Path("/a")) != owner_of(Path("/b"))
    assert owner_of(Path("/a")) == owner_of(Path("/a"))
