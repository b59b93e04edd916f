"""A real two-node Ray cluster on this machine, and Cove servers on either backend.

The cluster is session-scoped: a head (`ray start --head`) and a second node (`ray start --address`
with its own temp dir and a `node2` resource). Both stay on loopback: Ray rewrites 127.0.0.1 and
`localhost` to the machine's outward address (`resolve_ip_for_localhost`), so the nodes use other
loopback addresses, 127.0.0.2 and 127.0.0.3, which it leaves alone. Node-death checks are quick
because the head's health checks run every second. Every Ray process the fixture started (found by
its temp dir, with all their descendants: actors and their workers) is stopped at the end; `ray
stop` is not used, since it would stop any other Ray on the machine too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.conftest import CoveEnv, cove_command

HEAD_IP = "127.0.0.2"
NODE2_IP = "127.0.0.3"
_START_TIMEOUT_S = 120


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ray_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        # Declare a node dead after ~3 s of failed health checks instead of ~30 s.
        RAY_health_check_period_ms="1000",
        RAY_health_check_timeout_ms="1000",
        RAY_health_check_failure_threshold="3",
        RAY_health_check_initial_delay_ms="1000",
    )
    return env


def _ray(*args: str) -> None:
    ray = str(Path(sys.executable).with_name("ray"))
    done = subprocess.run(
        [ray, *args], env=_ray_env(), capture_output=True, text=True, timeout=_START_TIMEOUT_S
    )
    if done.returncode != 0:
        raise AssertionError(f"ray {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")


def _process_tree(marker: str) -> list[int]:
    """Processes whose command line names `marker` (a node's temp dir), and all their descendants."""
    children: dict[int, list[int]] = {}
    roots = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat", "rb") as file:
                ppid = int(file.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                cmdline = file.read()
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(pid)
        if marker.encode() in cmdline:
            roots.append(pid)
    found, stack = set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid not in found and pid != os.getpid():
            found.add(pid)
            stack.extend(children.get(pid, ()))
    return sorted(found)


def _kill_tree(marker: str, *, grace_s: float) -> None:
    pids = _process_tree(marker)
    if grace_s > 0:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
            time.sleep(0.1)
    for pid in set(pids) | set(_process_tree(marker)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class RayCluster:
    """A head and a second node on loopback; `address` is what `--ray-address` takes."""

    address: str
    head_dir: str
    node_dirs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls) -> RayCluster:
        port = _free_port(HEAD_IP)
        cluster = cls(f"{HEAD_IP}:{port}", tempfile.mkdtemp(prefix="cove-ray-head-"))
        try:
            _ray(
                "start",
                "--head",
                f"--node-ip-address={HEAD_IP}",
                f"--port={port}",
                "--num-cpus=2",
                "--object-store-memory=100000000",
                "--disable-usage-stats",
                "--include-dashboard=false",
                f"--temp-dir={cluster.head_dir}",
            )
            cluster.add_node2()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def add_node2(self) -> None:
        """Start (or restart) the second node, with its own temp dir and a `node2` resource."""
        self.kill_node2()
        self.node_dirs["node2"] = tempfile.mkdtemp(prefix="cove-ray-node2-")
        _ray(
            "start",
            f"--address={self.address}",
            f"--node-ip-address={NODE2_IP}",
            "--num-cpus=2",
            '--resources={"node2": 1}',
            "--object-store-memory=100000000",
            "--disable-usage-stats",
            f"--temp-dir={self.node_dirs['node2']}",
        )

    def kill_node2(self) -> None:
        """SIGKILL every process of the second node at once, as if its machine lost power."""
        directory = self.node_dirs.pop("node2", None)
        if directory is not None:
            _kill_tree(directory, grace_s=0)
            shutil.rmtree(directory, ignore_errors=True)

    def stop(self) -> None:
        self.kill_node2()
        _kill_tree(self.head_dir, grace_s=10)
        shutil.rmtree(self.head_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    pytest.importorskip("ray", reason="the Ray backend's tests need Ray: pip install -e '.[test]'")
    cluster = RayCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


class ServerProcess:
    """`cove server --backend ...` in the foreground of a subprocess; its output kept in a file."""

    def __init__(self, cove: CoveEnv, args: list[str]) -> None:
        self.cove = cove
        self.log_path = cove.home / "server-foreground.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [*cove_command(), "server", *args],
            env=cove.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not (cove.home / "server.json").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"cove server {' '.join(args)} did not start:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.cove.run("server", "stop", check=False, timeout=90)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def backend(request: pytest.FixtureRequest) -> str:
    """Each serving test runs on both backends; the Ray run is marked `ray` (`pytest -m ray`)."""
    return str(request.param)


@pytest.fixture
def server(backend: str, cove_env: CoveEnv, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A server on `backend` for this test's private COVE_HOME (Ray: the session's cluster)."""
    args = ["--backend", backend]
    if backend == "ray":
        cluster: RayCluster = request.getfixturevalue("ray_cluster")
        cove_env.env["RAY_USAGE_STATS_ENABLED"] = "0"
        args += ["--ray-address", cluster.address]
    process = ServerProcess(cove_env, args)
    try:
        yield process
    finally:
        process.stop()
