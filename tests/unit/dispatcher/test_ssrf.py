"""The SSRF guard for webhook delivery: address rules, allow-list, URL checks, resolution and the guarded connector."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from qlara_events.dispatcher.ssrf import (
    UNRESOLVABLE,
    DestinationRefused,
    ForbiddenDestination,
    GuardedResolver,
    IPNetwork,
    check_url,
    forbidden_reason,
    guarded_connector,
    parse_networks,
    resolve_checked,
    ssrf_refusal,
)
from qlara_events.errors import BadRequest

LOOPBACK = parse_networks("127.0.0.0/8, ::1/128")

FORBIDDEN = [
    # IPv4
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network"),
    ("255.255.255.255", "broadcast"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.169.254", "link-local"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "CGNAT (100.64.0.0/10)"),
    ("100.127.255.254", "CGNAT"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("192.0.0.8", "IETF"),
    ("192.88.99.1", "6to4 relay"),
    ("240.0.0.1", "reserved"),
    ("250.1.2.3", "reserved"),
    # IPv6
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fc00::1", "private"),
    ("fd12:3456:789a::1", "private"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("100::1", "discard-only"),
    ("2001:2::1", "benchmarking"),
    # IPv4 embedded in IPv6
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("::ffff:169.254.169.254", "IPv4-mapped link-local"),
    ("::ffff:0.0.0.0", "IPv4-mapped unspecified"),
    ("::ffff:100.64.0.1", "IPv4-mapped CGNAT"),
    ("2002:7f00:0001::", "6to4 loopback"),
    ("2002:0a00:0001::", "6to4 private"),
    ("2002:a9fe:a9fe::1", "6to4 link-local"),
    ("64:ff9b::a00:1", "NAT64 private"),
    ("64:ff9b::7f00:1", "NAT64 loopback"),
    ("64:ff9b:1::a00:1", "NAT64 private"),  # local-use prefix, /96 layout
    ("64:ff9b:1:a00:0:100:808:808", "local-use NAT64"),  # 8.8.8.8 in the /96 layout, 10.0.0.1 in the /48 one
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "Teredo private"),  # client 10.0.0.1 (obfuscated)
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo loopback"),  # client 127.0.0.1
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo documentation"),  # client 192.0.2.45 (RFC 4380 example)
    ("::7f00:1", "IPv4-compatible loopback"),
    ("::808:808", "reserved"),  # IPv4-compatible with a public IPv4: still unroutable
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "2606:4700:4700::1111",
    "2a00:1450:4001:82b::200e",
    "::ffff:8.8.8.8",
    "2002:808:808::1",
    "64:ff9b::808:808",
    "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # Teredo, client 8.8.8.8
]


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse an address for the table tests."""
    return ipaddress.ip_address(text)


