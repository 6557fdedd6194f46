"""Link down/up and liveness on real kernels: the station follows a unit's storage link and silence.

The unit guest has one NIC, so while its link is down nothing it sends reaches the station: the
station's liveness check marks it unreachable; when the link is back the agent's netlink watch
re-announces it and its volumes come back, and the host's iSCSI session recovers by itself.
"""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dvsan.traps import MIB_DIR
from dvsan_lab.scenario import Flow, Station, reset_host, wait_for

pytestmark = pytest.mark.lab
UNIT, HOST = "unit-a", "host-b"
LIVENESS = 6.0
TRAP_PORT = 10162
COMMUNITY = "dvsanlab"


@pytest.fixture(scope="module")
def flow(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    reset_host(lab, HOST)
    # Secrets go in 0600 files, never on a command line (the guests read them over the shared root).
    community = Path(tmp_path_factory.mktemp("links-secrets")) / "community"
    community.write_text(COMMUNITY + "\n")
    community.chmod(0o600)
    station = Station(Path.cwd(), Path(tmp_path_factory.mktemp("links-station")), lab.host_ip,
                      args=("--liveness-timeout", str(LIVENESS), "--trap-host", lab.host_ip,
                            "--trap-port", str(TRAP_PORT), "--trap-community-file", str(community)))
    station.start()
    f = Flow(lab, station)
    try:
        f.unit_extra = UNIT_EXTRA.format(host=lab.host_ip, community=community)  # type: ignore[attr-defined]
        f.start_unit(UNIT, extra=f.unit_extra)  # type: ignore[attr-defined]
        f.wait_pool(UNIT, 3)
        yield f
    finally:
        reset_host(lab, HOST)
        if UNIT in f.unit_pids:
            f.stop_unit(UNIT)
        station.stop()


UNIT_EXTRA = (f"--heartbeat-interval 1 --trap-destination {{host}}:{TRAP_PORT} "
              "--trap-community-file {community}")


def unit_state(flow: Flow) -> str:
    return str(flow.station.get(f"/api/v1/units/{UNIT}")["state"])


def test_gp_link_down_then_up_unavailable_then_available_and_session_recovers(flow: Flow) -> None:
    lab = flow.lab
    a = flow.request(HOST, "1GiB")
    sha = flow.write_pattern(HOST, a["device_path"], 8, "link")
    ifname = lab.exec(UNIT, f"ip -o -4 addr show | awk '$4 ~ /^{lab.ip(UNIT)}\\//{{print $2}}'",
                      check=True).out.strip()
    # the guest's clock against ours, to turn the guest's "link up" instant into our time
    t_before = time.time()
    guest_now = float(lab.exec(UNIT, "date +%s.%N", check=True).out)
    offset = guest_now - (t_before + time.time()) / 2
    lab.spawn(UNIT, f"ip link set {ifname} down; sleep 20; date +%s.%N > /tmp/linkup.ts; "
                    f"ip link set {ifname} up", "/tmp/linkflap.log")
    wait_for(lambda: unit_state(flow) == "unreachable", 20, "the unit marked unreachable")
    assert {v["state"] for v in flow.station.volumes(UNIT)} == {"offline"}
    assert flow.station.get(f"/api/v1/assignments/{a['id']}")["volume_state"] == "offline"
    wait_for(lambda: unit_state(flow) == "online", 90, "the unit back online", interval=0.1)
    t_online = time.time()
    flow.wait_pool(UNIT, 3)
    up_at = float(lab.exec(UNIT, "cat /tmp/linkup.ts", check=True).out) - offset
    print(f"\nlink back -> unit online in the pool: {t_online - up_at:.2f} s (liveness timeout {LIVENESS} s)")
    assert "storage link" in flow.unit_log(UNIT) and "went up" in flow.unit_log(UNIT)
    # the host's established session recovers once the link is back: same device, same bytes
    assert flow.read_sha(HOST, a["device_path"], 8) == sha
    flow.release(HOST, a["id"])


def test_ep_unit_agent_killed_without_a_word_is_unreachable_then_returns(flow: Flow) -> None:
    a = flow.request(HOST, "1GiB")
    flow.stop_unit(UNIT, sig="KILL")        # no SHUTDOWN, no trap: silence
    t0 = time.monotonic()
    wait_for(lambda: unit_state(flow) == "unreachable", 3 * LIVENESS, "the silent unit marked unreachable")
    took = time.monotonic() - t0
    assert LIVENESS * 0.5 <= took <= LIVENESS * 3, took
    kept = flow.station.get(f"/api/v1/assignments/{a['id']}")
    assert kept["target_iqn"] == a["target_iqn"]                 # assignments are kept, not deleted
    flow.start_unit(UNIT, extra=flow.unit_extra)  # type: ignore[attr-defined]
    flow.wait_pool(UNIT, 3)
    acl = flow.lab.exec(UNIT, f"ls /sys/kernel/config/target/iscsi/{a['target_iqn']}/tpgt_1/acls/").out.split()
    assert acl == [flow.lab.initiator_name(HOST)]
    flow.release(HOST, a["id"])


def test_gp_snmp_coldstart_from_the_unit_guest_brings_volumes_back(flow: Flow) -> None:
    """net-snmp's snmptrap inside the unit guest: linkDown takes the unit out, coldStart brings it back."""
    lab = flow.lab
    stats0 = flow.station.get("/api/v1/protocol/stats")
    # the agent's own coldStarts at its boots reached the station (the very first may come before
    # its signed announcement, and a trap never adds a unit: then it counts as unknown-unit)
    assert stats0.get("snmp_accepted_coldStart", 0) + stats0.get("snmp_ignored_unknown-unit", 0) >= 1
    trap = (f"snmptrap -v 2c -c {COMMUNITY} -m DVSAN-MIB:IF-MIB -M +{MIB_DIR} {lab.host_ip}:{TRAP_PORT} ''")
    unit_vb = f"DVSAN-MIB::dvsanUnitName.0 s {UNIT}"
    # NOTE: a live agent's next heartbeat hears "link-down" and announces itself again within a
    # second, which is right but hides what the traps alone do: freeze the agent meanwhile.
    pgid = flow.unit_pids[UNIT]
    lab.exec(UNIT, f"kill -STOP -- -{pgid}", check=True)
    try:
        lab.exec(UNIT, f"{trap} IF-MIB::linkDown {unit_vb}", check=True)
        wait_for(lambda: unit_state(flow) == "link-down", 20, "the unit marked link-down")
        assert {v["state"] for v in flow.station.volumes(UNIT)} == {"offline"}
        t0 = time.monotonic()
        lab.exec(UNIT, f"{trap} SNMPv2-MIB::coldStart {unit_vb} DVSAN-MIB::dvsanUnitStorageAddress.0 s "
                       f"{lab.ip(UNIT)} DVSAN-MIB::dvsanUnitControlPort.0 u 7478 "
                       f"DVSAN-MIB::dvsanUnitAgentVersion.0 s 0.1.0", check=True)
        wait_for(lambda: flow.station.get("/api/v1/protocol/stats").get("snmp_accepted_coldStart", 0)
                 > stats0.get("snmp_accepted_coldStart", 0), 20, "the coldStart trap accepted")
        assert f"SNMP says unit {UNIT} is up; asking it for its storage info" in flow.station.log_path.read_text()
        assert unit_state(flow) == "link-down"     # a trap alone never brings a unit back: its answer does
    finally:
        lab.exec(UNIT, f"kill -CONT -- -{pgid}", check=True)
    flow.wait_pool(UNIT, 3, timeout=60)
    print(f"\ncoldStart trap sent in the unit guest -> volumes online in the pool: {time.monotonic() - t0:.2f} s")
    # a trap with the wrong community changes nothing
    lab.exec(UNIT, f"{trap.replace(COMMUNITY, 'not-ours')} IF-MIB::linkDown {unit_vb}", check=True)
    time.sleep(1)
    assert unit_state(flow) == "online"
    assert flow.station.get("/api/v1/protocol/stats").get("snmp_rejected", 0) > stats0.get("snmp_rejected", 0)


def test_ep_unit_guest_frozen_is_unreachable_then_returns_and_host_session_recovers(flow: Flow) -> None:
    """The whole unit machine stops without a word (its emulator is frozen), then runs on."""
    import os
    import signal
    import subprocess

    a = flow.request(HOST, "1GiB")
    sha = flow.write_pattern(HOST, a["device_path"], 8, "freeze")
    pids = [int(p) for p in subprocess.run(["pgrep", "-f", f"qemu-system.*-name dvsanlab-{UNIT}"],
                                           capture_output=True, text=True, check=False).stdout.split()]
    assert pids, "no emulator process for the unit guest"
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    try:
        wait_for(lambda: unit_state(flow) == "unreachable", 4 * LIVENESS, "the frozen unit marked unreachable")
        assert {v["state"] for v in flow.station.volumes(UNIT)} == {"offline"}
        assert flow.station.get(f"/api/v1/assignments/{a['id']}")["target_iqn"] == a["target_iqn"]
    finally:
        for p in pids:
            os.kill(p, signal.SIGCONT)
    flow.wait_pool(UNIT, 3, timeout=120)
    assert flow.read_sha(HOST, a["device_path"], 8) == sha
    flow.release(HOST, a["id"])
