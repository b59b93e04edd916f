"""A container's processes are capped (issue 12, item 5): one container once forked 5,000.

Past COVE_MAX_PIDS processes and threads a fork fails with EAGAIN, which the user's code sees as
its own exception (in `cove app logs`); when the container stops, its log also says it hit the cap.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cove._runtime.backends.local.isolation import probe_bwrap
from cove._runtime.backends.local.limits import Limiter
from tests.integration.conftest import URL_RE, CoveEnv, host_request

CAP = 40

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(probe_bwrap()[0] is None, reason=f"no sandbox here: {probe_bwrap()[1]}"),
    pytest.mark.skipif(
        Limiter(max_pids=CAP).max_pids is None, reason="no writable pids cgroup controller (not root?)"
    ),
]

FORKER_APP = """
import os
import time

import cove

app = cove.App("forker")


@app.function()
@cove.fastapi_endpoint()
def spawn(count: int):
    children = []
    try:
        for _ in range(count):
            pid = os.fork()
            if pid == 0:
                time.sleep(300)
                os._exit(0)
            children.append(pid)
    finally:
        print(f"forked {len(children)} of {count}", flush=True)
        for pid in children:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    return {"forked": len(children)}
"""


def _logs_until(cove_env: CoveEnv, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        logs = cove_env.run("app", "logs", "forker", "--tail", "1000").stdout
        if text in logs or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


@pytest.mark.parametrize("zygote", ["0", "1"], ids=["fresh-workers", "zygotes"])
def test_a_container_cannot_fork_past_its_process_cap(tmp_path: Path, cove_env: CoveEnv, zygote: str) -> None:
    """Asked for 5x its cap, a container gets fewer than the cap; the failed fork is the user's
    exception (a 500, BlockingIOError in the logs); the container serves on once its children are
    gone, and its log says it hit the cap."""
    cove_env.env.update(COVE_ZYGOTE=zygote, COVE_MAX_PIDS=str(CAP))
    (tmp_path / "forker.py").write_text(FORKER_APP)
    (url,) = URL_RE.findall(cove_env.run("deploy", str(tmp_path / "forker.py"), timeout=300).stdout)

    refused = host_request("GET", url, params={"count": 5 * CAP})
    assert refused.status_code == 500, refused.text
    logs = _logs_until(cove_env, "BlockingIOError")
    assert "BlockingIOError" in logs and "Resource temporarily unavailable" in logs, logs
    forked = int(logs.split("forked ", 1)[1].split(" of", 1)[0])
    assert 0 < forked < CAP, logs

    assert host_request("GET", url, params={"count": 5}).json() == {"forked": 5}

    cove_env.run("app", "stop", "forker", "--yes")
    logs = _logs_until(cove_env, "hit its process limit")
    assert "hit its process limit" in logs and f"at {CAP} processes" in logs, logs
