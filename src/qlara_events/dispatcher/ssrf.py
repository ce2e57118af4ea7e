"""SSRF guard for outgoing webhook delivery: which destinations a partner's (attacker-controlled) URL may reach.

Every address is judged by :func:`forbidden_reason`. Unless it lies inside an operator allow-list
(``QLARA_WEBHOOK_ALLOWED_NETWORKS``, parsed by :func:`parse_networks`), these are refused:

IPv4
    unspecified ``0.0.0.0``, "this network" ``0.0.0.0/8``, broadcast ``255.255.255.255``, loopback ``127/8``,
    link-local ``169.254/16`` (cloud metadata lives there), multicast ``224/4``, private (RFC 1918: ``10/8``,
    ``172.16/12``, ``192.168/16``), CGNAT ``100.64/10``, benchmarking ``198.18/15``, documentation
    (``192.0.2/24``, ``198.51.100/24``, ``203.0.113/24``), IETF protocol assignments ``192.0.0/24``, 6to4 relay
    anycast ``192.88.99/24``, reserved ``240/4``, and anything else :mod:`ipaddress` says is reserved or not
    globally reachable.
IPv6
    unspecified ``::``, loopback ``::1``, multicast ``ff00::/8``, link-local ``fe80::/10``, site-local
    ``fec0::/10``, unique local ("private") ``fc00::/7``, documentation ``2001:db8::/32`` and ``3fff::/20``,
    discard-only ``100::/64``, benchmarking ``2001:2::/48``, and anything else reserved or not globally reachable.
IPv4 embedded in IPv6
    IPv4-mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16``, Teredo ``2001::/32`` (the client address), NAT64
    ``64:ff9b::/96`` and local-use ``64:ff9b:1::/48`` (every RFC 6052 layout that fits must pass), and the
    deprecated IPv4-compatible ``::a.b.c.d``: the embedded IPv4 is judged by the IPv4 rules *and* the allow-list,
    so ``127.0.0.0/8`` in the allow-list also admits ``::ffff:127.0.0.1``. An IPv4-compatible address whose IPv4
    is public is still refused (the block is reserved and unroutable).

How delivery uses it, on every attempt:

1. :func:`check_url` — syntax, scheme, credentials, port, length, and IP-literal hosts.
2. A ``ClientSession`` built on :func:`guarded_connector` — every address the connector is about to connect
   to (resolver answers *and* IP literals) is checked right before the connect, and aiohttp connects to exactly
   those addresses, so a DNS answer that changes between check and connect (rebinding) cannot slip through.
   Proxies are refused (the proxy would pick the destination, not this guard).
3. Requests with ``allow_redirects=False`` (3xx is a failure, never followed).

Recognising a refusal that surfaces from ``ClientSession.request``: aiohttp wraps the resolver's OSError in
``aiohttp.ClientConnectorError`` (the ``ClientConnectorDNSError`` subclass in recent releases) and keeps it as
``os_error`` and ``__cause__``. The guard raises :class:`DestinationRefused`, an ``OSError`` carrying the
:class:`ForbiddenDestination`, so callers write ``if (refusal := ssrf_refusal(exc)) is not None`` in their
``except aiohttp.ClientError`` block. A plain DNS failure stays an ordinary ``ClientConnectorDNSError`` (retryable).
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from collections.abc import Collection, Sequence
from typing import Final, TypeAlias

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.connector import Connection
from aiohttp.tracing import Trace

from qlara_events.errors import BadRequest

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

UNRESOLVABLE: Final = "unresolvable"
"""``ForbiddenDestination.reason`` when the host did not resolve: a delivery failure rather than an attack."""

MAX_URL_LENGTH: Final = 2048

#: The ports a webhook URL may always name; any other must be listed by the operator
#: (``QLARA_WEBHOOK_ALLOWED_PORTS``): with every port open, delivery outcomes would map the ports of a host.
STANDARD_PORTS: Final = frozenset({443, 80})

#: What the API and the delivery log say about a destination refused for what its host is or resolves to: the
#: details (the address, its range, the resolver's error) go to the server log only, or registering URLs
#: would tell a partner what internal names resolve to.
GENERIC_REFUSAL: Final = "the webhook URL's host is not an acceptable destination: it must resolve to public addresses"


def webhook_ports(extra: Collection[int]) -> frozenset[int]:
    """The ports a webhook URL may name: 443, 80 and the operator's ``extra``."""
    return STANDARD_PORTS | frozenset(extra)


