"""How a host finds the station's REST API (SRV `_dvsan-api._tcp.<domain>`) and a unit's portal by name."""

import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from dvsan import dnsresolve
from dvsan.errors import DiscoveryError, DvsanError

log = logging.getLogger(__name__)

SERVICE, PROTO = "dvsan-api", "tcp"


def _url(address: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{address}]:{port}" if ":" in address else f"{scheme}://{address}:{port}"


def _healthy(url: str, timeout: float = 3.0, verify: ssl.SSLContext | bool = True) -> None:
    """Raise unless the station at `url` answers its health check."""
    r = httpx.get(url + "/healthz", timeout=timeout, verify=verify)
    r.raise_for_status()


class ApiFinder:
    """The station's REST URL: SRV targets in RFC 2782 order (first that answers), then `--station`."""

    def __init__(self, domain: str | None = None, fallback_url: str | None = None,
                 dns_server: str | None = None, timeout: float = dnsresolve.DEFAULT_TIMEOUT,
                 probe: Callable[[str], Any] | None = None, ca_file: str | None = None):
        self.domain = dnsresolve.check_dns_name(domain.strip().rstrip(".")) if domain else None
        self.fallback_url = fallback_url.rstrip("/") if fallback_url else None
        server = dnsresolve.parse_dns_server(dns_server) if dns_server else None
        self.nameservers: Sequence[str] | None = [server[0]] if server else None
        self.dns_port = server[1] if server else 53
        self.timeout = timeout
        # with a CA file, stations found by SRV are spoken to over TLS, verified against it
        self.ca_file = ca_file
        self.scheme = "https" if ca_file else "http"
        verify = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.probe = probe or (lambda url: _healthy(url, verify=verify))

    def resolve_host(self, name: str) -> list[str]:
        """A name's addresses through this finder's DNS server (or the system's)."""
        return dnsresolve.resolve_host(name, self.nameservers, self.dns_port, self.timeout)

    def candidates(self) -> tuple[list[str], list[DiscoveryError]]:
        """The URLs to try, in order, and what went wrong on the way to them."""
        urls: list[str] = []
        problems: list[DiscoveryError] = []
        if self.domain:
            targets, problems = dnsresolve.srv_endpoints(SERVICE, PROTO, self.domain, "station API",
                                                         self.nameservers, self.dns_port, self.timeout)
            urls += [_url(a, port, self.scheme) for a, port in targets]
        if self.fallback_url:
            urls.append(self.fallback_url)
        return list(dict.fromkeys(urls)), problems

    def find(self) -> str:
        """The URL to use. With several, the first whose /healthz answers; DiscoveryError if none."""
        urls, problems = self.candidates()
        if not urls:
            raise DiscoveryError(problems[0].reason, "; ".join(str(p) for p in problems))
        for p in problems:
            log.warning("%s; trying the other stations", p)
        if len(urls) == 1:
            return urls[0]   # nothing to choose: the real request reports its own error
        failed = []
        for url in urls:
            try:
                self.probe(url)
                return url
            except httpx.HTTPError as e:
                log.warning("station API %s does not answer (%s); trying the next", url, e)
                failed.append(f"{url} ({e})")
        raise DiscoveryError("unreachable", "no station API answered: " + ", ".join(failed))

    def portal_address(self, assignment: dict[str, Any]) -> str:
        """Where to log in: the unit's DNS name resolved here, else the address the station gave.

        The host resolves the name itself (the unit may sit in another DNS domain, reachable from
        the host by a different address than the station sees); a name that does not resolve is
        a warning, and the station's `unit_address` is used.
        """
        name = assignment.get("unit_dns_name")
        if not name:
            return str(assignment["unit_address"])
        try:
            return self.resolve_host(name)[0]
        except DvsanError as e:
            log.warning("unit %s's DNS name does not resolve here (%s); using the address the "
                        "station gave, %s", assignment.get("unit"), e, assignment["unit_address"])
            return str(assignment["unit_address"])
