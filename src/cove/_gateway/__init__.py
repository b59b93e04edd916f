"""The HTTP gateway: routes requests on their Host header and proxies them to containers."""

from cove._gateway.policy import Limits
from cove._gateway.routing import Route, host_key
from cove._gateway.server import Gateway
from cove._gateway.upstream import Lease, Upstream, UpstreamError

__all__ = ["Gateway", "Lease", "Limits", "Route", "Upstream", "UpstreamError", "host_key"]
