"""The Autobahn TestSuite cases of sections 1-7 and 10 end the same through the gateway as against
the container's uvicorn directly: the gateway relays WebSocket bytes without changing a verdict.

`run_autobahn.py` runs the cases (with `kosoku`) in a subprocess of its own: kosoku installs module
shims into the process that runs it, which must not leak into the rest of the test session.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("run_autobahn.py")
REPO = Path(__file__).resolve().parents[2]


def test_autobahn_cases_end_the_same_through_the_gateway() -> None:
    pytest.importorskip("kosoku")
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    verdicts: dict[str, list[str]] = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(verdicts) == 247
    changed = {case: pair for case, pair in verdicts.items() if pair[0] != pair[1]}
    assert not changed  # [direct, via gateway]
    failed = sorted(case for case, (_, via) in verdicts.items() if via.startswith("FAILED"))
    assert failed == ["7.1.5"]  # uvicorn's own close code after an invalid frame, with or without us
