"""What /proc tells the server about a worker: its exit status as a zombie, its children, its pid.

A container forked inside a sandbox knows only its pid in the sandbox's PID namespace; the server
finds the host pid among the children of the zygote that forked it (`NSpid` in /proc/<pid>/status
lists a process's pid in each namespace it is in, outermost first).
"""

from __future__ import annotations

import os


def parse_exit_status(stat: bytes) -> int | None:
    """The exit code (negative: killed by that signal) in a zombie's /proc/<pid>/stat, else None.

    Linux (≥ 3.5) shows a zombie's wait status as field 52; the command name (field 2) may hold
    spaces and parentheses, so fields are counted from the last ")".
    """
    try:
        fields = stat.rsplit(b")", 1)[1].split()
    except IndexError:
        return None
    if not fields or fields[0] != b"Z" or len(fields) < 50:
        return None
    status = int(fields[49])  # field 52 overall; the first two (pid, comm) were cut off
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def zombie_status(pid: int) -> int | None:
    """The exit code of `pid` if it has exited and is not reaped yet, else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return parse_exit_status(file.read())
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """The children of `pid`'s main thread (the only thread a worker forks from)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as file:
            return [int(child) for child in file.read().split()]
    except OSError:
        return []


def only_child(pid: int) -> int | None:
    """The first child of `pid` (the worker under a sandbox's init)."""
    found = children(pid)
    return found[0] if found else None


def parse_ns_pid(status: str) -> int | None:
    """The innermost pid in /proc/<pid>/status (`NSpid:  4711  2` → 2)."""
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            pids = line.split()[1:]
            return int(pids[-1]) if pids else None
    return None


def child_with_ns_pid(parent: int, ns_pid: int) -> int | None:
    """The host pid of the child of `parent` that its own namespace calls `ns_pid`."""
    for child in children(parent):
        try:
            with open(f"/proc/{child}/status") as file:
                if parse_ns_pid(file.read()) == ns_pid:
                    return child
        except OSError:
            continue
    return None
