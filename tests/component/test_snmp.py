"""SNMP both ways with real peers on loopback: net-snmp's snmptrap -> the real station process, and
the unit agent's pysnmp notifications -> net-snmp's snmptrapd (loading DVSAN-MIB) and the station.

The unit side is the real UnitAgent protocol loop (UnitHarness, in-memory LIO): a trap names the
unit's control port, and the station must fetch the unit's storage info from there.
"""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dvsan.traps import MIB_DIR, UnitIdentity, UsmUser, engine_id_for
from tests.component.conftest import StationProc, free_port
from tests.component.test_station_autoconf import PARTS, UnitHarness, online, volumes, wait_for

COMMUNITY = "dvsan-test"
V3 = UsmUser("dvsan-ops", "auth-phrase-1", "priv-phrase-1")
MIBS = ["-m", "DVSAN-MIB:IF-MIB", "-M", f"+{MIB_DIR}"]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: run scripts/install-deps.sh (Debian packages snmp, snmptrapd)")
    return path


@pytest.fixture
def snmp_home(tmp_path: Path) -> dict[str, str]:
    """Environment for net-snmp tools: their persistent state (engine IDs, boots) under tmp_path."""
    d = tmp_path / "net-snmp"
    d.mkdir()
    return {**os.environ, "SNMP_PERSISTENT_DIR": str(d)}


@pytest.fixture
def trap_station(tmp_path: Path) -> Iterator[StationProc]:
    """A station taking SNMPv2c (community COMMUNITY) and SNMPv3 (user V3) notifications."""
    trap_port = free_port(socket.SOCK_DGRAM)
    files = {n: secret_file(tmp_path, n, v) for n, v in
             (("community", COMMUNITY), ("auth", V3.auth_key), ("priv", V3.priv_key))}
    st = StationProc(tmp_path / "station", free_port(), free_port(socket.SOCK_DGRAM), extra_args=(
        "--trap-host", "127.0.0.1", "--trap-port", str(trap_port), "--trap-community-file", files["community"],
        "--trap-v3-user", V3.name, "--trap-v3-auth-key-file", files["auth"],
        "--trap-v3-priv-key-file", files["priv"]))
    st.trap_port = trap_port  # type: ignore[attr-defined]
    st.data_dir.mkdir()
    st.start()
    yield st
    st.stop()


def secret_file(where: Path, name: str, value: str, mode: int = 0o600) -> str:
    """A secret in a file of its own (the only way secrets reach the station and the agent)."""
    path = where / f"{name}.secret"
    path.write_text(value + "\n")
    path.chmod(mode)
    return str(path)


def snmptrap(station: Any, env: dict[str, str], auth: list[str], trap: str, *varbinds: str) -> None:
    """net-snmp's snmptrap (names from DVSAN-MIB) to the station's trap port."""
    cmd = [_need("snmptrap"), *MIBS, *auth, f"127.0.0.1:{station.trap_port}", "", trap, *varbinds]
    subprocess.run(cmd, env=env, check=True, timeout=15, capture_output=True)


def v2c(community: str = COMMUNITY) -> list[str]:
    return ["-v", "2c", "-c", community]


def v3(user: str = V3.name, auth: str = V3.auth_key, priv: str = V3.priv_key, engine: str | None = None) -> list[str]:
    return ["-v", "3", "-l", "authPriv", "-u", user, "-a", "SHA", "-A", auth, "-x", "AES", "-X", priv,
            *(["-e", engine] if engine else [])]


def identity(name: str, control_port: int) -> list[str]:
    return ["DVSAN-MIB::dvsanUnitName.0", "s", name, "DVSAN-MIB::dvsanUnitStorageAddress.0", "s", "127.0.0.1",
            "DVSAN-MIB::dvsanUnitControlPort.0", "u", str(control_port),
            "DVSAN-MIB::dvsanUnitAgentVersion.0", "s", "0.1.0"]


def control_port(u: UnitHarness) -> int:
    assert u.agent.endpoint is not None
    return u.agent.endpoint.address[1]


