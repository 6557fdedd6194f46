"""The DNS adapter (the one user of dnspython): SRV look-ups in RFC 2782 order and host addresses."""

import random
from collections.abc import Sequence
from pathlib import Path

import dns.exception
import dns.name
import dns.rcode
import dns.resolver

from dvsan.addresses import is_ip, parse_hostport
from dvsan.errors import DiscoveryError, InvalidInput
from dvsan.srv import Rng, SrvRecord, order

DEFAULT_TIMEOUT = 2.0
HOSTS_FILE = Path("/etc/hosts")
_RNG = random.Random()


def parse_dns_server(text: str) -> tuple[str, int]:
    """'127.0.0.1', '127.0.0.1:5353' or '[::1]:5353' -> (ip, port); a resolver must be an address."""
    host, port = parse_hostport(text, 53)
    if not is_ip(host):
        raise InvalidInput(f"bad DNS server {text!r}: give an IP address (IP[:PORT]), not a name")
    return host, port


def _resolver(nameservers: Sequence[str] | None, port: int, timeout: float) -> dns.resolver.Resolver:
    if nameservers:
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = list(nameservers)
        res.port = port
    else:
        try:
            res = dns.resolver.Resolver()   # the system's /etc/resolv.conf
        except dns.resolver.NoResolverConfiguration as e:
            raise DiscoveryError("no-config", "no DNS server configured: /etc/resolv.conf names "
                                 "none; give --dns-server IP[:PORT]") from e
    # NOTE: one budget for the whole look-up, not dnspython's default 5 s per try and 2 s per server:
    # an agent at start must say quickly that DNS does not answer, then retry on its own schedule.
    res.timeout = timeout
    res.lifetime = timeout
    return res


def _servers(res: dns.resolver.Resolver) -> str:
    return ", ".join(f"[{ns}]:{res.port}" if ":" in str(ns) else f"{ns}:{res.port}"
                     for ns in res.nameservers) or "(none)"


def _query(res: dns.resolver.Resolver, qname: str, rdtype: str, search: bool) -> dns.resolver.Answer:
    """One query; every way it can fail except 'no such record' becomes a DiscoveryError."""
    try:
        return res.resolve(qname, rdtype, search=search)
    except dns.resolver.LifetimeTimeout as e:
        raise DiscoveryError("no-answer", f"DNS server {_servers(res)} did not answer in "
                             f"{res.lifetime:g} s (asked for {qname} {rdtype})") from e
    except dns.resolver.NoNameservers as e:
        raise DiscoveryError("dns-failed", f"DNS server {_servers(res)} could not answer for "
                             f"{qname} {rdtype}: {_rcodes(e)}") from e
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        raise
    except dns.name.NameTooLong as e:
        raise InvalidInput(f"bad DNS name {qname!r}: longer than 255 octets") from e
    except dns.exception.DNSException as e:
        raise DiscoveryError("dns-failed", f"looking up {qname} {rdtype} failed: {e}") from e


def _rcodes(e: dns.resolver.NoNameservers) -> str:
    """What each server said: 'REFUSED', 'SERVFAIL', or the error dnspython met talking to it."""
    said = []
    for err in e.kwargs.get("errors") or []:
        response = err[4] if len(err) > 4 else None
        said.append(dns.rcode.to_text(response.rcode()) if response is not None else str(err[3]))
    return ", ".join(dict.fromkeys(said)) or "no usable answer"


def check_dns_name(name: str) -> str:
    """`name` if it is a well-formed DNS name; InvalidInput otherwise (empty label, too long...)."""
    try:
        dns.name.from_text(name)
    except dns.exception.DNSException as e:
        raise InvalidInput(f"bad DNS name {name!r}: {e}") from e
    return name


