"""Addresses: parsing HOST[:PORT] and finding the local address that faces a peer."""

import socket
from ipaddress import ip_address

from dvsan.errors import InvalidInput


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """'10.0.0.1', '10.0.0.1:7479', 'station.example.org:7479' or '[::1]:7479' -> (host, port)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("an address is empty")
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise InvalidInput(f"bad address {text!r}: unclosed '['")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise InvalidInput(f"bad address {text!r}")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = _port(p, text)
    if not host:
        raise InvalidInput(f"bad address {text!r}: no host")
    return host, port


def _port(p: str, text: str) -> int:
    if not p.isdigit() or not 1 <= int(p) <= 65535:
        raise InvalidInput(f"bad port in {text!r}: expected 1-65535")
    return int(p)


def local_address_towards(host: str, port: int = 9) -> str:
    """The local IP the kernel would use to reach `host` (a UDP connect sends nothing)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, port))
        except OSError as e:
            raise InvalidInput(f"no route to {host}: {e}") from e
        return str(s.getsockname()[0])


def is_ip(text: str) -> bool:
    try:
        ip_address(text)
        return True
    except ValueError:
        return False