def result(host: str, address: str, port: int = 443) -> ResolveResult:
    """A resolver answer as aiohttp's ThreadedResolver builds it."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return ResolveResult(hostname=host, host=address, port=port, family=family, proto=0, flags=0)


class FakeResolver(AbstractResolver):
    """A resolver with canned answers (or a canned error) that records what it was asked."""

    def __init__(self, addresses: Sequence[str] = (), error: OSError | None = None) -> None:
        self.addresses = list(addresses)
        self.error = error
        self.asked: list[str] = []
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if self.error is not None:
            raise self.error
        return [result(host, address, port) for address in self.addresses]

    async def close(self) -> None:
        self.closed = True


class TestForbiddenReason:
    """Each forbidden range is refused with a specific reason; public addresses pass."""

    @pytest.mark.parametrize(("address", "expected"), FORBIDDEN)
    def test_forbidden_ranges(self, address: str, expected: str) -> None:
        """An address in a forbidden range is refused and the reason names the range."""
        reason = forbidden_reason(ip(address), ())
        assert reason is not None and expected in reason, reason

    @pytest.mark.parametrize("address", PUBLIC)
    def test_public_addresses(self, address: str) -> None:
        """Globally reachable addresses (also when embedded in IPv6) are deliverable."""
        assert forbidden_reason(ip(address), ()) is None


class TestAllowList:
    """Operator allow-lists open exactly the listed networks, for embedded IPv4 too."""

    def test_loopback_allowed(self) -> None:
        """127.0.0.0/8 admits 127.0.0.1 and its IPv4-mapped form, but not 10.0.0.1."""
        allowed = parse_networks("127.0.0.0/8")
        assert forbidden_reason(ip("127.0.0.1"), allowed) is None
        assert forbidden_reason(ip("::ffff:127.0.0.1"), allowed) is None
        assert forbidden_reason(ip("10.0.0.1"), allowed) == "private (10.0.0.0/8)"
        assert forbidden_reason(ip("::1"), allowed) == "loopback"

    def test_private_subnet(self) -> None:
        """10.1.0.0/16 admits 10.1.2.3 but not 10.2.0.1."""
        allowed = parse_networks("10.1.0.0/16")
        assert forbidden_reason(ip("10.1.2.3"), allowed) is None
        assert forbidden_reason(ip("10.2.0.1"), allowed) is not None

    def test_embedded_ipv4_follows_allow_list(self) -> None:
        """6to4 and NAT64 forms of an allowed IPv4 are allowed too; an unlisted one stays refused."""
        allowed = parse_networks("10.1.0.0/16")
        assert forbidden_reason(ip("2002:0a01:0203::"), allowed) is None
        assert forbidden_reason(ip("64:ff9b::10.1.2.3"), allowed) is None
        assert forbidden_reason(ip("64:ff9b::10.2.0.1"), allowed) == "NAT64 private (10.0.0.0/8)"

    def test_ipv6_network(self) -> None:
        """An IPv6 network in the list admits its addresses only."""
        allowed = parse_networks("fd00:1::/64")
        assert forbidden_reason(ip("fd00:1::5"), allowed) is None
        assert forbidden_reason(ip("fd00:2::5"), allowed) is not None


class TestParseNetworks:
    """QLARA_WEBHOOK_ALLOWED_NETWORKS parsing."""

    @pytest.mark.parametrize("value", [None, "", "  ", ","])
    def test_empty(self, value: str | None) -> None:
        """An unset or blank variable allows nothing."""
        assert parse_networks(value) == ()

    def test_cidrs_and_addresses(self) -> None:
        """CIDRs and single addresses of both families parse, whitespace and a trailing comma tolerated."""
        assert parse_networks(" 10.1.0.0/16 ,192.168.5.7, fd00::/8 ,::1,") == (
            ipaddress.ip_network("10.1.0.0/16"),
            ipaddress.ip_network("192.168.5.7/32"),
            ipaddress.ip_network("fd00::/8"),
            ipaddress.ip_network("::1/128"),
        )

    @pytest.mark.parametrize("value", ["garbage", "10.0.0.0/33", "10.0.0.0/8; 1.2.3.4", "localhost", "10.0.0.0/8,nope"])
    def test_garbage(self, value: str) -> None:
        """Anything that is not a network raises ValueError naming the variable."""
        with pytest.raises(ValueError, match="QLARA_WEBHOOK_ALLOWED_NETWORKS"):
            parse_networks(value)

    def test_host_bits(self) -> None:
        """A network with host bits set is refused with the probable intent."""
        with pytest.raises(ValueError, match=r"did you mean 10\.1\.0\.0/16"):
            parse_networks("10.1.2.3/16")


class TestCheckUrl:
    """Webhook URL syntax, scheme, credentials, port and IP-literal checks."""

    def test_https_accepted(self) -> None:
        """A plain https URL with a hostname is returned parsed."""
        url = check_url("https://hooks.example.com:8443/qlara?x=1", require_https=True, allowed=())
        assert (url.host, url.port, url.path_qs) == ("hooks.example.com", 8443, "/qlara?x=1")

    def test_hostnames_judged_later(self) -> None:
        """Hostnames, even localhost, pass syntax checks: their addresses are judged at connect time."""
        for url in ("https://localhost/", "https://metadata.google.internal/", "https://münchen.de/", "https://a.example."):
            check_url(url, require_https=True, allowed=())

    def test_http_refused_when_https_required(self) -> None:
        """http is refused when https is required, and the message names the scheme."""
        with pytest.raises(ForbiddenDestination, match="https") as info:
            check_url("http://hooks.example.com/", require_https=True, allowed=())
        assert info.value.reason == "scheme"
        assert isinstance(info.value, BadRequest) and info.value.status == 400

    def test_http_accepted_when_allowed(self) -> None:
        """http is accepted when https is not required."""
        assert check_url("http://hooks.example.com/", require_https=False, allowed=()).scheme == "http"

    @pytest.mark.parametrize("url", ["https://user:pw@example.com/", "https://user@example.com/", "https://:@example.com/"])
    def test_userinfo_refused(self, url: str) -> None:
        """Credentials in the URL are refused."""
        with pytest.raises(ForbiddenDestination) as info:
            check_url(url, require_https=True, allowed=())
        assert info.value.reason == "userinfo"

    def test_ip_literal_loopback(self) -> None:
        """A loopback IP literal is refused, unless the allow-list covers it."""
        with pytest.raises(ForbiddenDestination, match=r"127\.0\.0\.1.*loopback"):
            check_url("https://127.0.0.1/", require_https=True, allowed=())
        check_url("https://127.0.0.1/", require_https=True, allowed=LOOPBACK)

    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("http://[::1]/", "loopback"),
            ("http://[::ffff:127.0.0.1]:8080/", "IPv4-mapped loopback"),
            ("http://169.254.169.254/latest/meta-data/", "link-local"),
            ("http://[fe80::1%25eth0]/", "link-local"),
            ("http://0.0.0.0:8080/", "unspecified"),
        ],
    )
    def test_forbidden_literals(self, url: str, reason: str) -> None:
        """IP literals are judged by the address rules."""
        with pytest.raises(ForbiddenDestination) as info:
            check_url(url, require_https=False, allowed=())
        assert reason in info.value.reason

    def test_public_literal(self) -> None:
        """A public IP literal is accepted."""
        check_url("https://[2606:4700:4700::1111]/", require_https=True, allowed=())

    @pytest.mark.parametrize("url", ["http://127.1/", "http://2130706433/", "http://0x7f000001/", "http://0177.0.0.1/"])
    def test_legacy_ipv4_forms(self, url: str) -> None:
        """Numeric host forms that getaddrinfo would turn into an address are refused."""
        with pytest.raises(ForbiddenDestination, match="non-canonical IPv4"):
            check_url(url, require_https=False, allowed=LOOPBACK)

    @pytest.mark.parametrize("url", ["https://example.com:0/", "https://example.com:65536/", "https://example.com:x/"])
    def test_bad_ports(self, url: str) -> None:
        """Ports outside 1..65535 or not numeric are refused."""
        with pytest.raises(ForbiddenDestination):
            check_url(url, require_https=True, allowed=())

    @pytest.mark.parametrize(
        "url",
        ["ftp://example.com/", "file:///etc/passwd", "gopher://example.com/", "javascript:alert(1)",
         "//example.com/x", "/relative", "example.com", ""],
    )
    def test_bad_schemes(self, url: str) -> None:
        """Anything but an absolute http(s) URL is refused."""
        with pytest.raises(ForbiddenDestination):
            check_url(url, require_https=False, allowed=())

    @pytest.mark.parametrize(
        "url", ["https://", "http:///x", "https://exa mple.com/", "https://ex..com/", "https://-ex.com/",
                "https://%31%32%37.0.0.1/", "https://ex.com\\@evil.com/", "https://" + "a" * 64 + ".com/"],
    )
    def test_bad_hosts(self, url: str) -> None:
        """A missing or malformed host is refused."""
        with pytest.raises(ForbiddenDestination):
            check_url(url, require_https=False, allowed=())

    def test_too_long(self) -> None:
        """A URL longer than 2048 characters is refused."""
        with pytest.raises(ForbiddenDestination, match="2048"):
            check_url("https://example.com/" + "a" * 2048, require_https=True, allowed=())


class TestResolveChecked:
    """Resolution with every answer checked."""

    async def test_localhost_refused(self) -> None:
        """localhost resolves (system resolver) to loopback and is refused."""
        with pytest.raises(ForbiddenDestination, match="localhost resolves to a forbidden address") as info:
            await resolve_checked("localhost", 443, allowed=())
        assert info.value.reason == "loopback" and info.value.host == "localhost"

    async def test_localhost_allowed(self) -> None:
        """With loopback allow-listed, localhost's answers are returned."""
        answers = await resolve_checked("localhost", 443, allowed=LOOPBACK)
        assert answers and all(ipaddress.ip_address(a["host"]).is_loopback for a in answers)

    async def test_mixed_answer_refused_whole(self) -> None:
        """One private address among public ones condemns the whole host."""
        resolver = FakeResolver(["8.8.8.8", "2606:4700:4700::1111", "10.0.0.1"])
        with pytest.raises(ForbiddenDestination, match=r"10\.0\.0\.1") as info:
            await resolve_checked("evil.example", 443, allowed=(), resolver=resolver)
        assert info.value.address == "10.0.0.1" and "private" in info.value.reason
        assert not resolver.closed

    async def test_public_answer(self) -> None:
        """All-public answers are returned unchanged."""
        resolver = FakeResolver(["8.8.8.8", "2606:4700:4700::1111"])
        answers = await resolve_checked("good.example", 443, allowed=(), resolver=resolver)
        assert [a["host"] for a in answers] == ["8.8.8.8", "2606:4700:4700::1111"]

    @pytest.mark.parametrize("resolver", [FakeResolver(error=socket.gaierror(-2, "Name or service not known")), FakeResolver()])
    async def test_unresolvable(self, resolver: FakeResolver) -> None:
        """A failed or empty resolution is refused with the 'unresolvable' reason."""
        with pytest.raises(ForbiddenDestination) as info:
            await resolve_checked("nowhere.example", 443, allowed=(), resolver=resolver)
        assert info.value.reason == UNRESOLVABLE


    @pytest.mark.parametrize(("host", "reason"), [("127.0.0.1", "loopback"), ("10.1.2.3", "private"),
                                                   ("::1", "loopback"), ("169.254.169.254", "link-local")])
    async def test_ip_literal_checked_without_a_lookup(self, host: str, reason: str) -> None:
        """An IP literal is refused by its own range; no resolver is asked (nothing to look up)."""
        resolver = FakeResolver(["8.8.8.8"])
        with pytest.raises(ForbiddenDestination, match="is a forbidden address") as info:
            await resolve_checked(host, 443, allowed=(), resolver=resolver)
        assert reason in info.value.reason and info.value.address == host and resolver.asked == []

    @pytest.mark.parametrize(("host", "family"), [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)])
    async def test_allowed_ip_literal_is_its_own_answer(self, host: str, family: int) -> None:
        """An allow-listed literal comes back as the one address to connect to, with its family."""
        resolver = FakeResolver(["8.8.8.8"])
        answers = await resolve_checked(host, 8080, allowed=LOOPBACK, resolver=resolver)
        assert [(a["host"], a["port"], a["family"]) for a in answers] == [(host, 8080, family)]
        assert resolver.asked == []

    async def test_non_canonical_numeric_host_is_still_resolved_and_checked(self) -> None:
        """A numeric form ipaddress does not parse ("2130706433") goes to the resolver, whose answers are checked."""
        resolver = FakeResolver(["127.0.0.1"])
        with pytest.raises(ForbiddenDestination, match="resolves to a forbidden address"):
            await resolve_checked("2130706433", 443, allowed=(), resolver=resolver)
        assert resolver.asked == ["2130706433"]


