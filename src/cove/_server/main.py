"""The server process: control plane API, gateway and runtime on one event loop, with a shutdown ladder.

This is the composition root: `serve` makes each service, hands each the others it needs, and
stops them in order. The backend comes from `backends.py`, the routing table from `routes.py`,
the control API's listeners from `control.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cove import _probe
from cove._control.api import ApiServices, build_api
from cove._control.api_calls import call_routes
from cove._control.api_objects import ObjectService, object_routes
from cove._control.api_sessions import session_routes
from cove._control.apps import AppRegistry
from cove._control.bundles import BundleStore
from cove._control.calls import CallRegistry
from cove._control.container_api import ContainerAPIs
from cove._control.images import ImageBuilder
from cove._control.logs import LogHub
from cove._control.secrets import SecretStore
from cove._control.store import Store
from cove._dashboard import Dashboard
from cove._gateway import Gateway, Limits
from cove._gateway.fleet import gateway_for
from cove._runtime.backend import socket_dir
from cove._runtime.backends import make_backend
from cove._server.control import ControlListeners
from cove._server.routes import RoutePublisher
from cove.config import Settings
from cove.exception import Error

log = logging.getLogger("cove.server")


class ServerAlreadyRunning(Error):
    """Another Cove server owns this COVE_HOME."""


def state_file(settings: Settings) -> Path:
    return _probe.state_file(settings.home)


def raise_open_files_limit(max_connections: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft limit now.

    The gateway holds two descriptors per open WebSocket or request in flight (client and
    container), so the usual soft limit of 1024 would stop it near 500 WebSockets with EMFILE
    (issue 15, item 4). Containers, started from here, inherit the raised limit too.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    needed = 2 * max_connections + 256
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "open files limit %d is below the %d that COVE_MAX_CONNECTIONS=%d may need (two per connection); "
            "raise `ulimit -Hn`",
            soft,
            needed,
            max_connections,
        )
    return soft


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # uvicorn's access log would print every control-API call.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def make_gateway(settings: Settings, store: Store) -> Gateway:
    """The gateway with the settings' limits and policy; proxy tokens are checked against `store`."""
    # COVE_GATEWAY_WORKERS > 1: worker processes share the port, this process owns their state.
    return gateway_for(
        settings.gateway_workers,
        host=settings.host,
        port=settings.port,
        http_timeout_s=settings.http_timeout_s,
        # -- gateway policy (issues 5 and 7)
        limits=Limits(
            max_body_bytes=settings.max_body_bytes,
            max_head_bytes=settings.max_head_bytes,
            max_request_line_bytes=settings.max_request_line_bytes,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            send_timeout_s=settings.send_timeout_s,
            idle_timeout_s=settings.keepalive_timeout_s,
            max_connections=settings.max_connections,
        ),
        rate_limit_rps=settings.rate_limit_rps,
        rate_limit_burst_s=settings.rate_limit_burst_s,
        verify_proxy_token=lambda token_id, secret: store.check_token(token_id, secret, "proxy"),
        trusted_proxies=settings.trusted_proxies,
    )


