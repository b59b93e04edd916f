"""A gateway worker process: the ordinary gateway on the shared port, with the owner's state over a channel.

Started by the owner (`fleet.py`) as `python -m cove._gateway.worker CHANNEL_PATH`. It asks the
owner for its settings and routes, listens on the owner's port with SO_REUSEPORT (the kernel spreads
new connections over the processes), and exits when the owner goes away: its channel closes, and
the kernel sends SIGKILL should the owner die without closing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from cove._gateway.downstream import Finished
from cove._gateway.remote import OwnerLink, RemoteCallStore, RemoteUpstream
from cove._gateway.routing import Route
from cove._gateway.server import Gateway

_log = logging.getLogger("cove.gateway")

_PR_SET_PDEATHSIG = 1

#: A route as the owner sends it: (host, app_name, function_tag, stopped, timeout_s,
#: requires_proxy_auth, session_affinity, sessioned).
RouteRow = tuple[str, str, str, bool, float, bool, bool, bool]


def route_rows(routes: Mapping[str, Route]) -> list[RouteRow]:
    """The routing table in the form sent to workers (upstreams stay with the owner)."""
    return [
        (
            host,
            r.app_name,
            r.function_tag,
            r.upstream is None,
            r.timeout_s,
            r.requires_proxy_auth,
            r.session_affinity,
            r.sessioned,
        )
        for host, r in routes.items()
    ]


class WorkerGateway(Gateway):
    """A `Gateway` whose finished requests are counted by the owner."""

    def __init__(self, link: OwnerLink, **options: Any) -> None:
        super().__init__(**options)
        self._link = link
        self._calls = RemoteCallStore(link)

    def apply_routes(self, rows: list[RouteRow]) -> None:
        link = self._link
        self.set_routes(
            {
                host: Route(
                    app,
                    tag,
                    None if stopped else RemoteUpstream(link, host),
                    timeout_s=timeout_s,
                    requires_proxy_auth=auth,
                    session_affinity=affinity,
                    sessioned=sessioned,
                )
                for host, app, tag, stopped, timeout_s, auth, affinity, sessioned in rows
            }
        )

    def observe(self, exchange: Finished, status: int) -> None:
        route = exchange.route
        names = (route.app_name, route.function_tag) if route is not None else None
        self._link.observe(names, status, exchange.started)


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


async def serve(channel_path: str) -> None:
    link = OwnerLink(channel_path)
    await link.connect()
    host, port, limits, http_timeout_s, verify, trusted, rows = await link.config()

    def verify_token(token_id: str, secret: str) -> bool:
        return bool(link.ask(("verify", token_id, secret))[0])

    gateway = WorkerGateway(
        link,
        host=host,
        port=port,
        limits=limits,
        http_timeout_s=http_timeout_s,
        verify_proxy_token=verify_token if verify else None,
        trusted_proxies=trusted,
        reuse_port=True,
    )
    gateway.apply_routes(rows)
    link.handlers.update(
        routes=gateway.apply_routes,
        forget=gateway.forget_proxy_token,
        http_timeout=gateway.set_http_timeout,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await gateway.start()
    link.channel.send(("ready", os.getpid()))
    lost = asyncio.ensure_future(link.lost.wait())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait((lost, stopped), return_when=asyncio.FIRST_COMPLETED)
    lost.cancel()
    stopped.cancel()
    await gateway.close(timeout_s=5.0)
    link.close()


def main() -> None:
    parent = int(os.environ.get("COVE_GATEWAY_OWNER_PID", os.getppid()))
    _die_with_parent(parent)
    logging.basicConfig(
        level=(os.environ.get("COVE_LOGLEVEL") or "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s[worker %(process)d] %(message)s",
    )
    import uvloop

    uvloop.run(serve(sys.argv[1]))


if __name__ == "__main__":
    main()
