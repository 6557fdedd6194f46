"""How a unit finds its station: the `_dvsan._udp.<domain>` SRV record, then `--station HOST[:PORT]`."""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from dvsan import dnsresolve
from dvsan.addresses import parse_hostport
from dvsan.endpoint import Peer
from dvsan.errors import DiscoveryError, InvalidInput

log = logging.getLogger(__name__)

SERVICE, PROTO = "dvsan", "udp"
DEFAULT_STATION_PORT = 7479


class StationFinder:
    """The stations a unit should try, in order: SRV targets (RFC 2782 order), then the fallback.

    Asks DNS afresh every time, so a changed record is followed; `find()` waits through DNS
    failures, logging each clear error and backing off, and never raises.
    """

    def __init__(self, domain: str | None = None, fallback: str | None = None,
                 dns_server: str | None = None, timeout: float = dnsresolve.DEFAULT_TIMEOUT,
                 backoff: tuple[float, float] = (1.0, 60.0)):
        if not domain and not fallback:
            raise InvalidInput("no station given: use --station-domain DOMAIN (DNS SRV "
                               f"_{SERVICE}._{PROTO}.DOMAIN) or --station HOST[:PORT]")
        self.domain = dnsresolve.check_dns_name(domain.strip().rstrip(".")) if domain else None
        self.fallback = parse_hostport(fallback, DEFAULT_STATION_PORT) if fallback else None
        server = dnsresolve.parse_dns_server(dns_server) if dns_server else None
        self.nameservers: Sequence[str] | None = [server[0]] if server else None
        self.dns_port = server[1] if server else 53
        self.timeout = timeout
        self.backoff = backoff

    def describe(self) -> str:
        """For the log: where this finder looks."""
        where = []
        if self.domain:
            dns = f"{self.nameservers[0]}:{self.dns_port}" if self.nameservers else "the system's resolver"
            where.append(f"SRV _{SERVICE}._{PROTO}.{self.domain} via {dns}")
        if self.fallback:
            where.append(f"{'then ' if where else ''}{self.fallback[0]}:{self.fallback[1]}")
        return ", ".join(where)

    def _addresses(self, host: str) -> list[str]:
        return dnsresolve.resolve_host(host, self.nameservers, self.dns_port, self.timeout)

    def candidates(self) -> list[Peer]:
        """Blocking: the stations to try, in order. DiscoveryError (naming every failure) if none.

        A failure that still leaves some station (e.g. no SRV record, but a fallback) is logged as
        a warning and the others are returned.
        """
        peers: list[Peer] = []
        problems: list[DiscoveryError] = []
        if self.domain:
            peers, problems = dnsresolve.srv_endpoints(SERVICE, PROTO, self.domain, "station",
                                                       self.nameservers, self.dns_port, self.timeout)
        if self.fallback:
            host, port = self.fallback
            try:
                peers += [(a, port) for a in self._addresses(host)]
            except DiscoveryError as e:
                problems.append(DiscoveryError(e.reason, f"--station {host}: {e}"))
        peers = list(dict.fromkeys(peers))
        if not peers:
            raise DiscoveryError(problems[0].reason, "; ".join(str(p) for p in problems))
        for p in problems:
            log.warning("%s; trying the other stations", p)
        return peers

    async def find(self) -> list[Peer]:
        """The stations to try, waiting (backing off) until DNS gives at least one."""
        delay = self.backoff[0]
        while True:
            try:
                return await asyncio.to_thread(self.candidates)
            except DiscoveryError as e:
                self._log_retry(e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff[1])

    def wait(self, sleep: Callable[[float], None] = time.sleep) -> list[Peer]:
        """Blocking `find()`, for start-up before the event loop runs."""
        delay = self.backoff[0]
        while True:
            try:
                return self.candidates()
            except DiscoveryError as e:
                self._log_retry(e, delay)
            sleep(delay)
            delay = min(delay * 2, self.backoff[1])

    def _log_retry(self, e: DiscoveryError, delay: float) -> None:
        log.error("cannot find the station: %s; retrying in %g s", e, delay)
