"""Whether a server runs for a COVE_HOME, asked with the standard library only.

The CLI asks this before almost every command; importing the server (uvicorn, Starlette, Jinja2,
httptools) just to ask would cost every `cove --help` and `cove app list` tens of milliseconds.
"""

from __future__ import annotations

import socket
from pathlib import Path


def state_file(home: Path) -> Path:
    """The running server's pid and addresses, written by the server at start."""
    return home / "server.json"


def control_socket_alive(path: Path) -> bool:
    """True if a server answers on the control socket (a stale socket file refuses connections)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True