def stats(station: Any) -> dict[str, int]:
    return station.get("/api/v1/protocol/stats").json()  # type: ignore[no-any-return]


def unit_state(station: Any, name: str) -> str:
    return station.get(f"/api/v1/units/{name}").json()["state"]  # type: ignore[no-any-return]


def _noise_free(stderr: str) -> str:
    """net-snmp's stderr without its first-run notice ("Created directory: /var/lib/snmp/...",
    printed once on a new machine): a MIB that does not load still shows here."""
    return "".join(line for line in stderr.splitlines(keepends=True)
                   if not line.startswith("Created directory: "))


def test_gp_net_snmp_loads_dvsan_mib():
    out = subprocess.run([_need("snmptranslate"), *MIBS, "-Pe", "-Tp", "-IR", "dvsanMIB"],
                         capture_output=True, text=True, timeout=15, check=True)
    assert "dvsanUnitControlPort(4)" in out.stdout and "boot(1), linkUp(2), linkDown(3), shutdown(4)" in out.stdout
    assert _noise_free(out.stderr) == ""
    for name, oid in [("DVSAN-MIB::dvsanUnitName.0", ".1.3.6.1.4.1.32473.7479.1.1.1.0"),
                      ("IF-MIB::linkDown", ".1.3.6.1.6.3.1.1.5.3"), ("SNMPv2-MIB::coldStart", ".1.3.6.1.6.3.1.1.5.1")]:
        r = subprocess.run([_need("snmptranslate"), *MIBS, "-On", name], capture_output=True, text=True,
                           timeout=15, check=True)
        assert (r.stdout.strip(), _noise_free(r.stderr)) == (oid, ""), name


def test_gp_v2c_coldstart_from_snmptrap_makes_station_fetch_storage_info(trap_station, snmp_home):
    u = UnitHarness(trap_station, name="unit-s")
    try:
        u.start()                                        # known to the station by the signed protocol
        online(trap_station, 3)
        wait_for(lambda: u.agent.exports_applied >= 1)
        n0 = u.agent.exports_applied
        snmptrap(trap_station, snmp_home, v2c(), "SNMPv2-MIB::coldStart", *identity("unit-s", control_port(u)))
        # the station fetched the unit's storage info again and pushed its desired exports
        wait_for(lambda: u.agent.exports_applied > n0)
        vols = online(trap_station, 3)
        assert {(v["unit_name"], v["device"], v["start_lba"]) for v in vols} == \
            {("unit-s", p.device, p.start_lba) for p in PARTS}
        unit = trap_station.get("/api/v1/units/unit-s").json()
        assert (unit["state"], unit["portal_address"], unit["agent_version"]) == ("online", "127.0.0.1", "0.1.0")
        s = stats(trap_station)
        assert (s["snmp_listening"], s["snmp_accepted_coldStart"], s["snmp_rejected"]) == (1, 1, 0)
    finally:
        u.close()


