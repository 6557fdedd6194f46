"""DNS discovery against a real DNS server (dnsmasq on loopback) serving two domains.

The station sits in mgmt.dvsan.test, the unit in storage.dvsan.test: the unit agent knows only the
station's domain and the DNS server, finds the station by its SRV record, and publishes its own
name; the host agent finds the REST API by SRV and resolves the unit's name itself.
"""

import asyncio
import concurrent.futures
import functools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dvsan.dnsresolve import resolve_host, resolve_srv
from dvsan.errors import DiscoveryError
from dvsan.identity import Ed25519PrivateKey, Signer, StationPin, generate
from host_agent import cli as host_cli
from host_agent.discovery import ApiFinder
from tests.component.conftest import free_port
from tests.component.test_host_agent import enrol_host
from tests.component.test_station_autoconf import PARTS, MemoryLio, online, wait_for
from unit_agent.agent import UnitAgent
from unit_agent.discovery import StationFinder

MGMT, STORAGE = "mgmt.dvsan.test", "storage.dvsan.test"
HOST_IQN = "iqn.2026-11.org.dvsan.lab:host-b"


def _dnsmasq_binary() -> str:
    found = shutil.which("dnsmasq") or next(
        (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.fail("dnsmasq is not installed: run scripts/install-deps.sh (Debian package dnsmasq-base)")
    return found


class Dnsmasq:
    """A dnsmasq on 127.0.0.1:<port> answering only for the test domains, from the given records."""

    def __init__(self, port: int, records: list[str], log: Path):
        self.port = port
        self.records = records
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [_dnsmasq_binary(), "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                "--no-hosts", f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                "--pid-file=", "--log-facility=-", "--log-queries",
                f"--local=/{MGMT}/", f"--local=/{STORAGE}/", "--local=/broken.dvsan.test/",
                # answers as soon as it runs: the readiness probe below looks this name up
                "--host-record=ready.mgmt.dvsan.test,127.0.0.1", *self.records]
        if os.geteuid() == 0:
            argv.append("--user=root")   # the default user ('dnsmasq') exists only with the daemon package
        with open(self.log, "ab") as out:   # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {self.log.read_text()}")
            try:
                resolve_host("ready.mgmt.dvsan.test", ["127.0.0.1"], self.port, timeout=0.3)
                return
            except DiscoveryError:
                time.sleep(0.05)
        raise RuntimeError(f"dnsmasq did not answer in 10 s: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Callable[..., Dnsmasq]]:
    """Starts dnsmasq with the given --srv-host/--host-record options (on a free or given port)."""
    started: list[Dnsmasq] = []

    def start(*records: str, port: int | None = None) -> Dnsmasq:
        # NOTE: dnsmasq binds TCP as well as UDP on its port; a port free for UDP may be a TCP port
        # in use (a station's API port): then try another one.
        for attempt in range(5):
            d = Dnsmasq(port or free_port(socket.SOCK_DGRAM), list(records),
                        tmp_path / f"dnsmasq{len(started)}-{attempt}.log")
            started.append(d)
            try:
                d.start()
                return d
            except RuntimeError as e:
                if port is not None or "Address already in use" not in str(e):
                    raise
        raise RuntimeError("dnsmasq found no free port in 5 tries")

    yield start
    for d in started:
        d.stop()


def station_records(station: Any, priority: int = 10, weight: int = 5) -> list[str]:
    """The records a site publishes for one station: both SRV records and the station's address."""
    return [f"--srv-host=_dvsan._udp.{MGMT},station.{MGMT},{station.udp_port},{priority},{weight}",
            f"--srv-host=_dvsan-api._tcp.{MGMT},station.{MGMT},{station.api_port},{priority},{weight}",
            f"--host-record=station.{MGMT},127.0.0.1"]


class SilentUdp:
    """A bound UDP socket that never answers; counts what it receives (a dead station or DNS server)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.received = 0
        self._stop = False
        self.thread = threading.Thread(target=self._count, daemon=True)
        self.thread.start()

    def _count(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                self.sock.recv(65535)
                self.received += 1
            except TimeoutError:
                pass
            except OSError:
                return

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


@functools.cache
def _unit_key(name: str) -> Ed25519PrivateKey:
    return generate()


class DnsUnit:
    """The real UnitAgent on its own loop, finding its station only through a StationFinder."""

    def __init__(self, key: bytes, finder: StationFinder, name: str = "unit-z", dns_name: str | None = None):
        self.lio = MemoryLio()
        self.loop = asyncio.new_event_loop()
        # the station address is a placeholder: with find_stations set, announce() asks the finder
        # its own key (one per name for the whole module, as a unit keeps its key across
        # restarts); the station's key is pinned on first contact: these tests are about DNS
        self.agent = UnitAgent(name, key, ("127.0.0.1", 9), "127.0.0.1", 3260, self.lio,
                               lambda: list(PARTS), dns_name, signer=Signer(name, _unit_key(name)),
                               station_pin=StationPin(None, first_contact=True))
        self.agent.find_stations = finder.find
        self.agent.failover_timeout = 1.0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.agent.open("127.0.0.1", 0))
        self.announcing: concurrent.futures.Future[None] | None = None

    def call(self, coro: Any, timeout: float = 40) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> "concurrent.futures.Future[None]":
        self.announcing = asyncio.run_coroutine_threadsafe(self.agent.announce(), self.loop)
        return self.announcing

    def close(self) -> None:
        if self.announcing is not None:
            self.announcing.cancel()
        if self.agent.endpoint is not None:
            self.loop.call_soon_threadsafe(self.agent.endpoint.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class FakeIscsi:
    """Records what the host agent asks of open-iscsi (component tests have no initiator)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def discover(self, portal: str, port: int) -> list[Any]:
        self.calls.append(("discover", portal, str(port)))
        return []

    def set_chap(self, iqn: str, portal: str, port: int, username: str, password: str,
                 mutual: tuple[str, str] | None = None) -> None:
        self.calls.append(("chap", iqn, portal, str(port), username))

    def login(self, iqn: str, portal: str, port: int) -> None:
        self.calls.append(("login", iqn, portal, str(port)))

    def wait_for_device(self, iqn: str, portal: str, lun: int, timeout: float) -> str:
        return "/dev/sdz"

    def logout(self, iqn: str, portal: str, port: int) -> None:
        self.calls.append(("logout", iqn, portal, str(port)))

    def delete_node(self, iqn: str, portal: str, port: int) -> None:
        self.calls.append(("delete_node", iqn, portal, str(port)))

    def sessions(self) -> list[Any]:
        return []

    def node_records(self) -> list[Any]:
        return []

    def session_devices(self, iqn: str) -> list[str]:
        return []


# --- good paths ------------------------------------------------------------------------------

def test_gp_unit_finds_station_by_srv_only_and_its_volumes_show(station, dnsmasq):
    dns = dnsmasq(*station_records(station), f"--host-record=unit-z.{STORAGE},127.0.0.3")
    u = DnsUnit(station.key, StationFinder(MGMT, None, dns.server), dns_name=f"unit-z.{STORAGE}")
    try:
        u.start().result(20)
        assert u.agent.station == ("127.0.0.1", station.udp_port)
        vols = online(station, 3)
        assert {v["device"] for v in vols} == {p.device for p in PARTS}
        unit = station.get("/api/v1/units/unit-z").json()
        assert unit["dns_name"] == f"unit-z.{STORAGE}"
    finally:
        u.close()


def test_gp_dead_preferred_station_is_skipped_for_the_next_priority(station, dnsmasq, caplog):
    dead = SilentUdp()
    dns = dnsmasq(f"--srv-host=_dvsan._udp.{MGMT},dead.{MGMT},{dead.port},5,100",
                  f"--host-record=dead.{MGMT},127.0.0.1", *station_records(station, priority=10))
    finder = StationFinder(MGMT, None, dns.server)
    assert finder.candidates() == [("127.0.0.1", dead.port), ("127.0.0.1", station.udp_port)]
    u = DnsUnit(station.key, finder)
    try:
        caplog.set_level(logging.WARNING)
        t0 = time.monotonic()
        u.start().result(20)
        assert u.agent.station == ("127.0.0.1", station.udp_port)
        assert time.monotonic() - t0 >= 0.9            # it waited for the dead one first...
        assert dead.received >= 1                      # ...which was really asked
        assert f"station 127.0.0.1:{dead.port} does not answer" in caplog.text
        assert "trying the next" in caplog.text
        online(station, 3)
    finally:
        u.close()
        dead.close()


def test_gp_preferred_live_station_is_chosen_over_a_lower_priority_one(station, dnsmasq):
    other = SilentUdp()
    dns = dnsmasq(*station_records(station, priority=10),
                  f"--srv-host=_dvsan._udp.{MGMT},backup.{MGMT},{other.port},20,1000",
                  f"--host-record=backup.{MGMT},127.0.0.1")
    try:
        for _ in range(20):   # whatever the weights, priority 10 always comes first
            assert resolve_srv("dvsan", "udp", MGMT, ["127.0.0.1"], dns.port)[0] == \
                (f"station.{MGMT}", station.udp_port)
        u = DnsUnit(station.key, StationFinder(MGMT, None, dns.server))
        try:
            u.start().result(20)
            assert u.agent.station == ("127.0.0.1", station.udp_port)
            online(station, 3)
            assert other.received == 0
        finally:
            u.close()
    finally:
        other.close()


def test_gp_equal_priority_stations_share_the_load_by_weight(dnsmasq):
    dns = dnsmasq(f"--srv-host=_dvsan._udp.{MGMT},st1.{MGMT},7001,10,5",
                  f"--srv-host=_dvsan._udp.{MGMT},st2.{MGMT},7002,10,5",
                  f"--srv-host=_dvsan._udp.{MGMT},st3.{MGMT},7003,10,0",
                  f"--host-record=st1.{MGMT},127.0.0.1", f"--host-record=st2.{MGMT},127.0.0.2",
                  f"--host-record=st3.{MGMT},127.0.0.3")
    finder = StationFinder(MGMT, None, dns.server)
    first = Counter(finder.candidates()[0] for _ in range(200))
    assert set(first) <= {("127.0.0.1", 7001), ("127.0.0.2", 7002), ("127.0.0.3", 7003)}
    # weights 5/5/0: draws 0..10, so ~45% each for the first two, ~9% for the weight-0 one
    assert first[("127.0.0.1", 7001)] > 50 and first[("127.0.0.2", 7002)] > 50
    assert first[("127.0.0.3", 7003)] < 50
    # every station is on every list: the others are the failover order
    assert all(len(finder.candidates()) == 3 for _ in range(5))


def test_gp_host_finds_api_by_srv_and_falls_over_to_the_next(station, dnsmasq):
    dead_port = free_port()
    dns = dnsmasq(f"--srv-host=_dvsan-api._tcp.{MGMT},dead.{MGMT},{dead_port},5,10",
                  f"--host-record=dead.{MGMT},127.0.0.1", *station_records(station))
    assert ApiFinder(MGMT, None, dns.server).find() == station.url
    # the API's SRV record is separate from the protocol's: a domain with only _dvsan._udp fails
    with pytest.raises(DiscoveryError) as e:
        ApiFinder(STORAGE, None, dns.server).find()
    assert e.value.reason == "no-record" and f"no _dvsan-api._tcp SRV record in {STORAGE}" in str(e.value)


def test_gp_host_is_handed_the_unit_dns_name_and_resolves_it_itself(station, dnsmasq, tmp_path, capsys):
    dns = dnsmasq(*station_records(station), f"--host-record=unit-z.{STORAGE},127.0.0.3")
    u = DnsUnit(station.key, StationFinder(MGMT, None, dns.server), dns_name=f"unit-z.{STORAGE}")
    try:
        u.start().result(20)
        online(station, 3)
        iscsi = FakeIscsi()
        state = tmp_path / "host" / "assignments.json"
        common = ["--station-domain", MGMT, "--dns-server", dns.server, "--name", "host-b",
                  "--state-file", str(state), "--json",
                  "--token-file", str(enrol_host(station, tmp_path, "host-b", HOST_IQN))]
        rc = host_cli.main([*common, "request", "1GiB", "--initiator-name", HOST_IQN,
                            "--host-address", "127.0.0.2"], iscsi=iscsi)
        out = json.loads(capsys.readouterr().out)
        assert rc == 0
        # the station knows the unit at 127.0.0.1; the host logs in where the unit's name points
        assert (out["unit_address"], out["unit_dns_name"], out["portal_address"]) == \
            ("127.0.0.1", f"unit-z.{STORAGE}", "127.0.0.3")
        assert ("login", out["target_iqn"], "127.0.0.3", "3260") in iscsi.calls
        assert json.loads(state.read_text())[str(out["id"])]["portal_address"] == "127.0.0.3"
        # release logs out of that same portal, finding the station by DNS again
        rc = host_cli.main([*common, "release", str(out["id"])], iscsi=iscsi)
        assert rc == 0
        assert ("logout", out["target_iqn"], "127.0.0.3", "3260") in iscsi.calls
        assert station.get("/api/v1/assignments").json() == []
    finally:
        u.close()


def test_gp_station_fallback_is_itself_a_dns_name(station, dnsmasq):
    dns = dnsmasq(f"--host-record=station.{MGMT},127.0.0.1")
    finder = StationFinder(None, f"station.{MGMT}:{station.udp_port}", dns.server)
    u = DnsUnit(station.key, finder)
    try:
        u.start().result(20)
        online(station, 3)
    finally:
        u.close()


# --- error paths -----------------------------------------------------------------------------

def test_ep_missing_srv_record_is_named(dnsmasq):
    dns = dnsmasq(f"--host-record=station.{MGMT},127.0.0.1")
    with pytest.raises(DiscoveryError) as e:
        resolve_srv("dvsan", "udp", STORAGE, ["127.0.0.1"], dns.port)
    assert e.value.reason == "no-record"
    assert str(e.value) == f"no _dvsan._udp SRV record in {STORAGE} (asked DNS server {dns.server})"
    # a name that exists without an SRV record (NoAnswer, not NXDOMAIN) reads the same
    with pytest.raises(DiscoveryError) as e:
        resolve_srv("dvsan", "udp", f"station.{MGMT}", ["127.0.0.1"], dns.port)
    assert e.value.reason == "no-record" and f"no _dvsan._udp SRV record in station.{MGMT}" in str(e.value)


def test_ep_srv_target_dot_means_not_available(dnsmasq):
    dns = dnsmasq("--srv-host=_dvsan._udp.broken.dvsan.test")   # dnsmasq publishes target '.'
    with pytest.raises(DiscoveryError) as e:
        resolve_srv("dvsan", "udp", "broken.dvsan.test", ["127.0.0.1"], dns.port)
    assert e.value.reason == "not-available" and "not available" in str(e.value)


@pytest.mark.parametrize("kind", ["silent", "closed"])
def test_ep_dns_server_that_does_not_answer(kind):
    silent = SilentUdp() if kind == "silent" else None
    port = silent.port if silent else free_port(socket.SOCK_DGRAM)
    try:
        t0 = time.monotonic()
        with pytest.raises(DiscoveryError) as e:
            resolve_srv("dvsan", "udp", MGMT, ["127.0.0.1"], port, timeout=1.0)
        assert time.monotonic() - t0 < 3
        assert e.value.reason == "no-answer"
        assert str(e.value).startswith(f"DNS server 127.0.0.1:{port} did not answer in 1 s")
        with pytest.raises(DiscoveryError) as e:
            resolve_host(f"station.{MGMT}", ["127.0.0.1"], port, timeout=1.0)
        assert e.value.reason == "no-answer"
    finally:
        if silent:
            silent.close()


def test_ep_names_that_resolve_nowhere(dnsmasq):
    dns = dnsmasq("--srv-host=_dvsan._udp.broken.dvsan.test,ghost.broken.dvsan.test,7479,10,5",
                  f"--host-record=station.{MGMT},127.0.0.1")
    with pytest.raises(DiscoveryError) as e:
        resolve_host(f"ghost.{MGMT}", ["127.0.0.1"], dns.port)
    assert e.value.reason == "no-address"
    assert str(e.value).startswith(f"ghost.{MGMT} resolves nowhere")
    # an SRV target without an address: the error says which record pointed there
    with pytest.raises(DiscoveryError) as e:
        StationFinder("broken.dvsan.test", None, dns.server).candidates()
    assert e.value.reason == "no-address"
    assert "station ghost.broken.dvsan.test (from the _dvsan._udp.broken.dvsan.test SRV record)" in str(e.value)
    assert "resolves nowhere" in str(e.value)
    # a fallback name that resolves nowhere
    with pytest.raises(DiscoveryError) as e:
        StationFinder(None, f"ghost.{MGMT}", dns.server).candidates()
    assert f"--station ghost.{MGMT}: ghost.{MGMT} resolves nowhere" in str(e.value)


def test_ep_dns_server_that_refuses_a_foreign_domain(dnsmasq):
    dns = dnsmasq()
    with pytest.raises(DiscoveryError) as e:
        resolve_srv("dvsan", "udp", "example.org", ["127.0.0.1"], dns.port)
    assert e.value.reason == "dns-failed" and "REFUSED" in str(e.value)


def test_ep_missing_srv_falls_back_to_station_with_a_warning(station, dnsmasq, caplog):
    dns = dnsmasq(f"--host-record=station.{MGMT},127.0.0.1")
    finder = StationFinder(STORAGE, f"127.0.0.1:{station.udp_port}", dns.server)
    with caplog.at_level(logging.WARNING):
        assert finder.candidates() == [("127.0.0.1", station.udp_port)]
    assert f"no _dvsan._udp SRV record in {STORAGE}" in caplog.text
    with caplog.at_level(logging.WARNING):
        assert ApiFinder(STORAGE, station.url, dns.server).find() == station.url
    assert f"no _dvsan-api._tcp SRV record in {STORAGE}" in caplog.text


def test_ep_unit_name_that_does_not_resolve_falls_back_to_unit_address(station, dnsmasq, tmp_path,
                                                                      capsys, caplog):
    dns = dnsmasq(*station_records(station))
    u = DnsUnit(station.key, StationFinder(MGMT, None, dns.server), dns_name=f"ghost.{STORAGE}")
    try:
        u.start().result(20)
        online(station, 3)
        iscsi = FakeIscsi()
        with caplog.at_level(logging.WARNING):
            rc = host_cli.main(["--station-domain", MGMT, "--dns-server", dns.server, "--name", "host-b",
                                "--token-file", str(enrol_host(station, tmp_path, "host-b", HOST_IQN)),
                                "--state-file", str(tmp_path / "s.json"), "--json", "request", "1GiB",
                                "--initiator-name", HOST_IQN, "--host-address", "127.0.0.2"], iscsi=iscsi)
        out = json.loads(capsys.readouterr().out)
        assert rc == 0 and out["portal_address"] == "127.0.0.1"
        assert ("login", out["target_iqn"], "127.0.0.1", "3260") in iscsi.calls
        assert f"ghost.{STORAGE} resolves nowhere" in caplog.text and "using the address the station gave" in caplog.text
    finally:
        u.close()


def test_ep_host_cli_says_clearly_when_dns_fails(dnsmasq, tmp_path, capsys):
    dns = dnsmasq()
    rc = host_cli.main(["--station-domain", STORAGE, "--dns-server", dns.server, "--state-file",
                        str(tmp_path / "s.json"), "request", "1GiB", "--initiator-name", HOST_IQN],
                       iscsi=FakeIscsi())
    assert rc == 1
    err = capsys.readouterr().err
    assert f"dvsan-host-agent: no _dvsan-api._tcp SRV record in {STORAGE}" in err
    assert not (tmp_path / "s.json").exists()


def test_ep_unit_agent_retries_dns_until_it_answers_then_finds_the_station(station, dnsmasq, caplog):
    port = free_port(socket.SOCK_DGRAM)       # nothing listens here yet
    finder = StationFinder(MGMT, None, f"127.0.0.1:{port}", timeout=0.5, backoff=(0.2, 0.5))
    u = DnsUnit(station.key, finder)
    try:
        caplog.set_level(logging.ERROR, logger="unit_agent.discovery")
        fut = u.start()
        wait_for(lambda: caplog.text.count("cannot find the station") >= 2, timeout=10)
        assert not fut.done()                  # still trying, not crashed
        assert f"cannot find the station: DNS server 127.0.0.1:{port} did not answer in 0.5 s" in caplog.text
        assert station.get("/api/v1/units").json() == []
        dnsmasq(*station_records(station), port=port)   # the site's DNS comes up
        fut.result(20)
        assert u.agent.station == ("127.0.0.1", station.udp_port)
        online(station, 3)
    finally:
        u.close()


@pytest.mark.parametrize("case", ["no-record", "no-answer", "no-address"])
def test_ep_unit_agent_process_does_not_exit_on_dns_failure(dnsmasq, tmp_path, case):
    dns = dnsmasq(f"--host-record=station.{MGMT},127.0.0.1")
    key = tmp_path / "cluster.key"
    key.write_text(os.urandom(16).hex())
    key.chmod(0o600)      # a weak key, or a key file others may read, is refused
    where = {"no-record": ["--station-domain", STORAGE, "--dns-server", dns.server],
             "no-answer": ["--station-domain", MGMT, "--dns-server", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"],
             "no-address": ["--station", f"ghost.{MGMT}", "--dns-server", dns.server]}[case]
    expect = {"no-record": f"no _dvsan._udp SRV record in {STORAGE}",
              "no-answer": "did not answer in 2 s",
              "no-address": f"--station ghost.{MGMT}: ghost.{MGMT} resolves nowhere"}[case]
    log = tmp_path / "unit.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "unit_agent.cli", *where, "--name", "unit-q", "--cluster-key-file",
             str(key), "--listen-host", "127.0.0.1", "--listen-port", "0", "--no-link-watch",
             "--state-dir", str(tmp_path / "unit"), "--station-trust", "first-contact"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(lambda: log.read_text().count("cannot find the station") >= 2 or proc.poll() is not None,
                 timeout=20)
        assert proc.poll() is None, log.read_text()
        text = log.read_text()
        assert expect in text and "retrying in" in text, text
        assert "Traceback" not in text
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(10)
    assert rc == 0, log.read_text()
