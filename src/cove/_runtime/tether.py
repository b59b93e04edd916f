"""Helper processes tied to the server's life: the kernel kills them when the server dies, even by SIGKILL.

A helper the server starts (pasta, an image build step) is prefixed with `setpriv --pdeathsig KILL`:
the parent-death signal survives `exec` (of programs without set-user-ID bits or file capabilities)
and fires when the thread that forked the helper ends. The server forks its helpers from its event
loop, which runs on its main thread for the server's whole life, so that is the server's death.
(bubblewrap sandboxes have `--die-with-parent`; the workers in them die with the sandbox's PID
namespace.)
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
from collections.abc import Sequence

log = logging.getLogger("cove.runtime")


@functools.cache
def _setpriv() -> str | None:
    path = shutil.which("setpriv")
    if path is None:
        return None
    try:
        usage = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if "--pdeathsig" in usage else None


def tethered(argv: Sequence[str]) -> list[str]:
    """`argv` run so that it is killed when the server dies (unchanged, with one warning, where
    util-linux's `setpriv` with `--pdeathsig` is missing)."""
    setpriv = _setpriv()
    if setpriv is None:
        _warn_once()
        return list(argv)
    return [setpriv, "--pdeathsig", "KILL", "--", *argv]


@functools.cache
def _warn_once() -> None:
    log.warning(
        "event=helpers_untethered reason=%r",
        "setpriv (util-linux >= 2.33) with --pdeathsig is missing: helper processes (pasta, image "
        "builds) outlive a server that is killed",
    )