def resolve_srv(service: str, proto: str, domain: str, nameservers: Sequence[str] | None = None,
                port: int = 53, timeout: float = DEFAULT_TIMEOUT,
                rng: Rng | None = None) -> list[tuple[str, int]]:
    """`_<service>._<proto>.<domain>` SRV -> [(target host, port)] in RFC 2782 order.

    `nameservers` (IP addresses) and `port` name the DNS server to ask; None means the system's
    /etc/resolv.conf. Raises DiscoveryError: 'no-record' when the domain has no such record,
    'no-answer' when the server does not answer within `timeout` seconds, 'dns-failed' when it
    answers with an error, 'not-available' when the record's target is '.'.
    """
    label = f"_{service.lstrip('_')}._{proto.lstrip('_')}"
    domain = domain.strip().rstrip(".")
    if not domain:
        raise InvalidInput("the station's DNS domain is empty")
    qname = check_dns_name(f"{label}.{domain}.")
    res = _resolver(nameservers, port, timeout)
    try:
        answer = _query(res, qname, "SRV", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as e:
        raise DiscoveryError("no-record", f"no {label} SRV record in {domain} "
                             f"(asked DNS server {_servers(res)})") from e
    records = [SrvRecord.of(r.priority, r.weight, r.port, r.target.to_text()) for r in answer]
    return [(r.target, r.port) for r in order(records, rng or _RNG)]


def _hosts_file(name: str, path: Path = HOSTS_FILE) -> list[str]:
    """Addresses of `name` in /etc/hosts (the system looks there before DNS; dnspython does not)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    want = name.rstrip(".").lower()
    found = []
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and want in (f.lower() for f in fields[1:]) and is_ip(fields[0]):
            found.append(fields[0])
    return found


def resolve_host(name: str, nameservers: Sequence[str] | None = None, port: int = 53,
                 timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """A name's addresses (A first, then AAAA); an IP address is returned as it is.

    With the system's resolver (`nameservers` None) /etc/hosts is read first, as the system does.
    Raises DiscoveryError 'no-address' for a name that resolves nowhere, 'no-answer' when the DNS
    server does not answer within `timeout` seconds, 'dns-failed' when it answers with an error.
    """
    name = name.strip()
    if is_ip(name):
        return [name]
    if not name:
        raise InvalidInput("a host name is empty")
    check_dns_name(name)
    if not nameservers:
        local = _hosts_file(name)
        if local:
            return list(dict.fromkeys(sorted(local, key=lambda a: ":" in a)))  # IPv4 first
    res = _resolver(nameservers, port, timeout)
    addresses: list[str] = []
    try:
        addresses += [r.address for r in _query(res, name, "A", search=not nameservers)]
    except dns.resolver.NXDOMAIN as e:
        raise DiscoveryError("no-address", f"{name} resolves nowhere: no such name "
                             f"(asked DNS server {_servers(res)})") from e
    except dns.resolver.NoAnswer:
        pass
    try:
        addresses += [r.address for r in _query(res, name, "AAAA", search=not nameservers)]
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        pass
    except DiscoveryError:
        if not addresses:   # the IPv4 answer is enough when only the IPv6 question failed
            raise
    if not addresses:
        raise DiscoveryError("no-address", f"{name} resolves nowhere: no A or AAAA record "
                             f"(asked DNS server {_servers(res)})")
    return list(dict.fromkeys(addresses))


def srv_endpoints(service: str, proto: str, domain: str, what: str,
                  nameservers: Sequence[str] | None = None, port: int = 53,
                  timeout: float = DEFAULT_TIMEOUT) -> tuple[list[tuple[str, int]], list[DiscoveryError]]:
    """Every (address, port) the `_service._proto.domain` SRV targets resolve to, in RFC 2782 order,
    and what went wrong on the way (a missing record, a target that resolves nowhere).

    `what` names the service in the error messages ("station", "station API").
    """
    endpoints: list[tuple[str, int]] = []
    problems: list[DiscoveryError] = []
    try:
        targets = resolve_srv(service, proto, domain, nameservers, port, timeout)
    except DiscoveryError as e:
        return [], [e]
    for host, target_port in targets:
        try:
            endpoints += [(a, target_port) for a in resolve_host(host, nameservers, port, timeout)]
        except DiscoveryError as e:
            problems.append(DiscoveryError(e.reason, f"{what} {host} (from the "
                                           f"_{service}._{proto}.{domain} SRV record): {e}"))
    return endpoints, problems
