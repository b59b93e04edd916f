"""`cove server`: run the server in the foreground, or stop the one running in the background."""

from __future__ import annotations

import dataclasses
import json
import os
import select

import click

from cove import _probe, exception
from cove.cli import _render as render
from cove.cli._client import ControlClient
from cove.config import Settings, backend_name

_STOP_TIMEOUT_S = 60.0


def _parse_listen(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{value!r} is not HOST:PORT, e.g. 127.0.0.1:9000")
    return host.strip("[]"), int(port)


@click.group(invoke_without_command=True)
@click.option("--ready-fd", type=int, default=None, hidden=True)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    callback=_parse_listen,
    help="Also serve the control API on TCP, for clients with a token (`cove token create`).",
)
@click.option(
    "--backend",
    type=click.Choice(["local", "ray"]),
    default=None,
    help="Where containers run: this machine (local, the default; COVE_BACKEND) or a Ray cluster.",
)
@click.option(
    "--ray-address",
    metavar="HOST:PORT",
    default=None,
    help="The Ray cluster of --backend ray (COVE_RAY_ADDRESS; default: Ray's own lookup).",
)
@click.pass_context
def server(
    ctx: click.Context,
    ready_fd: int | None,
    listen: tuple[str, int] | None,
    backend: str | None,
    ray_address: str | None,
) -> None:
    """Run the Cove server (control plane + gateway) in the foreground."""
    if ctx.invoked_subcommand is not None:
        return
    settings = Settings.from_env()
    if backend is not None:
        settings = dataclasses.replace(settings, backend=backend_name(backend, "--backend"))
    if ray_address is not None:
        settings = dataclasses.replace(settings, ray_address=ray_address)
    if ready_fd is None:
        render.info(f"Cove server for {settings.home}: gateway on http://{settings.host}:{settings.port}")
    from cove._server import main as control_server  # the server stack, only when it runs

    try:
        control_server.run(
            settings,
            ready_fd=ready_fd,
            listen=listen,
            on_started=None if ready_fd is not None else lambda url: render.info(f"View at {url}"),
        )
    except exception.Error as exc:  # another server owns COVE_HOME; the backend cannot start
        render.error(str(exc))
        raise SystemExit(1) from None
    except OSError as exc:
        render.error(f"The server could not start: {exc}")
        raise SystemExit(1) from None


@server.command()
def stop() -> None:
    """Stop the server running for COVE_HOME (its apps stop serving until it starts again)."""
    settings = Settings.from_env()
    if not _probe.control_socket_alive(settings.control_socket):
        render.info(f"No Cove server is running for {settings.home}.")
        return
    pid = _server_pid(settings)
    client = ControlClient(settings)
    try:
        client.request("POST", "/v1/server/stop")
    except exception.ConnectionError:
        pass
    finally:
        client.close()
    if pid is not None and not _wait_exit(pid, _STOP_TIMEOUT_S):
        render.error(f"The server (pid {pid}) did not stop within {_STOP_TIMEOUT_S:g} s.")
        raise SystemExit(1)
    render.success("Server stopped.")


def _server_pid(settings: Settings) -> int | None:
    try:
        return int(json.loads(_probe.state_file(settings.home).read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def _wait_exit(pid: int, timeout_s: float) -> bool:
    """Wait for a process that is not our child to end, via a pidfd (Linux ≥ 5.3)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        return bool(ready)
    finally:
        os.close(fd)