class TestGuardedResolver:
    """The resolver wrapper aiohttp's connector uses."""

    async def test_forbidden_answer_raises_oserror(self) -> None:
        """A forbidden answer raises DestinationRefused, an OSError carrying the refusal."""
        guarded = GuardedResolver((), FakeResolver(["8.8.8.8", "192.168.0.10"]))
        with pytest.raises(DestinationRefused) as info:
            await guarded.resolve("evil.example", 443, socket.AF_UNSPEC)
        assert isinstance(info.value, OSError)
        assert info.value.refusal.address == "192.168.0.10"
        assert ssrf_refusal(info.value) is info.value.refusal

    async def test_allowed_answer(self) -> None:
        """Answers inside the allow-list are returned."""
        guarded = GuardedResolver(parse_networks("192.168.0.0/24"), FakeResolver(["192.168.0.10"]))
        assert [a["host"] for a in await guarded.resolve("printer.lan", 80)] == ["192.168.0.10"]

    async def test_resolution_error_passes_through(self) -> None:
        """A DNS failure is not an SSRF refusal: the resolver's error passes through unchanged."""
        error = socket.gaierror(-2, "Name or service not known")
        guarded = GuardedResolver((), FakeResolver(error=error))
        with pytest.raises(socket.gaierror) as info:
            await guarded.resolve("nowhere.example", 443)
        assert info.value is error and ssrf_refusal(info.value) is None

    async def test_close_closes_wrapped(self) -> None:
        """Closing the guard closes the wrapped resolver."""
        inner = FakeResolver()
        await GuardedResolver((), inner).close()
        assert inner.closed