async def serve(
    settings: Settings,
    *,
    ready_fd: int | None = None,
    listen: tuple[str, int] | None = None,
    on_started: Callable[[str], None] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT or an API stop request; then stop in order.

    `on_started(dashboard_url)` is called once everything listens (`cove server` prints it).
    """
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock_path = settings.control_socket
    if _probe.control_socket_alive(sock_path):
        raise ServerAlreadyRunning(
            f"A Cove server is already running for {settings.home} (socket {sock_path}). "
            "Stop it with `cove server stop`."
        )
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()
    store = Store(settings.home / "cove.db")  # first: a damaged database stops the start here
    raise_open_files_limit(settings.max_connections)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    objects = ObjectService(store, settings.home / "volumes")
    objects.start()  # ephemeral Dicts, Queues and Volumes do not outlive their server
    bundles = BundleStore(settings.home / "bundles")
    logs = LogHub(settings.home / "logs", max_bytes=settings.log_max_bytes)
    secrets = SecretStore(settings.home / "secrets")
    backend = make_backend(settings)
    gateway = make_gateway(settings, store)
    store.revoke_listeners.append(gateway.forget_proxy_token)
    await gateway.start()
    dashboard = Dashboard(settings.home / "dashboard.sock", gateway, settings.base_domain)
    routes = RoutePublisher(
        gateway.set_routes, dashboard.routes, on_change=(dashboard.cold_starts.routes_changed,)
    )
    await backend.start()
    # Images are built on this machine for a backend that cannot install a recipe itself.
    images = (
        ImageBuilder(
            settings.images_dir,
            secrets,
            mirror=settings.debian_mirror,
            home=settings.home,
            sandbox_setting=settings.sandbox,
        )
        if backend.capabilities.builds_images
        else None
    )
    container_apis = ContainerAPIs(socket_dir(settings.home))
    registry = AppRegistry(
        settings,
        backend,
        secrets,
        logs,
        publish_routes=routes.publish,
        gateway_port=lambda: gateway.port,
        store=store,
        images=images,
        # Containers elsewhere (Ray's) cannot reach a unix socket here: none (docs/ray.md).
        api_socket=container_apis.socket_for if backend.capabilities.host_paths else None,
        api_forget=container_apis.forget,
        volume_path=objects.volume_path,
        pool_observer=dashboard.cold_starts,
        bundle_of=bundles.root_of,
    )
    await registry.restore()
    await dashboard.start(registry, logs, store)
    calls = CallRegistry(registry)

    def health() -> dict[str, Any]:
        return {
            "gateway_port": gateway.port,
            "gateway_host": settings.host,
            "workspace": settings.workspace,
            "base_domain": settings.base_domain,
            "dashboard_url": dashboard.url,
        }

    services = ApiServices(registry, logs, secrets, store, bundles, health, stop.set, images=images)
    api = build_api(
        services,
        extra_routes=[*call_routes(registry, calls), *session_routes(registry), *object_routes(objects)],
    )
    container_apis.api = api
    control = ControlListeners()
    control.start(api, sock_path, store, listen)

    state_file(settings).write_text(
        json.dumps({"pid": os.getpid(), "gateway_port": gateway.port, "socket": str(sock_path)})
    )
    log.info(
        "event=started pid=%d gateway=http://%s:%d control=%s dashboard=%s",
        os.getpid(),
        settings.host,
        gateway.port,
        sock_path,
        dashboard.url,
    )
    if on_started is not None:
        on_started(dashboard.url)
    if ready_fd is not None:
        with contextlib.suppress(OSError):
            os.write(ready_fd, json.dumps({"gateway_port": gateway.port}).encode() + b"\n")
            os.close(ready_fd)

    try:
        await stop.wait()
    finally:
        log.info("event=stopping")
        # 1. stop accepting control requests, 2. drain the gateway, 3. stop containers.
        control.stop_accepting()
        await calls.close()  # running calls end; their long polls answer, so the API can stop
        await container_apis.close()
        objects.close()  # blocked Queue gets answer "nothing yet"; their clients ask the next server
        await control.close()
        await dashboard.close()  # its log streams end, so the gateway drains quickly
        await gateway.close(timeout_s=10)
        await registry.close()
        await backend.close()
        logs.close()
        store.close()
        for path in (sock_path, state_file(settings)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        log.info("event=stopped")


def run(
    settings: Settings,
    *,
    ready_fd: int | None = None,
    listen: tuple[str, int] | None = None,
    on_started: Callable[[str], None] | None = None,
) -> None:
    """Entry point for `cove server`: configure logging and run `serve` on uvloop."""
    import uvloop

    configure_logging(settings.log_level)
    uvloop.run(serve(settings, ready_fd=ready_fd, listen=listen, on_started=on_started))