class ForbiddenDestination(BadRequest):
    """The webhook URL points at a forbidden address or is not acceptable.

    ``reason`` is the short cause ("loopback", "scheme", :data:`UNRESOLVABLE` ...); ``host`` and ``address``
    name the culprit when there is one. The message says which address/range or scheme was refused.
    """

    def __init__(self, message: str, *, reason: str, host: str | None = None, address: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.host = host
        self.address = address


class DestinationRefused(OSError):
    """The OSError the guard raises inside aiohttp's connector; ``refusal`` is the :class:`ForbiddenDestination`.

    An OSError because aiohttp turns exactly those into ``ClientConnectorError`` (a ``ClientError`` callers
    already handle) instead of letting them escape unwrapped.
    """

    def __init__(self, refusal: ForbiddenDestination) -> None:
        # EACCES: the connect is refused by local policy, as a firewall would do.
        super().__init__(errno.EACCES, f"SSRF guard: {refusal.message}")
        self.refusal = refusal


def ssrf_refusal(exc: BaseException) -> ForbiddenDestination | None:
    """The :class:`ForbiddenDestination` behind ``exc`` (itself, or wrapped by aiohttp), else None."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ForbiddenDestination):
            return current
        if isinstance(current, DestinationRefused):
            return current.refusal
        if isinstance(current, aiohttp.ClientConnectorError):
            todo.append(current.os_error)
        # Only explicit causes: __context__ could be an unrelated error that was being handled at the time.
        if current.__cause__ is not None:
            todo.append(current.__cause__)
    return None


# First match wins, so the narrow ranges come before the ones that contain them.
_IPV4_RULES: Final[tuple[tuple[IPNetwork, str], ...]] = tuple(
    (ipaddress.ip_network(spec), reason)
    for spec, reason in (
        ("0.0.0.0/32", "unspecified"),
        ("0.0.0.0/8", "this network (0.0.0.0/8)"),
        ("255.255.255.255/32", "broadcast"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("10.0.0.0/8", "private (10.0.0.0/8)"),
        ("172.16.0.0/12", "private (172.16.0.0/12)"),
        ("192.168.0.0/16", "private (192.168.0.0/16)"),
        ("100.64.0.0/10", "CGNAT (100.64.0.0/10)"),
        ("198.18.0.0/15", "benchmarking (198.18.0.0/15)"),
        ("192.0.2.0/24", "documentation (192.0.2.0/24)"),
        ("198.51.100.0/24", "documentation (198.51.100.0/24)"),
        ("203.0.113.0/24", "documentation (203.0.113.0/24)"),
        ("192.0.0.0/24", "IETF protocol assignments (192.0.0.0/24)"),
        ("192.88.99.0/24", "6to4 relay anycast (192.88.99.0/24)"),
        ("240.0.0.0/4", "reserved (240.0.0.0/4)"),
    )
)

# Checked after the special cases (unspecified, loopback, embedded IPv4) in _ipv6_reason.
_IPV6_RULES: Final[tuple[tuple[IPNetwork, str], ...]] = tuple(
    (ipaddress.ip_network(spec), reason)
    for spec, reason in (
        ("ff00::/8", "multicast"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (fec0::/10)"),
        ("fc00::/7", "private (unique local fc00::/7)"),
        ("2001:db8::/32", "documentation (2001:db8::/32)"),
        ("3fff::/20", "documentation (3fff::/20)"),
        ("100::/64", "discard-only (100::/64)"),
        ("2001:2::/48", "benchmarking (2001:2::/48)"),
    )
)

_IPV4_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")
_IPV4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")
_NAT64_WELL_KNOWN: Final = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL_USE: Final = ipaddress.IPv6Network("64:ff9b:1::/48")
# RFC 6052 prefix lengths an operator may use inside the local-use /48; where the IPv4 sits depends on it.
_NAT64_LOCAL_LAYOUTS: Final = (96, 64, 56, 48)


def _allowed(ip: IPAddress, allowed: Sequence[IPNetwork]) -> bool:
    # ``in`` is simply False across IP versions, so one mixed allow-list serves both.
    return any(ip in network for network in allowed)


def _rfc6052_ipv4(ip: ipaddress.IPv6Address, prefix_length: int) -> ipaddress.IPv4Address:
    """The IPv4 embedded in ``ip`` for an RFC 6052 prefix of ``prefix_length`` bits (bits 64-71 are skipped)."""
    value = int(ip)
    if prefix_length == 96:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    # Drop the reserved "u" octet (bits 64-71): what is left is the prefix followed by the IPv4 and a suffix.
    squeezed = ((value >> 64) << 56) | (value & ((1 << 56) - 1))
    return ipaddress.IPv4Address((squeezed >> (120 - prefix_length - 32)) & 0xFFFFFFFF)


def _ipv4_reason(ip: ipaddress.IPv4Address) -> str | None:
    for network, reason in _IPV4_RULES:
        if ip in network:
            return reason
    if ip.is_reserved:
        return "reserved"
    if ip.is_private or not ip.is_global:
        return "not globally reachable"
    return None


def _embedded_reason(
    label: str, candidates: Sequence[ipaddress.IPv4Address], allowed: Sequence[IPNetwork]
) -> str | None:
    for candidate in candidates:
        reason = forbidden_reason(candidate, allowed)
        if reason is not None:
            return f"{label} {reason}"
    return None


def _ipv6_reason(ip: ipaddress.IPv6Address, allowed: Sequence[IPNetwork]) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip in _IPV4_MAPPED:
        assert ip.ipv4_mapped is not None
        return _embedded_reason("IPv4-mapped", [ip.ipv4_mapped], allowed)
    if ip.sixtofour is not None:
        return _embedded_reason("6to4", [ip.sixtofour], allowed)
    if ip.teredo is not None:
        # The client address is where the relay delivers the packets; the server only helped set up the tunnel.
        return _embedded_reason("Teredo", [ip.teredo[1]], allowed)
    if ip in _NAT64_WELL_KNOWN:
        return _embedded_reason("NAT64", [_rfc6052_ipv4(ip, 96)], allowed)
    if ip in _NAT64_LOCAL_USE:
        # The layout inside the local-use /48 is the operator's choice. Name the common /96 reading's verdict,
        # and deliver only if every plausible reading is deliverable.
        readings = [_rfc6052_ipv4(ip, length) for length in _NAT64_LOCAL_LAYOUTS]
        reason = _embedded_reason("NAT64", readings[:1], allowed)
        if reason is not None or all(forbidden_reason(other, allowed) is None for other in readings[1:]):
            return reason
        return "local-use NAT64 (64:ff9b:1::/48) with an embedded IPv4 that depends on the prefix length"
    if ip in _IPV4_COMPATIBLE:
        embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        reason = _embedded_reason("IPv4-compatible", [embedded], allowed)
        if reason is not None or _allowed(embedded, allowed):
            return reason
        return "reserved (deprecated IPv4-compatible ::/96)"
    for network, reason in _IPV6_RULES:
        if ip in network:
            return reason
    if ip.is_reserved:
        return "reserved"
    if ip.is_private or not ip.is_global:
        return "not globally reachable"
    return None


def forbidden_reason(ip: IPAddress, allowed: Sequence[IPNetwork]) -> str | None:
    """None if webhooks may be delivered to ``ip``, else a short reason ("loopback", "IPv4-mapped private" ...).

    An address inside any ``allowed`` network is always deliverable; see the module docstring for the rest.
    """
    if _allowed(ip, allowed):
        return None
    if isinstance(ip, ipaddress.IPv4Address):
        return _ipv4_reason(ip)
    return _ipv6_reason(ip, allowed)


def parse_networks(csv: str | None) -> tuple[IPNetwork, ...]:
    """Parse ``QLARA_WEBHOOK_ALLOWED_NETWORKS``: comma-separated CIDRs or single addresses (empty/None: none).

    Raises ValueError naming the bad entry, including a network written with host bits set (``10.1.2.3/16``),
    which is more likely a typo than an intent.
    """
    if csv is None:
        return ()
    networks: list[IPNetwork] = []
    for raw in csv.split(","):
        item = raw.strip()
        if not item:
            continue  # tolerate "a, b," and an empty variable
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError as exc:
            try:
                loose = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"QLARA_WEBHOOK_ALLOWED_NETWORKS: {item!r} is not a CIDR network or an IP address"
                ) from exc
            raise ValueError(
                f"QLARA_WEBHOOK_ALLOWED_NETWORKS: {item!r} has host bits set; did you mean {loose}?"
            ) from exc
    return tuple(networks)


# Letters, digits, hyphen (not at either end) and underscore (common in real DNS names, e.g. _dmarc).
_LABEL: Final = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")


def _hostname_problem(host: str) -> str | None:
    """Why ``host`` (lower-case, IDNA-encoded) is not a plausible DNS name, or None."""
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        return "hostname length"
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return "invalid hostname"
    # A numeric last label is never a TLD; such hosts are legacy IPv4 forms (127.1, 2130706433, 0177.0.0.1)
    # that getaddrinfo would quietly turn into an address. inet_aton also catches hex forms (0x7f000001).
    if labels[-1].isdigit():
        return "non-canonical IPv4 address"
    try:
        socket.inet_aton(name)
    except OSError:
        return None
    return "non-canonical IPv4 address"


def check_url(url: str, *, require_https: bool, allowed: Sequence[IPNetwork],
              ports: Collection[int] | None = None) -> yarl.URL:
    """Validate a webhook URL and return it parsed; raise ForbiddenDestination if it is not acceptable.

    Checks: absolute http(s) URL with a host, https unless ``require_https`` is False, no userinfo, port 1..65535,
    at most 2048 characters, and IP-literal hosts by :func:`forbidden_reason`. Hostnames are only checked for
    syntax: what they resolve to is judged at connect time (:func:`guarded_connector`, :func:`resolve_checked`).
    With ``ports`` (see :func:`webhook_ports`), the URL's port (443 or 80 when it names none) must be one of them.
    """
    if len(url) > MAX_URL_LENGTH:
        raise ForbiddenDestination(f"the webhook URL is longer than {MAX_URL_LENGTH} characters", reason="too long")
    try:
        parsed = yarl.URL(url)
        port = parsed.port
    except (TypeError, ValueError) as exc:
        raise ForbiddenDestination(f"the webhook URL is not a valid URL: {exc}", reason="invalid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise ForbiddenDestination(
            f"the webhook URL scheme must be https or http, not {parsed.scheme!r}", reason="scheme"
        )
    if require_https and parsed.scheme != "https":
        raise ForbiddenDestination(f"the webhook URL scheme must be https, not {parsed.scheme!r}", reason="scheme")
    host = parsed.raw_host
    if not parsed.is_absolute() or not host:
        raise ForbiddenDestination("the webhook URL has no host", reason="invalid URL")
    if parsed.user is not None or parsed.password is not None:
        raise ForbiddenDestination("the webhook URL must not contain credentials (user:password@)", reason="userinfo")
    if port is None or not 1 <= port <= 65535:
        raise ForbiddenDestination(f"the webhook URL port {port} is not in 1..65535", reason="port")
    if ports is not None and port not in ports:
        raise ForbiddenDestination(
            f"the webhook URL port {port} is not allowed: use 443 (https) or 80, or a port the operator allows",
            reason="port")
    try:
        # parsed.host is the decoded form: an IPv6 zone is "%eth0" there and "%25eth0" in raw_host.
        literal: IPAddress | None = ipaddress.ip_address(parsed.host or host)
    except ValueError:
        literal = None
    if literal is None:
        problem = _hostname_problem(host)
        if problem is not None:
            raise ForbiddenDestination(f"the webhook URL host {host!r} is not acceptable ({problem})", reason=problem)
        return parsed
    reason = forbidden_reason(literal, allowed)
    if reason is not None:
        raise ForbiddenDestination(
            f"the webhook URL host {literal} is a forbidden address ({reason})",
            reason=reason,
            host=host,
            address=str(literal),
        )
    return parsed


def _refuse_forbidden(host: str, results: Sequence[ResolveResult], allowed: Sequence[IPNetwork]) -> None:
    """Raise ForbiddenDestination if any of ``results`` is forbidden: one bad answer condemns the host."""
    for result in results:
        address = result["host"]
        try:
            reason = forbidden_reason(ipaddress.ip_address(address), allowed)
        except ValueError:
            reason = "not an IP address"
        if reason is None:
            continue
        if address == host:
            message = f"the webhook host {address} is a forbidden address ({reason})"
        else:
            message = f"the webhook host {host} resolves to a forbidden address: {address} ({reason})"
        raise ForbiddenDestination(message, reason=reason, host=host, address=address)


def _literal(host: str, port: int) -> list[ResolveResult] | None:
    """The one answer for a host that is an IP address in its canonical form (``[v6]`` brackets allowed)."""
    try:
        ip = ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        return None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return [ResolveResult(hostname=host, host=str(ip), port=port, family=family, proto=0,
                          flags=socket.AI_NUMERICHOST)]


async def resolve_checked(
    host: str,
    port: int,
    *,
    allowed: Sequence[IPNetwork],
    resolver: AbstractResolver | None = None,
) -> list[ResolveResult]:
    """Resolve ``host`` (both families) and return the answers if every one is deliverable.

    Raises ForbiddenDestination if any answer is forbidden (DNS under attacker control may mix a public and a
    private address: the whole host is refused), or with ``reason`` :data:`UNRESOLVABLE` if resolution fails or
    returns nothing. Without ``resolver``, aiohttp's ThreadedResolver (the system's getaddrinfo) is used.
    """
    literal = _literal(host, port)
    if literal is not None:
        # An IP literal needs no lookup (getaddrinfo would echo it back from a worker thread): checked alike.
        _refuse_forbidden(host, literal, allowed)
        return literal
    active = resolver if resolver is not None else aiohttp.ThreadedResolver()
    try:
        results = await active.resolve(host, port, family=socket.AF_UNSPEC)
    except OSError as exc:
        raise ForbiddenDestination(
            f"the webhook host {host} cannot be resolved: {exc}", reason=UNRESOLVABLE, host=host
        ) from exc
    finally:
        if resolver is None:
            await active.close()
    if not results:
        raise ForbiddenDestination(f"the webhook host {host} has no addresses", reason=UNRESOLVABLE, host=host)
    _refuse_forbidden(host, results, allowed)
    return results


class GuardedResolver(AbstractResolver):
    """A resolver that returns only deliverable answers and raises :class:`DestinationRefused` otherwise.

    Wraps ``resolver`` (default: aiohttp's ThreadedResolver; create it inside a running loop). Resolution
    errors pass through unchanged, so aiohttp reports them as an ordinary ``ClientConnectorDNSError``.
    Closing the guard closes the wrapped resolver. Note that aiohttp never asks a resolver about IP-literal
    hosts: use :func:`guarded_connector`, which also checks those.
    """

    def __init__(self, allowed: Sequence[IPNetwork], resolver: AbstractResolver | None = None) -> None:
        self._allowed = tuple(allowed)
        self._resolver = resolver if resolver is not None else aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host`` with the wrapped resolver; raise DestinationRefused if any answer is forbidden."""
        results = await self._resolver.resolve(host, port, family)
        _check_for_connector(host, results, self._allowed)
        return results

    async def close(self) -> None:
        """Close the wrapped resolver."""
        await self._resolver.close()


def _check_for_connector(host: str, results: Sequence[ResolveResult], allowed: Sequence[IPNetwork]) -> None:
    """Like _refuse_forbidden, but raising the OSError that aiohttp wraps into ClientConnectorError."""
    try:
        _refuse_forbidden(host, results, allowed)
    except ForbiddenDestination as refusal:
        raise DestinationRefused(refusal) from refusal


# The connector below hooks TCPConnector._resolve_host, a private method with the same signature and role in
# aiohttp 3.10 through 3.14. Fail at import rather than silently lose the IP-literal check if that ever changes.
if not callable(getattr(aiohttp.TCPConnector, "_resolve_host", None)):  # pragma: no cover - aiohttp upgrade guard
    raise ImportError("aiohttp.TCPConnector._resolve_host is gone: the SSRF guard must be ported")


class _GuardedConnector(aiohttp.TCPConnector):
    """TCPConnector that checks every address right before connecting, IP literals included, and refuses proxies."""

    def __init__(self, *, allowed: Sequence[IPNetwork], limit_per_host: int, resolver: AbstractResolver | None,
                 limit: int = 100) -> None:
        self._ssrf_allowed = tuple(allowed)
        # No DNS cache: every attempt resolves afresh, so a partner's DNS change (or a newly forbidden answer)
        # takes effect at once. Safety does not depend on it: _resolve_host checks cache hits too.
        super().__init__(
            resolver=GuardedResolver(allowed, resolver), use_dns_cache=False, limit_per_host=limit_per_host,
            limit=limit,
        )

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Trace] | None = None
    ) -> list[ResolveResult]:
        # Why a private hook: for IP-literal hosts aiohttp builds the answer itself (``if is_ip_address(host)``
        # at the top of _resolve_host) and never asks the resolver, so GuardedResolver alone would let
        # http://127.0.0.1/ through. _create_direct_connection connects to exactly the addresses returned here
        # (literal, resolver answer or cache hit alike), so checking them is "connect only to what was checked".
        # It catches the OSError we raise and re-raises ClientConnectorDNSError(...) from it.
        results = await super()._resolve_host(host, port, traces=traces)
        _check_for_connector(host, results, self._ssrf_allowed)
        return results

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 -- aiohttp's BaseConnector.connect signature, overridden
    ) -> Connection:
        """Refuse proxied requests (the proxy, not this guard, would choose the address), else connect."""
        if req.proxy is not None:
            refusal = ForbiddenDestination(
                "webhook delivery through a proxy is refused: the proxy would choose the destination address",
                reason="proxy",
                host=req.url.raw_host,
            )
            refused = DestinationRefused(refusal)
            refused.__cause__ = refusal
            raise aiohttp.ClientConnectorError(req.connection_key, refused) from refused
        return await super().connect(req, traces, timeout)


def guarded_connector(
    *, allowed: Sequence[IPNetwork], limit_per_host: int, resolver: AbstractResolver | None = None,
    limit: int = 100,
) -> aiohttp.TCPConnector:
    """A TCPConnector that only connects to deliverable addresses (create it inside a running loop).

    Hostnames are resolved through :class:`GuardedResolver` without a DNS cache, and every address returned
    for a connect — IP literals included — is checked again right before aiohttp connects to it, so DNS
    rebinding cannot redirect a checked host. A refusal surfaces from ``ClientSession.request`` as
    ``aiohttp.ClientConnectorError`` (recognise it with :func:`ssrf_refusal`); requests through a proxy (``proxy=``
    or ``trust_env=True``) are refused the same way. Callers still run :func:`check_url` on every attempt (scheme,
    credentials, syntax) and pass ``allow_redirects=False``. A ``resolver`` passed in stays the caller's to close.
    """
    return _GuardedConnector(allowed=allowed, limit_per_host=limit_per_host, resolver=resolver, limit=limit)
