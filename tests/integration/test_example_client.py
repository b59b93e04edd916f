"""The README's client-library example runs as documented against a deployed app."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.conftest import EXAMPLES, CoveEnv

pytestmark = pytest.mark.integration


def test_call_calculator_example(cove_env: CoveEnv) -> None:
    """`cove deploy examples/calculator.py` then `python examples/call_calculator.py` prints each result."""
    cove_env.run("deploy", str(EXAMPLES / "calculator.py"))
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "call_calculator.py")],
        env=cove_env.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "add(2, 3) = 5"
    assert lines[1].startswith("spawned fc-") and lines[1].endswith("-> 42")
    assert lines[2] == "remote error re-raised locally: ZeroDivisionError('division by zero')"
    assert lines[3] == "mean = 3.0"
    assert lines[4] == "async add = 2"