def test_ep_spoofed_trap_naming_another_portal_changes_no_address(trap_station, snmp_home):
    """Issue 15 item 3: a trap (v2c: clear text, any source) may say a unit is up or down; it never
    moves the unit's portal, control address or DNS name. Those come from the signed protocol."""
    u = UnitHarness(trap_station, name="unit-p")
    decoy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)    # where the forger wants requests sent
    decoy.bind(("127.0.0.1", 0))
    try:
        u.start()
        online(trap_station, 3)
        before = trap_station.get("/api/v1/units/unit-p").json()
        s0 = stats(trap_station)
        forged = ["DVSAN-MIB::dvsanUnitName.0", "s", "unit-p", "DVSAN-MIB::dvsanUnitStorageAddress.0", "s",
                  "127.0.0.66", "DVSAN-MIB::dvsanUnitControlPort.0", "u", str(decoy.getsockname()[1]),
                  "DVSAN-MIB::dvsanUnitDnsName.0", "s", "evil.example", "DVSAN-MIB::dvsanUnitAgentVersion.0",
                  "s", "6.6.6"]
        snmptrap(trap_station, snmp_home, v2c(), "SNMPv2-MIB::coldStart", *forged)
        snmptrap(trap_station, snmp_home, v2c(), "IF-MIB::linkUp", *forged)
        wait_for(lambda: stats(trap_station)["snmp_accepted"] - s0["snmp_accepted"] == 2)
        # the storage-info round trips the traps caused went to the unit's signed control address
        wait_for(lambda: u.agent.exports_applied >= 3)
        after = trap_station.get("/api/v1/units/unit-p").json()
        keys = ("portal_address", "portal_port", "control_host", "control_port", "dns_name", "agent_version")
        assert {k: after[k] for k in keys} == {k: before[k] for k in keys}
        decoy.settimeout(0.2)
        with pytest.raises(TimeoutError):
            decoy.recvfrom(65535)                       # nothing was sent to the forger's port
        # what a trap may change: the unit's state (a linkDown makes it link-down)
        snmptrap(trap_station, snmp_home, v2c(), "IF-MIB::linkDown", "DVSAN-MIB::dvsanUnitName.0", "s", "unit-p")
        wait_for(lambda: unit_state(trap_station, "unit-p") == "link-down")
        assert trap_station.get("/api/v1/units/unit-p").json()["portal_address"] == before["portal_address"]
    finally:
        decoy.close()
        u.close()


def test_ep_trap_from_a_unit_never_announced_does_not_add_it(trap_station, snmp_home):
    u = UnitHarness(trap_station, name="unit-t")        # not announced: only the trap speaks
    try:
        s0 = stats(trap_station)
        snmptrap(trap_station, snmp_home, v2c(), "SNMPv2-MIB::coldStart", *identity("unit-t", control_port(u)))
        wait_for(lambda: stats(trap_station).get("snmp_ignored_unknown-unit", 0)
                 > s0.get("snmp_ignored_unknown-unit", 0))
        assert trap_station.get("/api/v1/units").json() == [] and u.agent.exports_applied == 0
    finally:
        u.close()


def test_gp_v3_authpriv_coldstart_from_snmptrap_from_any_engine(trap_station, snmp_home):
    u = UnitHarness(trap_station, name="unit-v3")
    u2 = UnitHarness(trap_station, name="unit-v3b", parts=PARTS[:1])
    try:
        u.start()
        u2.start()
        online(trap_station, 4)
        # snmptrap's own engine ID, unknown to the station beforehand...
        snmptrap(trap_station, snmp_home, v3(), "SNMPv2-MIB::coldStart", *identity("unit-v3", control_port(u)))
        # ...and a second sender with another engine ID, as every unit has its own
        snmptrap(trap_station, snmp_home, v3(engine="0x" + engine_id_for("unit-v3b").hex()),
                 "SNMPv2-MIB::coldStart", *identity("unit-v3b", control_port(u2)))
        wait_for(lambda: stats(trap_station)["snmp_accepted_coldStart"] == 2)
        online(trap_station, 4)
        assert {x["name"]: x["state"] for x in trap_station.get("/api/v1/units").json()} == \
            {"unit-v3": "online", "unit-v3b": "online"}
    finally:
        u.close()
        u2.close()


