"""The client's address behind trusted proxies: which `X-Forwarded-For` entry to believe.

The gateway tells the container who the client is in `X-Forwarded-For` (one address) and
`X-Forwarded-Proto`, never passing on what the client claims (nor its `X-Forwarded-Host`, `-Port`
or `-Prefix`, from which apps build absolute URLs). When the gateway sits behind a load balancer or
TLS terminator the peer is that proxy, not the client; `COVE_TRUSTED_PROXIES` names such proxies
(addresses or CIDR networks), whose `X-Forwarded-Host`, `-Port` and `-Prefix` pass on as sent.
For a request from a trusted peer, the client is the right-most address of its `X-Forwarded-For`
chain that is not itself trusted, as uvicorn's `forwarded_allow_ips` and nginx's
`real_ip_recursive` pick it: each trusted hop appended the address it saw, so everything left of
the first untrusted one may be forged by the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_MEMO_LIMIT: Final = 4096


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Addresses and CIDR networks, e.g. `("10.0.0.0/8", "::1")`; raises ValueError naming a bad one."""
    networks = []
    for entry in entries:
        text = entry.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(
                f"trusted proxy {text!r} is not an IP address or CIDR network (e.g. 10.0.0.0/8, ::1)"
            ) from None
    return tuple(networks)


def parse_address(text: str) -> Address | None:
    """An address as proxies write it (`1.2.3.4`, `1.2.3.4:5678`, `[::1]:80`, `::1`), or None.

    >>> parse_address("[::1]:80"), parse_address("1.2.3.4:56"), parse_address("unknown")
    (IPv6Address('::1'), IPv4Address('1.2.3.4'), None)
    """
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # IPv4 with a port; IPv6 has more colons
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The proxies whose `X-Forwarded-For` and `X-Forwarded-Proto` the gateway believes."""

    __slots__ = ("_memo", "_networks")

    def __init__(self, entries: Iterable[str]) -> None:
        self._networks = parse_networks(entries)
        self._memo: dict[bytes, str] = {}  # chain -> client, for the few chains a proxy sends

    def __repr__(self) -> str:
        return f"<cove TrustedProxies {', '.join(str(n) for n in self._networks) or 'none'}>"

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: str | Address | None) -> bool:
        """Whether `address` (a peer's, or one from a chain) is a trusted proxy."""
        if isinstance(address, str):
            address = parse_address(address)
        return address is not None and any(address in network for network in self._networks)

    def client(self, peer: str, chain: bytes | None) -> str:
        """The client's address for a request from `peer` whose `X-Forwarded-For` is `chain`.

        An untrusted peer is the client, whatever it claims. From a trusted peer, walk the chain
        right to left past trusted addresses; the first untrusted one is the client. An entry that
        is not an address (`unknown`, garbage) ends the walk: the last trusted hop is the client.
        If every entry is trusted, the left-most is.

        >>> proxies = TrustedProxies(["10.0.0.0/8"])
        >>> proxies.client("10.0.0.1", b"6.6.6.6, 1.2.3.4, 10.0.0.2")
        '1.2.3.4'
        >>> proxies.client("8.8.8.8", b"1.2.3.4")
        '8.8.8.8'
        """
        if not chain or not self.trusts(peer):
            return peer
        known = self._memo.get(chain)
        if known is not None:
            return known
        client = peer
        for entry in reversed(chain.decode("latin-1").split(",")):
            address = parse_address(entry)
            if address is None:
                break
            client = str(address)
            if not any(address in network for network in self._networks):
                break
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[chain] = client
        return client


def forwarded_lines(client: str, proto: bytes = b"http") -> bytes:
    """The `X-Forwarded-For`/`X-Forwarded-Proto` lines the gateway adds to a forwarded request.

    >>> forwarded_lines("1.2.3.4")
    b'X-Forwarded-For: 1.2.3.4\\r\\nX-Forwarded-Proto: http\\r\\n'
    """
    return b"X-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\n" % (client.encode("ascii", "replace"), proto)


def forwarded_proto(claimed: bytes | None) -> bytes:
    """The scheme a trusted proxy reports (the last `X-Forwarded-Proto` entry): `http` or `https`.

    >>> forwarded_proto(b"https"), forwarded_proto(b"http, HTTPS"), forwarded_proto(b"gopher")
    (b'https', b'https', b'http')
    """
    if claimed:
        last = claimed.rpartition(b",")[2].strip().lower()
        if last in (b"http", b"https"):
            return last
    return b"http"
