"""The gateway on every core: Cove with COVE_GATEWAY_WORKERS=N vs bare uvicorn and nginx, N processes each.

    .venv/bin/python bench/gateway_multicore.py [--workers N] [--duration 10]

Four setups serve the seed's `square` endpoint (GET `/?x=42`), started side by side and loaded in
turn (interleaved, so drift in the machine's load hits all alike) with 64 and then 256 keep-alive
connections for `--duration` seconds each, after a 2 s warm-up:

- `bare uvicorn`: the same FastAPI function on `uvicorn --workers N --loop uvloop --http httptools`;
- `nginx -> uvicorn`: nginx (`worker_processes N`, keep-alive upstream) in front of that uvicorn;
- `cove gateway`: a private Cove server with `COVE_GATEWAY_WORKERS=N` (the server and N-1 worker
  processes share the port), the function deployed with `min_containers=N, max_containers=N` and
  `@cove.concurrent(max_inputs=1000)`, so N containers serve as N uvicorn workers do. The
  workspace rate limit is raised out of reach (checked on every request, never refusing one).
- `cove, 1 gateway process`: the same with `COVE_GATEWAY_WORKERS=1`, the single process of before.

Each row also reports the CPU time its setup's processes used per request (from /proc), the figure
least disturbed by other load on the machine. N defaults to the number of cores. Load comes from
`wrk -t2 --latency` (Debian packages `wrk` and `nginx`). Goal (issue 15): cove >= 0.9x bare
uvicorn and ahead of nginx at both connection counts. The load generator and every setup share the
machine's cores; nothing is pinned; the load average is printed at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import (
    Cove,
    Load,
    Uvicorn,
    arguments,
    bare_square,
    cove_square,
    free_port,
    get,
    machine,
    table,
    wrk,
)

PATH = "/?x=42"
CONNECTIONS = (64, 256)
WARMUP_S = 2.0
RATE_LIMIT_RPS = 10_000_000

NGINX_CONF = """
worker_processes {workers};
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream app {{ server 127.0.0.1:{upstream}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
}}
"""


class UvicornWorkers(Uvicorn):
    """The harness's bare uvicorn, with `workers` processes."""

    def __init__(self, source: str, workers: int) -> None:
        super().__init__(source)
        self.workers = workers

    def start(self, timeout: float = 60) -> float:
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "bare:web_app", "--app-dir", str(self.dir)),
                *("--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)),
                *("--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"),
            ],
            start_new_session=True,
        )
        return _wait_answering(self.process, self.port, started, timeout)


class Nginx:
    """nginx with `workers` worker processes proxying to `upstream_port` on loopback."""

    def __init__(self, upstream_port: int, workers: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cove-bench-nginx-"))
        self.port = free_port()
        user = "user root;" if os.geteuid() == 0 else ""
        conf = NGINX_CONF.format(
            workers=workers, user=user, dir=self.dir, upstream=upstream_port, port=self.port
        )
        (self.dir / "nginx.conf").write_text(conf)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> float:
        started = time.perf_counter()
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.process = subprocess.Popen(
            [nginx, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-g", "daemon off;"],
            start_new_session=True,
        )
        return _wait_answering(self.process, self.port, started, timeout)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)


def _wait_answering(process: subprocess.Popen[bytes], port: int, started: float, timeout: float) -> float:
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with code {process.returncode}")
        try:
            if get(port, "/?x=1", timeout=timeout)[0] == 200:
                return time.perf_counter() - started
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"{process.args[0]} did not answer within {timeout} s")


def cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by `root` and every process below it that is alive."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        todo += children.get(pid, [])
    return total


