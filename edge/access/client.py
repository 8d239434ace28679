"""Who the client is: the peer address, or behind a trusted load balancer, the hop it names.

HAProxy (``option forwardfor``) appends the address it received the request from to
``X-Forwarded-For``. Only hops added by proxies in ``server.trusted_proxies`` are believed: the
list is read from the right, past every trusted address, and the first other address is the
client. Whatever a client writes into the header itself sits left of that and is never used, so
no one picks their own rate-limit bucket.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Sequence[str]) -> tuple[Network, ...]:
    """``server.trusted_proxies`` as networks (the config loader has refused a bad entry)."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(request: web.BaseRequest, networks: tuple[Network, ...]) -> str:
    peer = request.remote or "unknown"
    if not networks or not _trusted(peer, networks):
        return peer
    hops = [hop.strip() for value in request.headers.getall("X-Forwarded-For", ()) for hop in value.split(",")]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a malformed hop: nothing left of it can be trusted
        if not _trusted(hop, networks):
            return hop
    return peer
