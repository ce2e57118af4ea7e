"""The address a Platform API request comes from, for the account IP allow-lists and the failed-key throttle.

It is the socket's peer. Only when that peer is one of the operator's trusted proxies
(``QLARA_TRUSTED_PROXIES``: comma-separated CIDRs, none by default) does ``X-Forwarded-For`` count: the
entries are read from the right, each proxy having appended the address it got the request from, and the
first one that is not a trusted proxy is the client. Anything a client writes further left is never reached,
so a client cannot name its own address. An entry that is not an address makes the client unknown (None):
an account with an allow-list then refuses the request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TypeAlias

from aiohttp import web

from qlara_events.store.accounts import IPNetwork

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(raw: str) -> IPAddress | None:
    """An address as a socket or a proxy writes it (IPv4-mapped IPv6 as its IPv4 address); None if it is not."""
    text = raw.strip()
    if text.startswith("[") and "]" in text:  # -- "[2001:db8::1]:443" (RFC 7239 style, some proxies)
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # -- "192.0.2.1:51234"
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def client_address(request: web.Request, proxies: Sequence[IPNetwork]) -> IPAddress | None:
    """The request's client: the peer, or behind trusted ``proxies`` the right-most untrusted forwarded hop."""
    peer = parse_address(request.remote) if request.remote else None  # -- the socket's peer (aiohttp)
    if peer is None or not proxies or not _within(peer, proxies):
        return peer
    hops = [h for line in request.headers.getall("X-Forwarded-For", ()) for h in line.split(",")]
    address = peer
    for hop in reversed(hops):
        if not _within(address, proxies):
            break
        parsed = parse_address(hop)
        if parsed is None:
            return None
        address = parsed
    return address


def allowed(address: IPAddress | None, networks: Sequence[IPNetwork]) -> bool:
    """Whether an account with the allow-list ``networks`` (empty: no restriction) admits ``address``."""
    return not networks or (address is not None and _within(address, networks))
