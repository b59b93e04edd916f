"""State under disk faults: a full disk, a damaged or deleted database, growing logs (issue 12,
items 7, 9a, 9d). Every command either changes the state whole or fails with one clear line."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import URL_RE, CoveEnv, host_request

pytestmark = pytest.mark.integration

SHOP = """
import cove

app = cove.App("shop")


@app.function()
@cove.fastapi_endpoint()
def price(item: str = "tea"):
    print("priced", item, "x" * 100, flush=True)
    return {"price": 1}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _deploy(cove: CoveEnv, tmp_path: Path) -> str:
    app_file = tmp_path / "shop.py"
    app_file.write_text(SHOP)
    (url,) = URL_RE.findall(cove.run("deploy", str(app_file)).stdout)
    return str(url)


def _fill(directory: Path) -> Path:
    """Fill the filesystem of `directory` to the last byte; return the file that does it."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as file:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    file.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


@pytest.fixture
def tmpfs_home(cove_env: CoveEnv) -> Iterator[CoveEnv]:
    """COVE_HOME on its own small tmpfs (root only), unmounted after the server stops."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    cove_env.env["COVE_PORT"] = str(_free_port())
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(cove_env.home)], check=True
    )
    try:
        yield cove_env
    finally:
        with contextlib.suppress(OSError):
            (cove_env.home / "filler").unlink()
        cove_env.run("server", "stop", check=False)
        subprocess.run(["umount", "-l", str(cove_env.home)], check=False)


def _fails_for_no_space(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no space left on the device holding" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_full_disk_changes_nothing_and_every_command_says_so(tmp_path: Path, tmpfs_home: CoveEnv) -> None:
    """On a full COVE_HOME: secret create, token create, app stop and deploy each fail with "no space
    left on ..." and change nothing (no *.tmp file, the app still serves and still says deployed);
    once there is room again, the same commands work."""
    cove = tmpfs_home
    url = _deploy(cove, tmp_path)
    cove.run("secret", "create", "before", "K=V")
    filler = _fill(cove.home)

    _fails_for_no_space(cove.run("secret", "create", "during", "K=V", check=False))
    assert sorted(p.name for p in (cove.home / "secrets").iterdir()) == ["before.json"]
    _fails_for_no_space(cove.run("token", "create", check=False))
    _fails_for_no_space(cove.run("app", "stop", "shop", "-y", check=False))
    assert host_request("GET", url).json() == {"price": 1}
    assert [a["state"] for a in json.loads(cove.run("app", "list", "--json").stdout)] == ["deployed"]
    (tmp_path / "shop.py").write_text(SHOP.replace('"price": 1', '"price": 2'))
    _fails_for_no_space(cove.run("deploy", str(tmp_path / "shop.py"), check=False))
    assert host_request("GET", url).json() == {"price": 1}

    filler.unlink()
    cove.run("secret", "create", "during", "K=V")
    cove.run("app", "stop", "shop", "-y")
    assert host_request("GET", url).status_code == 404
    assert [a["state"] for a in json.loads(cove.run("app", "list", "--json").stdout)] == ["stopped"]


def test_a_damaged_database_is_one_line_naming_the_file_and_the_fix(cove_env: CoveEnv) -> None:
    """A cove.db that is not a database: the server does not start and says so in one line, and so
    does the CLI command that tried to start it."""
    cove_env.home.mkdir(parents=True, exist_ok=True)
    database = cove_env.home / "cove.db"
    database.write_bytes(b"this is not a database, it is a test\n" * 200)
    for args in (("app", "list"), ("server",)):
        result = cove_env.run(*args, check=False)
        assert result.returncode == 1, args
        assert "Traceback" not in result.stderr, result.stderr
        message = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(message) == 1, result.stderr
        assert f"the Cove database {database} is damaged" in message[0]
        assert f"mv {database} {database}.broken" in message[0]


def test_a_database_deleted_under_the_server_is_reported(cove_env: CoveEnv) -> None:
    """cove.db deleted while the server runs: commands that would change state fail in one line
    saying so (instead of writing to a file that no longer exists)."""
    cove_env.run("app", "list")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            (cove_env.home / f"cove.db{suffix}").unlink()
    result = cove_env.run("token", "create", check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"the Cove database {cove_env.home / 'cove.db'} was deleted" in result.stderr


def test_log_files_rotate_and_app_logs_reads_across(tmp_path: Path, cove_env: CoveEnv) -> None:
    """COVE_LOG_MAX_BYTES caps an app's log file: it rotates to NAME.log.1 (one kept), and after a
    server restart `cove app logs` shows lines from both files."""
    cove_env.env["COVE_LOG_MAX_BYTES"] = "6000"
    url = _deploy(cove_env, tmp_path)
    for index in range(40):
        assert host_request("GET", f"{url}/?item=n{index}").status_code == 200
    log_file = cove_env.home / "logs" / "shop.log"
    rotated = cove_env.home / "logs" / "shop.log.1"
    deadline = time.monotonic() + 30
    while "priced n39 " not in (log_file.read_text() if log_file.exists() else ""):
        assert time.monotonic() < deadline, "the last request's line never reached the log file"
        time.sleep(0.05)
    assert rotated.exists()
    assert log_file.stat().st_size < 6000 and rotated.stat().st_size < 6000 + 400
    old_item = next(
        json.loads(line)["line"].split()[1]
        for line in rotated.read_text().splitlines()
        if json.loads(line)["line"].startswith("priced")
    )
    cove_env.run("server", "stop")
    logs = cove_env.run("app", "logs", "shop", "--tail", "2000").stdout  # starts the server again
    assert f"priced {old_item} " in logs  # from shop.log.1
    assert "priced n39 " in logs  # from shop.log