class TestSsrfRefusal:
    """Recognising a refusal however it is wrapped."""

    def test_unrelated_errors(self) -> None:
        """Errors without a refusal in their cause chain give None."""
        assert ssrf_refusal(ValueError("x")) is None
        assert ssrf_refusal(aiohttp.ClientConnectionError("x")) is None

    def test_direct_and_chained(self) -> None:
        """The refusal itself, or one set as a cause, is found."""
        refusal = ForbiddenDestination("no", reason="loopback")
        assert ssrf_refusal(refusal) is refusal
        try:
            try:
                raise DestinationRefused(refusal) from refusal
            except OSError as exc:
                raise RuntimeError("wrapped") from exc
        except RuntimeError as outer:
            assert ssrf_refusal(outer) is refusal


@dataclass
class Target:
    """A loopback HTTP server that counts the requests it receives."""

    port: int
    hits: list[str] = field(default_factory=list)


@pytest_asyncio.fixture
async def target() -> AsyncIterator[Target]:
    """A real aiohttp server on 127.0.0.1 with a random port."""
    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.path_qs)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port: int = runner.addresses[0][1]
        yield Target(port=port, hits=hits)
    finally:
        await runner.cleanup()


async def send(url: str, allowed: Sequence[IPNetwork], *, proxy: str | None = None) -> int:
    """GET ``url`` through a guarded session (no redirects) and return the status."""
    async with (
        aiohttp.ClientSession(connector=guarded_connector(allowed=allowed, limit_per_host=2)) as session,
        session.get(url, allow_redirects=False, proxy=proxy) as response,
    ):
        await response.read()
        return response.status


