"""The server process's own resource limits: enough open files for the gateway's connections."""

from __future__ import annotations

import json
import resource
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import CoveEnv, cove_command

pytestmark = pytest.mark.integration


def test_the_server_raises_its_open_files_limit_to_the_hard_limit(cove_env: CoveEnv) -> None:
    """Started from a shell whose soft RLIMIT_NOFILE is low (256 here; 1024 is common), the server
    raises it to the hard limit: the gateway holds two descriptors per open WebSocket, so the soft
    limit would otherwise stop it at a few hundred (issue 15, item 4)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard open files limit here ({hard}) is no higher than the lowered soft one")

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    subprocess.run(
        [*cove_command(), "app", "list"],
        env=cove_env.env,
        preexec_fn=lower,
        check=True,
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    pid = int(json.loads((cove_env.home / "server.json").read_text())["pid"])
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    line = next(x for x in limits if x.startswith("Max open files"))
    soft_now = line.split()[3]
    assert soft_now == ("unlimited" if hard == resource.RLIM_INFINITY else str(hard)), line
