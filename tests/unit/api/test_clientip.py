"""The client address behind trusted proxies, and the allow-list rule (api/clientip.py)."""

from __future__ import annotations

import ipaddress

import pytest
from aiohttp.test_utils import make_mocked_request

from qlara_events.api.clientip import allowed, client_address, parse_address
from qlara_events.dispatcher.ssrf import parse_networks

PROXIES = parse_networks("10.0.0.0/8, fd00::/8")


def request(peer: str, *forwarded: str):
    headers = [("X-Forwarded-For", f) for f in forwarded]
    req = make_mocked_request("GET", "/partner-gateway/v1/authentication", headers=headers)
    return req.clone(remote=peer)


def ip(text: str):
    return ipaddress.ip_address(text)


class TestClientAddress:
    def test_the_peer_without_trusted_proxies(self) -> None:
        """With no trusted proxy configured a forwarded header is ignored: a client cannot choose its address."""
        assert client_address(request("198.51.100.7", "203.0.113.9"), ()) == ip("198.51.100.7")

    def test_an_untrusted_peer_cannot_forward(self) -> None:
        assert client_address(request("198.51.100.7", "203.0.113.9"), PROXIES) == ip("198.51.100.7")

    def test_behind_one_trusted_proxy(self) -> None:
        assert client_address(request("10.1.1.1", "203.0.113.9"), PROXIES) == ip("203.0.113.9")

    def test_a_spoofed_entry_left_of_the_real_client_is_never_reached(self) -> None:
        """The client sent "X-Forwarded-For: 192.0.2.1"; the proxy appended the address it saw."""
        got = client_address(request("10.1.1.1", "192.0.2.1, 203.0.113.9"), PROXIES)
        assert got == ip("203.0.113.9")

    def test_a_chain_of_trusted_proxies_and_several_header_lines(self) -> None:
        got = client_address(request("10.1.1.1", "192.0.2.1, 203.0.113.9", "10.2.2.2"), PROXIES)
        assert got == ip("203.0.113.9")

    def test_only_proxies_in_the_chain_gives_the_leftmost(self) -> None:
        assert client_address(request("10.1.1.1", "10.3.3.3, 10.2.2.2"), PROXIES) == ip("10.3.3.3")

    def test_a_trusted_proxy_without_the_header_is_the_client(self) -> None:
        assert client_address(request("10.1.1.1"), PROXIES) == ip("10.1.1.1")

    @pytest.mark.parametrize("hop", ["unknown", "", "300.1.1.1", "_hidden"])
    def test_garbage_from_a_trusted_proxy_is_unknown(self, hop: str) -> None:
        assert client_address(request("10.1.1.1", f"203.0.113.9, {hop}"), PROXIES) is None

    @pytest.mark.parametrize(("raw", "want"), [
        ("::ffff:192.0.2.1", "192.0.2.1"), ("192.0.2.1:4711", "192.0.2.1"), ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"), ("fe80::1%eth0", "fe80::1"), (" 192.0.2.1 ", "192.0.2.1"),
    ])
    def test_address_spellings(self, raw: str, want: str) -> None:
        assert parse_address(raw) == ip(want)

    def test_ipv4_mapped_peer_matches_ipv4_proxies(self) -> None:
        assert client_address(request("::ffff:10.1.1.1", "203.0.113.9"), PROXIES) == ip("203.0.113.9")


class TestAllowed:
    def test_no_list_admits_everyone_even_unknown(self) -> None:
        assert allowed(None, ()) and allowed(ip("192.0.2.1"), ())

    def test_inside_and_outside(self) -> None:
        nets = parse_networks("203.0.113.0/24, 2001:db8::/32")
        assert allowed(ip("203.0.113.200"), nets) and allowed(ip("2001:db8::5"), nets)
        assert not allowed(ip("203.0.114.1"), nets) and not allowed(ip("2001:db9::5"), nets)

    def test_unknown_is_refused_when_there_is_a_list(self) -> None:
        assert not allowed(None, parse_networks("0.0.0.0/0"))