class TestGuardedConnector:
    """End to end through aiohttp: refused destinations never receive a request."""

    async def test_hostname_to_loopback_refused(self, target: Target) -> None:
        """http://localhost:{port}/ is refused with a recognisable SSRF error and the server sees nothing."""
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await send(f"http://localhost:{target.port}/", ())
        refusal = ssrf_refusal(info.value)
        assert refusal is not None and refusal.reason == "loopback" and refusal.host == "localhost"
        assert isinstance(info.value.os_error, DestinationRefused)
        assert "SSRF guard" in str(info.value)
        assert target.hits == []

    async def test_hostname_allowed(self, target: Target) -> None:
        """With loopback allow-listed the same request goes through."""
        assert await send(f"http://localhost:{target.port}/hook", LOOPBACK) == 200
        assert target.hits == ["/hook"]

    @pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]"])
    async def test_ip_literal_refused(self, target: Target, host: str) -> None:
        """IP literals, which aiohttp never hands to a resolver, are refused inside the connector too."""
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await send(f"http://{host}:{target.port}/", ())
        refusal = ssrf_refusal(info.value)
        assert refusal is not None and "loopback" in refusal.reason
        assert target.hits == []

    async def test_ip_literal_allowed(self, target: Target) -> None:
        """An allow-listed IP literal goes through."""
        assert await send(f"http://127.0.0.1:{target.port}/literal", LOOPBACK) == 200
        assert target.hits == ["/literal"]

    async def test_proxy_refused(self, target: Target) -> None:
        """A proxied request is refused even when the proxy's own address is allow-listed."""
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await send("http://hooks.example.com/", LOOPBACK, proxy=f"http://127.0.0.1:{target.port}")
        refusal = ssrf_refusal(info.value)
        assert refusal is not None and refusal.reason == "proxy"
        assert target.hits == []

    async def test_dns_failure_is_not_a_refusal(self) -> None:
        """A resolution failure surfaces as an ordinary connector error, not as an SSRF refusal."""
        resolver = FakeResolver(error=socket.gaierror(-2, "Name or service not known"))
        async with aiohttp.ClientSession(connector=guarded_connector(allowed=(), limit_per_host=1, resolver=resolver)) as session:
            with pytest.raises(aiohttp.ClientConnectorError) as info:
                await session.get("http://nowhere.example/")
        assert ssrf_refusal(info.value) is None
        assert resolver.asked == ["nowhere.example"]
