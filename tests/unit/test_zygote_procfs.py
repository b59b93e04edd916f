"""Reading /proc for the server: a zombie's exit status and a process's pid in its own namespace."""

from __future__ import annotations

import signal

from cove._runtime.backends.local.procfs import parse_exit_status, parse_ns_pid


def _stat(state: str, wait_status: int, comm: str = "python") -> bytes:
    # pid (comm) state, then fields 4..51 (48 of them), then field 52: the wait status.
    middle = " ".join(["0"] * 48)
    return f"4711 ({comm}) {state} {middle} {wait_status}\n".encode()


def test_a_zombie_that_exited_shows_its_code() -> None:
    assert parse_exit_status(_stat("Z", 3 << 8)) == 3
    assert parse_exit_status(_stat("Z", 0)) == 0


def test_a_zombie_killed_by_a_signal_shows_minus_the_signal() -> None:
    assert parse_exit_status(_stat("Z", signal.SIGKILL)) == -signal.SIGKILL


def test_a_running_process_has_no_exit_status() -> None:
    assert parse_exit_status(_stat("S", 0)) is None
    assert parse_exit_status(_stat("R", 0)) is None


def test_a_command_name_with_spaces_and_parentheses_is_skipped() -> None:
    assert parse_exit_status(_stat("Z", 1 << 8, comm="a) b (c")) == 1


def test_garbage_is_no_status() -> None:
    assert parse_exit_status(b"") is None
    assert parse_exit_status(b"4711 (x) Z 1 2") is None


def test_the_innermost_namespace_pid_is_the_last() -> None:
    assert parse_ns_pid("Name:\tpython\nNSpid:\t4711\t7\t2\nNSsid:\t1\n") == 2
    assert parse_ns_pid("NSpid:\t4711\n") == 4711
    assert parse_ns_pid("Name:\tpython\n") is None
