"""Zygote decisions as pure functions: when a function zygote goes, what a fork makes its own,
how a zygote's sandbox differs from a container's, and the startup breakdown the bench reads."""

from __future__ import annotations

import itertools

import pytest

from cove._runtime.backends.local.namespaces import private_dirs
from cove._runtime.backends.local.spawner import keep_setfcap
from cove._runtime.backends.local.zygote import expiry_delay, startup_breakdown


@pytest.mark.parametrize(
    ("keep", "containers", "has_zygote"), list(itertools.product([False, True], [0, 1, 3], [False, True]))
)
def test_a_function_zygote_stays_while_needed_and_goes_after_the_window(
    keep: bool, containers: int, has_zygote: bool
) -> None:
    """It stays with min_containers > 0 or live containers; else it goes `window_s` later."""
    delay = expiry_delay(600.0, keep=keep, containers=containers, has_zygote=has_zygote)
    if keep or containers or not has_zygote:
        assert delay is None
    else:
        assert delay == 600.0


def test_a_zero_or_negative_window_means_with_the_last_container() -> None:
    assert expiry_delay(0.0, keep=False, containers=0, has_zygote=True) == 0.0
    assert expiry_delay(-5.0, keep=False, containers=0, has_zygote=True) == 0.0
    assert expiry_delay(0.0, keep=True, containers=0, has_zygote=True) is None


def test_private_dirs_are_tmp_home_and_a_workdir_elsewhere() -> None:
    assert private_dirs("/root", "/root") == ("/tmp", "/root")
    assert private_dirs("/root", "/root/app") == ("/tmp", "/root")
    assert private_dirs("/root", "/tmp/work") == ("/tmp", "/root")
    assert private_dirs("/root", "/srv/app") == ("/tmp", "/root", "/srv/app")
    assert private_dirs("/root", "/rootfs") == ("/tmp", "/root", "/rootfs")  # a prefix is not a parent


def test_a_zygote_sandbox_keeps_setfcap_and_nothing_else() -> None:
    argv = ["bwrap", "--ro-bind", "/a", "/a", "--cap-drop", "ALL", "--chdir", "/root", "--", "python"]
    assert keep_setfcap(argv) == [
        *["bwrap", "--ro-bind", "/a", "/a", "--cap-drop", "ALL", "--cap-add", "CAP_SETFCAP"],
        *["--chdir", "/root", "--", "python"],
    ]


def test_a_sandbox_that_drops_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="drops no capabilities"):
        keep_setfcap(["bwrap", "--", "python"])


def test_startup_breakdown_of_a_fork_from_a_function_zygote() -> None:
    stamps = {
        "forked": 10.002,
        "isolated": 10.003,
        "imported": 10.0035,
        "entered": 10.004,
        "built": 10.010,
        "ready": 10.012,
    }
    assert startup_breakdown("function", 10.0, stamps) == (
        "via=function total_ms=12.0 fork_ms=2.0 isolate_ms=1.0 import_ms=0.5 enter_ms=0.5 "
        "build_ms=6.0 serve_ms=2.0"
    )


def test_startup_breakdown_counts_a_held_fork_until_it_was_placed() -> None:
    stamps = {"forked": 1.0, "isolated": 1.001, "placed": 1.041, "imported": 1.041, "ready": 1.05}
    assert "isolate_ms=41.0 import_ms=0.0" in startup_breakdown("image", 1.0, stamps)


def test_startup_breakdown_of_a_fresh_worker_counts_its_spawn_as_fork() -> None:
    stamps = {"received": 0.4, "imported": 0.45, "entered": 0.45, "built": 0.47, "ready": 0.48}
    line = startup_breakdown("process", 0.0, stamps)
    assert line.startswith("via=process total_ms=480.0 fork_ms=400.0 isolate_ms=0.0 import_ms=50.0")


def test_startup_breakdown_of_a_web_server_has_no_build() -> None:
    stamps = {"forked": 0.001, "imported": 0.002, "entered": 0.003, "ready": 0.5}
    assert "build_ms=0.0 serve_ms=497.0" in startup_breakdown("function", 0.0, stamps)