def test_gp_link_down_and_up_from_snmptrap(trap_station, snmp_home):
    u = UnitHarness(trap_station, name="unit-l")
    try:
        u.start()                                       # announced over UDP this time
        online(trap_station, 3)
        snmptrap(trap_station, snmp_home, v2c(), "IF-MIB::linkDown", "IF-MIB::ifIndex.2", "i", "2",
                 "IF-MIB::ifAdminStatus.2", "i", "1", "IF-MIB::ifOperStatus.2", "i", "2",
                 "DVSAN-MIB::dvsanUnitName.0", "s", "unit-l")
        wait_for(lambda: {v["state"] for v in volumes(trap_station)} == {"offline"})
        assert unit_state(trap_station, "unit-l") == "link-down"
        # linkUp carrying the unit's identity: storage info again, volumes back
        snmptrap(trap_station, snmp_home, v3(), "IF-MIB::linkUp", *identity("unit-l", control_port(u)))
        online(trap_station, 3)
        assert unit_state(trap_station, "unit-l") == "online"
        # a linkDown sent as the unit shuts down says so: the unit is offline, not link-down
        snmptrap(trap_station, snmp_home, v3(), "IF-MIB::linkDown", "DVSAN-MIB::dvsanUnitName.0", "s", "unit-l",
                 "DVSAN-MIB::dvsanUnitEvent.0", "i", "4")
        wait_for(lambda: unit_state(trap_station, "unit-l") == "offline")
        assert {v["state"] for v in volumes(trap_station)} == {"offline"}
        s = stats(trap_station)
        assert (s["snmp_accepted_linkDown"], s["snmp_accepted_linkUp"]) == (2, 1)
    finally:
        u.close()


def test_ep_rejected_and_ignored_traps_are_counted_and_change_nothing(trap_station, snmp_home):
    u = UnitHarness(trap_station, name="unit-e")
    stranger = UnitHarness(trap_station, name="unit-x")   # would join the pool if a bad trap got through
    try:
        u.start()
        online(trap_station, 3)
        before = (volumes(trap_station), trap_station.get("/api/v1/units").json())
        s0 = stats(trap_station)
        x = identity("unit-x", control_port(stranger))
        snmptrap(trap_station, snmp_home, v2c("public"), "SNMPv2-MIB::coldStart", *x)
        snmptrap(trap_station, snmp_home, v2c("public"), "IF-MIB::linkDown", "DVSAN-MIB::dvsanUnitName.0", "s", "unit-e")
        snmptrap(trap_station, snmp_home, v3(auth="wrong-auth-phrase"), "SNMPv2-MIB::coldStart", *x)
        snmptrap(trap_station, snmp_home, v3(priv="wrong-priv-phrase"), "SNMPv2-MIB::coldStart", *x)
        snmptrap(trap_station, snmp_home, v3(user="intruder"), "IF-MIB::linkDown",
                 "DVSAN-MIB::dvsanUnitName.0", "s", "unit-e")
        # authenticated, but not a dvsan unit's, or not usable
        snmptrap(trap_station, snmp_home, v2c(), "SNMPv2-MIB::coldStart", "SNMPv2-MIB::sysDescr.0", "s", "a switch")
        snmptrap(trap_station, snmp_home, v2c(), "SNMPv2-MIB::coldStart", "DVSAN-MIB::dvsanUnitName.0", "s", "Unit_X",
                 "DVSAN-MIB::dvsanUnitStorageAddress.0", "s", "127.0.0.1", "DVSAN-MIB::dvsanUnitControlPort.0", "u", "1")
        snmptrap(trap_station, snmp_home, v2c(), "SNMPv2-MIB::coldStart", "DVSAN-MIB::dvsanUnitName.0", "s", "unit-x",
                 "DVSAN-MIB::dvsanUnitStorageAddress.0", "s", "127.0.0.1")
        snmptrap(trap_station, snmp_home, v2c(), "SNMPv2-MIB::warmStart", *x)
        snmptrap(trap_station, snmp_home, v3(), "IF-MIB::linkDown", "DVSAN-MIB::dvsanUnitName.0", "s", "unit-nobody")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for junk in (b"garbage", b"\x30\x03\x02\x01\x05", os.urandom(300)):
                sock.sendto(junk, ("127.0.0.1", trap_station.trap_port))
        expected = {"rejected_bad-community": 2, "rejected_bad-auth": 1, "rejected_bad-priv": 1,
                    "rejected_unknown-user": 1, "rejected_malformed": 3, "ignored_not-dvsan": 1,
                    "ignored_bad-value": 2, "ignored_other-trap": 1, "ignored_unknown-unit": 1}

        def counted() -> dict[str, int]:
            s = stats(trap_station)
            return {k: s.get(f"snmp_{k}", 0) - s0.get(f"snmp_{k}", 0) for k in expected}

        wait_for(lambda: counted() == expected)
        s = stats(trap_station)
        assert s["snmp_rejected"] - s0["snmp_rejected"] == 8 and s["snmp_accepted"] == s0["snmp_accepted"]
        time.sleep(0.5)          # anything wrongly acted on would have reached the pool by now
        assert (volumes(trap_station), trap_station.get("/api/v1/units").json()) == before
        assert stranger.agent.exports_applied == 0
        log = trap_station.log.read_text()
        assert "SNMP notification from 127.0.0.1 ignored (not-dvsan): coldStart without dvsanUnitName.0" in log
        assert "rejected (bad-community)" in log and "rejected (bad-auth)" in log
        for secret in (V3.auth_key, V3.priv_key, "wrong-auth-phrase", COMMUNITY):
            assert secret not in log
    finally:
        u.close()
        stranger.close()