def wrk2(port: int, host: str, connections: int, duration_s: float) -> Load:
    return wrk(port, PATH, host, connections, duration_s, threads=2)


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument(
        "--workers", type=int, default=len(os.sched_getaffinity(0)), help="processes per setup"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    args = parser.parse_args()
    if not 0 < args.duration <= 300 or args.workers < 1:
        parser.error("--duration must be in (0, 300] and --workers at least 1")
    if shutil.which("wrk") is None or (
        shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists()
    ):
        parser.error("needs wrk and nginx: apt-get install -y wrk nginx")
    n = args.workers

    setups = ("bare uvicorn", "nginx -> uvicorn", "cove gateway", "cove, 1 gateway process")
    results: dict[str, dict[int, Load]] = {setup: {} for setup in setups}
    cpu_ms: dict[str, dict[int, float]] = {setup: {} for setup in setups}
    bare = UvicornWorkers(bare_square(), n)
    nginx: Nginx | None = None
    cove = Cove(COVE_RATE_LIMIT_RPS=str(RATE_LIMIT_RPS), COVE_GATEWAY_WORKERS=str(n))
    single = Cove(COVE_RATE_LIMIT_RPS=str(RATE_LIMIT_RPS), COVE_GATEWAY_WORKERS="1")
    try:
        bare.start()
        nginx = Nginx(bare.port, n)
        nginx.start()
        options = f"min_containers={n}, max_containers={n}"
        source = cove_square("app", options=options, decorators="@cove.concurrent(max_inputs=1000)")
        host = cove.deploy("app", source)
        single_host = single.deploy("app", source)
        cove.wait_containers(n, "app")
        single.wait_containers(n, "app")
        assert bare.process is not None and nginx.process is not None
        # setup -> (port, Host header, the process trees whose CPU time it uses)
        targets = {
            "bare uvicorn": (bare.port, "127.0.0.1", [bare.process.pid]),
            "nginx -> uvicorn": (nginx.port, "127.0.0.1", [nginx.process.pid, bare.process.pid]),
            "cove gateway": (cove.port, host, [cove.server_pid()]),
            "cove, 1 gateway process": (single.port, single_host, [single.server_pid()]),
        }
        for setup, (port, host_header, _) in targets.items():
            status, body = get(port, PATH, host_header)
            if status != 200 or body != b'{"square":1764}':
                raise RuntimeError(f"{setup}: GET {PATH} answered {status} {body!r}")
            wrk2(port, host_header, 64, WARMUP_S)
        for connections in CONNECTIONS:
            for setup, (port, host_header, roots) in targets.items():
                time.sleep(0.5)
                before = sum(cpu_s(root) for root in roots)
                result = results[setup][connections] = wrk2(port, host_header, connections, args.duration)
                used = sum(cpu_s(root) for root in roots) - before
                cpu_ms[setup][connections] = used * 1000 / max(1.0, result.requests_per_s * args.duration)
        containers = cove.containers("app")
    finally:
        if nginx is not None:
            nginx.close()
        bare.close()
        cove.close()
        single.close()

    rows = [
        [
            setup,
            c,
            f"{r.requests_per_s:.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{cpu_ms[setup][c]:.3f}",
            r.errors,
        ]
        for setup, by_c in results.items()
        for c, r in by_c.items()
    ]
    print(table(["setup", "connections", "req/s", "p50 ms", "p99 ms", "CPU ms/req", "errors"], rows))
    gw = results["cove gateway"]
    print()
    for c in CONNECTIONS:
        vs_bare = gw[c].requests_per_s / results["bare uvicorn"][c].requests_per_s
        vs_nginx = gw[c].requests_per_s / results["nginx -> uvicorn"][c].requests_per_s
        print(f"{c} connections: cove/bare uvicorn {vs_bare:.2f}x (goal >= 0.9), ", end="")
        print(f"cove/nginx {vs_nginx:.2f}x (goal > 1)")
    print(
        "\nCPU ms/req: CPU time (user + system) of the setup's processes during its row, per request served;"
        " unlike req/s it hardly depends on what else the machine runs"
    )
    print(
        f"\nsource: GET {PATH}, {args.duration:g} s per row after a {WARMUP_S:g} s warm-up, wrk -t2; "
        f"N={n} processes per setup; cove containers at the end: {containers}"
    )
    print(f"machine: {machine()}")
    errors = sum(r.errors for by_c in results.values() for r in by_c.values())
    if errors:
        print(f"error: {errors} non-2xx responses or socket errors", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
