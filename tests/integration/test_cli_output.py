"""What a newcomer sees: image builds as one line per step with the log kept on disk (and printed in
full when a build fails), and `cove app list` as one full-width row per app name."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import URL_RE, CoveEnv, host_request

pytestmark = pytest.mark.integration

BUILD_APP = """
import modal

app = modal.App("builds")
app.image = modal.Image.debian_slim().env({{"NONCE": "{nonce}"}}).pip_install("{package}")


@app.function()
@modal.fastapi_endpoint()
def hello():
    return "built"
"""

LOG_RE = re.compile(r"Building image \w+ \(\d+ layers; log: (\S+)\)")


def test_image_build_shows_one_line_per_step_and_keeps_the_log(tmp_path: Path, cove_env: CoveEnv) -> None:
    """A build prints its steps, not uv's output, and names its log file; a failing build prints
    the whole log (uv's own error) and keeps it there."""
    nonce = uuid.uuid4().hex  # a recipe no earlier run has cached
    app_file = tmp_path / "builds.py"
    app_file.write_text(BUILD_APP.format(nonce=nonce, package="humanize"))
    result = cove_env.run("deploy", str(app_file), timeout=300)
    output = result.stdout + result.stderr
    steps = [line for line in output.splitlines() if "Step " in line]
    assert steps and all(re.search(r"✓ Step \d+/\d+: .* \(\d+\.\d+s\)$", line) for line in steps), output
    assert any("pip_install humanize" in line for line in steps)
    assert "+ humanize" not in output and "Resolved " not in output, "uv's output stays in the log"
    log = Path(LOG_RE.search(output).group(1))  # type: ignore[union-attr]
    assert "+ humanize" in log.read_text()
    (url,) = URL_RE.findall(result.stdout)
    assert host_request("GET", url).json() == "built"

    missing = f"no-such-package-{nonce[:12]}"
    app_file.write_text(BUILD_APP.format(nonce=nonce, package=missing))
    failed = cove_env.run("deploy", str(app_file), check=False, timeout=300)
    assert failed.returncode == 1
    failed_log = Path(LOG_RE.search(failed.stdout).group(1))  # type: ignore[union-attr]
    assert f"✗ Step 2/2: pip_install {missing}" in failed.stdout
    printed = failed.stderr.split(f"Build log (kept in {failed_log}):")[1]
    assert "uv pip install" in printed and missing in printed
    assert printed.split("Error:")[0].count("\n") > 3, "the whole log, not only its last lines"
    assert missing in failed_log.read_text()


SHOP = """
import modal

app = modal.App("shop")


@app.function()
@modal.fastapi_endpoint()
def hello():
    return "hi"
"""

LONG_NAME = "a-very-long-application-name-that-a-narrow-terminal-would-cut"


def test_app_list_one_row_per_name_full_names_and_first_deploy_time(
    tmp_path: Path, cove_env: CoveEnv, serve
) -> None:
    """A deployed app hides the stopped `cove serve` of its name; a long name is printed whole in
    a 60-column terminal; "Created at" is the first deploy's time, also after a server restart."""
    app_file = tmp_path / "shop.py"
    app_file.write_text(SHOP)
    proc = serve(str(app_file))
    proc.urls(1)
    assert proc.interrupt() == 0  # leaves a stopped ephemeral "shop"
    cove_env.run("deploy", str(app_file))
    cove_env.run("deploy", str(app_file), "--name", LONG_NAME)
    before = {(a["name"], a["kind"]): a for a in json.loads(cove_env.run("app", "list", "--json").stdout)}
    assert set(before) == {("shop", "ephemeral"), ("shop", "deployed"), (LONG_NAME, "deployed")}

    cove_env.run("server", "stop")
    cove_env.env["COLUMNS"] = "60"
    table = cove_env.run("app", "list").stdout  # starts the server again
    rows = [line for line in table.splitlines() if line.startswith("│")]
    assert len(rows) == 2, table
    shop_row = next(r for r in rows if "│ shop " in r)
    assert "deployed" in shop_row and "v1" in shop_row
    assert any(LONG_NAME in r for r in rows), "the name is neither cut nor wrapped"
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(before[("shop", "deployed")]["created_at"]))
    assert created in shop_row
    after = {(a["name"], a["kind"]): a for a in json.loads(cove_env.run("app", "list", "--json").stdout)}
    assert after[("shop", "deployed")]["created_at"] == before[("shop", "deployed")]["created_at"]
    assert after[(LONG_NAME, "deployed")]["created_at"] == before[(LONG_NAME, "deployed")]["created_at"]