def test_gp_station_without_snmp_settings_does_not_listen(station):
    assert stats(station)["snmp_listening"] == 0


def test_ep_station_refuses_to_start_when_trap_port_is_taken(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        st = StationProc(tmp_path / "st", free_port(), free_port(socket.SOCK_DGRAM), extra_args=(
            "--trap-host", "127.0.0.1", "--trap-port", str(busy.getsockname()[1]),
            "--trap-community-file", secret_file(tmp_path, "c", "c")))
        st.data_dir.mkdir()
        with pytest.raises(RuntimeError, match="cannot listen for SNMP traps on udp 127.0.0.1"):
            st.start()
        st.stop()


# --- the unit agent's notifications, decoded by net-snmp's snmptrapd --------------------------

class Trapd:
    """net-snmp's snmptrapd on a loopback port, loading DVSAN-MIB, logging to a file."""

    def __init__(self, tmp: Path, env: dict[str, str], users: list[tuple[bytes, UsmUser]]):
        self.port = free_port(socket.SOCK_DGRAM)
        self.log = tmp / "snmptrapd.log"
        conf = tmp / "snmptrapd.conf"
        lines = [f"authCommunity log {COMMUNITY}"]
        for engine, u in users:
            # NOTE: a v3 *trap* is keyed to the sender's engine ID: snmptrapd needs it (-e)
            lines += [f"createUser -e 0x{engine.hex()} {u.name} SHA {u.auth_key} AES {u.priv_key}",
                      f"authUser log {u.name} priv"]
        conf.write_text("\n".join(lines) + "\n")
        # NOTE: -m DVSAN-MIB:IF-MIB, not -m +...: the default module list is mostly missing on
        # Debian and would fill the log with "Cannot find module" lines (LAB.md pitfall 7).
        self.proc = subprocess.Popen([_need("snmptrapd"), "-f", "-Lf", str(self.log), "-C", "-c", str(conf),
                                      *MIBS, f"udp:127.0.0.1:{self.port}"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(lambda: self.log.exists() and "NET-SNMP version" in self.log.read_text())

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.parametrize("version", ["v2c", "v3"])
def test_gp_unit_agent_traps_reach_station_and_snmptrapd_by_name(version, trap_station, snmp_home, tmp_path):
    from dvsan.traps import TrapSecurity
    from unit_agent.snmp import TrapSender

    name = f"unit-{version}"
    u = UnitHarness(trap_station, name=name)
    engine = engine_id_for(name)
    trapd = Trapd(tmp_path, snmp_home, [(engine, V3)])
    security = TrapSecurity(user=V3) if version == "v3" else TrapSecurity(community=COMMUNITY)

    def ident() -> UnitIdentity:
        return UnitIdentity(name, "127.0.0.1", 3260, control_port(u), "0.1.0", f"{name}.storage.example")

    sender = TrapSender([("127.0.0.1", trap_station.trap_port), ("127.0.0.1", trapd.port)], security, ident,
                        engine, interface="lo")
    try:
        u.start()                                   # the signed announcement makes the unit known
        online(trap_station, 3)
        # boot: the unit agent's coldStart reaches both receivers
        assert u.call(sender.send_cold_start()) == 2
        wait_for(lambda: "SNMPv2-MIB::coldStart" in trapd.text())
        log = trapd.text()
        assert f"DVSAN-MIB::dvsanUnitName.0 = STRING: {name}" in log
        assert f"DVSAN-MIB::dvsanUnitControlPort.0 = Gauge32: {control_port(u)}" in log
        assert "DVSAN-MIB::dvsanUnitStorageAddress.0 = STRING: 127.0.0.1" in log
        assert f"DVSAN-MIB::dvsanUnitDnsName.0 = STRING: {name}.storage.example" in log
        assert "DVSAN-MIB::dvsanUnitEvent.0 = INTEGER: boot(1)" in log
        # the link-watch API: link down, link up; then the unit shuts down
        u.call(sender.send_link_down())
        wait_for(lambda: unit_state(trap_station, name) == "link-down", 30)
        u.call(sender.send_link_up())
        wait_for(lambda: unit_state(trap_station, name) == "online", 30)
        online(trap_station, 3)
        u.call(sender.send_link_down(shutdown=True))
        wait_for(lambda: unit_state(trap_station, name) == "offline", 30)
        wait_for(lambda: "shutdown(4)" in trapd.text())
        log = trapd.text()
        index = socket.if_nametoindex("lo")
        assert "SNMPv2-MIB::snmpTrapOID.0 = OID: IF-MIB::linkDown" in log
        assert "SNMPv2-MIB::snmpTrapOID.0 = OID: IF-MIB::linkUp" in log
        assert f"IF-MIB::ifIndex.{index} = INTEGER: {index}" in log
        assert f"IF-MIB::ifOperStatus.{index} = INTEGER: down(2)" in log
        assert f"IF-MIB::ifDescr.{index} = STRING: lo" in log
        assert "DVSAN-MIB::dvsanUnitEvent.0 = INTEGER: linkDown(3)" in log
        assert "Cannot find module" not in log and "Wrong Type" not in log
        assert log.count("DVSAN-MIB::dvsanUnitName.0") == 4
        assert stats(trap_station)["snmp_accepted"] == 4
    finally:
        u.call(sender.aclose())
        trapd.stop()
        u.close()


def test_ep_unit_agent_trap_to_nobody_is_an_error_not_a_crash(trap_station):
    from dvsan.errors import Unavailable
    from dvsan.traps import TrapSecurity
    from unit_agent.snmp import TrapSender

    sender = TrapSender([("no-such-host.invalid", 162)], TrapSecurity(community=COMMUNITY),
                        lambda: UnitIdentity("unit-q", "127.0.0.1"), engine_id_for("unit-q"))

    async def go() -> None:
        try:
            await sender.send_cold_start()
        finally:
            await sender.aclose()

    with pytest.raises(Unavailable, match="coldStart reached no destination"):
        asyncio.run(go())


def test_ep_mutated_v3_traps_never_authenticate_nor_change_the_pool(trap_station):
    """Random bit flips, truncations and splices of a real authPriv trap: all refused, none acted on."""
    import random

    from dvsan.traps import TrapSecurity
    from unit_agent.snmp import TrapSender

    u = UnitHarness(trap_station, name="unit-f")
    catcher = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    catcher.bind(("127.0.0.1", 0))
    catcher.settimeout(5)
    sender = TrapSender([catcher.getsockname()], TrapSecurity(user=V3),
                        lambda: UnitIdentity("unit-f", "127.0.0.1", 3260, control_port(u)), engine_id_for("unit-f"))
    try:
        u.call(sender.send_cold_start())
        real, _ = catcher.recvfrom(65535)
        s0 = stats(trap_station)
        rng = random.Random(3)
        sent = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for i in range(300):
                b = bytearray(real)
                if i % 3 == 0:
                    for _ in range(rng.randint(1, 4)):
                        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
                elif i % 3 == 1:
                    b = b[:rng.randrange(len(b))]
                else:
                    at = rng.randrange(len(b))
                    b[at:at] = rng.randbytes(rng.randint(1, 8))
                if bytes(b) != real:
                    if sent and sent % 20 == 0:
                        # NOTE: 20 at a time (a burst would overflow the socket buffer, lost
                        # uncounted): wait until the receiver counted them all, never on a pause
                        wait_for(lambda n=sent: stats(trap_station)["snmp_rejected"] - s0["snmp_rejected"] == n)
                    sock.sendto(bytes(b), ("127.0.0.1", trap_station.trap_port))
                    sent += 1
            wait_for(lambda: stats(trap_station)["snmp_rejected"] - s0["snmp_rejected"] == sent)
            s = stats(trap_station)
            assert (s["snmp_received"], s["snmp_accepted"]) == (s0["snmp_received"], s0["snmp_accepted"])
            assert volumes(trap_station) == [] and trap_station.get("/api/v1/units").json() == []
            # the receiver is still there: the genuine trap gets through (and, from a unit that
            # never announced itself over the signed protocol, adds nothing)
            sock.sendto(real, ("127.0.0.1", trap_station.trap_port))
            wait_for(lambda: stats(trap_station)["snmp_received"] == s0["snmp_received"] + 1)
        assert trap_station.get("/api/v1/units").json() == []
    finally:
        u.call(sender.aclose())
        catcher.close()
        u.close()


@pytest.mark.parametrize("argv, words", [
    (["--trap-community", "public"], "--trap-community takes no secret on the command line"),
    (["--trap-v3-user", "u", "--trap-v3-auth-key", "auth-phrase-1"], "--trap-v3-auth-key-file FILE"),
    (["--trap-v3-priv-key", "priv-phrase-1"], "DVSAN_TRAP_V3_PRIV_KEY"),
])
def test_ep_station_refuses_trap_secrets_on_the_command_line(argv, words, capsys):
    """Issue 15 item 12: /proc/PID/cmdline would show them to every local user."""
    from station.cli import main
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "/proc/PID/cmdline" in err
    assert "public" not in err and "auth-phrase-1" not in err


@pytest.mark.parametrize("argv, words", [
    (["--trap-community", "public"], "--trap-community-file FILE, or set DVSAN_UNIT_TRAP_COMMUNITY"),
    (["--trap-v3-auth-key", "auth-phrase-1"], "--trap-v3-auth-key-file"),
])
def test_ep_unit_agent_refuses_trap_secrets_on_the_command_line(argv, words, capsys):
    from unit_agent.cli import main
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "public" not in err and "auth-phrase-1" not in err


def test_ep_a_trap_secret_file_others_can_read_is_refused(tmp_path, capsys):
    from station.cli import main
    loose = secret_file(tmp_path, "community", COMMUNITY, mode=0o644)
    assert main(["--data-dir", str(tmp_path / "d"), "--trap-community-file", loose]) == 2
    assert "accessible by group or others" in capsys.readouterr().err


def test_gp_unit_agent_takes_trap_secrets_from_files(tmp_path, capsys, monkeypatch):
    """--inventory exits after the settings are read: the file was taken (and a loose one is not)."""
    from unit_agent.cli import main
    (tmp_path / "sys" / "block").mkdir(parents=True)
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "mountinfo").write_text("")
    (tmp_path / "proc" / "swaps").write_text("Filename Type Size Used Priority\n")
    monkeypatch.setenv("DVSAN_UNIT_SYSFS_ROOT", str(tmp_path))
    assert main(["--trap-community-file", secret_file(tmp_path, "community", COMMUNITY), "--inventory"]) == 0
    loose = secret_file(tmp_path, "loose", COMMUNITY, mode=0o640)
    assert main(["--trap-community-file", loose, "--inventory"]) == 2
    assert "accessible by group or others" in capsys.readouterr().err
