"""`cove run`, `app.run()` and `App.deploy()`: an ephemeral app for the length of a run, from the CLI
or from the user's own Python process, and a deploy from a script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.conftest import CoveEnv

pytestmark = pytest.mark.integration

APP = Path(__file__).with_name("run_app.py")


def test_cove_run_runs_the_entrypoint_or_a_function_with_args_and_stops_the_app(
    tmp_path: Path, cove_env: CoveEnv
) -> None:
    shutil.copy(APP, tmp_path / "run_app.py")
    app_file = str(tmp_path / "run_app.py")

    result = cove_env.run("run", app_file, "--n", "3", "--twice", "--label", "got")
    out = result.stdout
    assert "✓ Initialized." in out and "✓ Created objects." in out
    assert "got: 81" in out  # printed here by the local entrypoint
    assert "squaring 3 in a container" in out  # the container's log, streamed to this terminal
    assert out.rstrip().endswith("✓ App completed.")

    result = cove_env.run("run", f"{app_file}::shout", "--word", "hi", "--loud", "--times", "3")
    assert "shouted: HI HI HI" in result.stdout  # the function ran remotely with those arguments

    missing = cove_env.run("run", app_file, check=False)
    assert missing.returncode == 2 and "Missing option '--n'" in missing.stderr
    unknown = cove_env.run("run", f"{app_file}::nope", check=False)
    assert unknown.returncode == 1 and "It has: main, shout, square." in unknown.stderr

    apps = json.loads(cove_env.run("app", "list", "--json").stdout)
    assert [(a["name"], a["kind"], a["state"]) for a in apps] == [("runner", "ephemeral", "stopped")]


SCRIPT = """
import cove as modal

app = modal.App("scripted")


@app.function()
def double(x: int) -> int:
    return 2 * x


if __name__ == "__main__":
    with app.run():
        print("inside:", double.remote(21))
    try:
        double.remote(1)
    except modal.exception.ExecutionError as exc:
        print("after:", str(exc).split(",")[0])
    app.deploy()
    print("deployed:", modal.Function.from_name("scripted", "double").remote(5))
"""


def test_app_run_and_app_deploy_from_a_plain_python_process(tmp_path: Path, cove_env: CoveEnv) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    result = subprocess.run(
        [sys.executable, str(script)],
        env=cove_env.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "inside: 42" in result.stdout
    assert "after: Function 'double' has not been hydrated" in result.stdout  # the app stopped
    assert "deployed: 10" in result.stdout
