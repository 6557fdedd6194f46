"""The DNS adapter's parts that need no DNS server: option parsing, IP literals, /etc/hosts."""

from pathlib import Path

import pytest

from dvsan.dnsresolve import (
    _hosts_file,
    check_dns_name,
    parse_dns_server,
    resolve_host,
    resolve_srv,
)
from dvsan.errors import InvalidInput


@pytest.mark.parametrize("text,want", [("127.0.0.1", ("127.0.0.1", 53)), ("127.0.0.1:5353", ("127.0.0.1", 5353)),
                                       ("[::1]:5353", ("::1", 5353)), ("::1", ("::1", 53))])
def test_gp_parse_dns_server(text, want):
    assert parse_dns_server(text) == want


@pytest.mark.parametrize("text,why", [("ns1.example.org", "not a name"), ("127.0.0.1:0", "1-65535"),
                                      ("127.0.0.1:dns", "1-65535"), ("", "empty")])
def test_ep_parse_dns_server(text, why):
    with pytest.raises(InvalidInput) as e:
        parse_dns_server(text)
    assert why in str(e.value)


def test_gp_ip_literal_needs_no_dns():
    # a DNS server that does not exist is never asked
    assert resolve_host("10.1.2.3", ["192.0.2.1"], 1, timeout=0.01) == ["10.1.2.3"]
    assert resolve_host("fe80::1", ["192.0.2.1"], 1, timeout=0.01) == ["fe80::1"]


@pytest.mark.parametrize("name", ["a..b", "x" * 64 + ".example.org"])
def test_ep_bad_names_are_invalid_input(name):
    with pytest.raises(InvalidInput):
        check_dns_name(name)
    with pytest.raises(InvalidInput):
        resolve_host(name, ["192.0.2.1"], 1, timeout=0.01)


def test_ep_empty_domain():
    with pytest.raises(InvalidInput):
        resolve_srv("dvsan", "udp", " . ", ["192.0.2.1"], 1, timeout=0.01)


def test_gp_hosts_file(tmp_path: Path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost  # loopback\n"
                     "# 10.0.0.9 station\n10.0.0.7 Station.example.org station\nnot-an-ip station\n")
    assert _hosts_file("station", hosts) == ["10.0.0.7"]
    assert _hosts_file("STATION.example.org.", hosts) == ["10.0.0.7"]
    assert _hosts_file("localhost", hosts) == ["127.0.0.1", "::1"]
    assert _hosts_file("nowhere", hosts) == []
    assert _hosts_file("station", tmp_path / "missing") == []
