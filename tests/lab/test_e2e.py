"""End to end on real kernels: unit announces, station builds the pool, hosts get volumes over LIO.

Real LIO (rtslib-fb) in the unit guest, real open-iscsi in the host guests, the real station
process on the machine at the lab bridge address. The tests run in file order and share one flow.
"""

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dvsan.protocol import MsgType, encode
from dvsan_lab.scenario import Flow, Station, reset_host

pytestmark = pytest.mark.lab
UNIT, HOST_B, HOST_C = "unit-a", "host-b", "host-c"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def flow(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    for g in (HOST_B, HOST_C):
        reset_host(lab, g)
    data_dir = Path(tmp_path_factory.mktemp("e2e-station"))
    station = Station(Path.cwd(), data_dir, lab.host_ip)
    station.start()
    f = Flow(lab, station)
    try:
        t0 = time.monotonic()
        f.start_unit(UNIT)
        f.wait_pool(UNIT, 3)
        f.boot_seconds = time.monotonic() - t0  # type: ignore[attr-defined]
        yield f
    finally:
        for g in (HOST_B, HOST_C):
            reset_host(lab, g)
        if UNIT in f.unit_pids:
            f.stop_unit(UNIT)
        station.stop()


@pytest.fixture(scope="module")
def shared() -> dict[str, Any]:
    """What earlier tests of the module hand to later ones (assignments, checksums)."""
    return {}


def test_gp_pool_lists_exactly_the_units_partitions_as_sfdisk_reports(flow: Flow) -> None:
    table = flow.sfdisk(UNIT)
    want = {p["node"].rsplit("/", 1)[1]: (p["start"], p["size"], p["start"] + p["size"] - 1)
            for p in table["partitions"]}
    assert len(want) >= 2
    got = {v["device"]: (v["start_lba"], v["length_blocks"], v["end_lba"]) for v in flow.station.volumes(UNIT)}
    assert got == want
    assert {v["block_size"] for v in flow.station.volumes(UNIT)} == {table.get("sectorsize", 512)}
    unit = flow.station.get(f"/api/v1/units/{UNIT}")
    assert unit["state"] == "online" and unit["portal_address"] == flow.lab.ip(UNIT)


def test_gp_host_gets_smallest_fitting_volume_writes_relogs_and_reads_back(flow: Flow, shared: dict[str, Any]) -> None:
    a = flow.request(HOST_B, "1GiB")
    free_sizes = sorted(v["size_bytes"] for v in flow.station.volumes(UNIT))
    assert a["size_bytes"] == min(s for s in free_sizes if s >= 1024**3)   # best fit, not the largest
    assert a["device"] == "vda2" and a["unit"] == UNIT
    assert a["target_iqn"] == f"iqn.2026-11.org.dvsan:{UNIT}:vda2"
    assert a["initiator_iqn"] == flow.lab.initiator_name(HOST_B)
    dev = a["device_path"]
    sha = flow.write_pattern(HOST_B, dev, 64, "b1")
    dev2 = flow.relogin(HOST_B, a)
    assert flow.read_sha(HOST_B, dev2, 64) == sha
    # the same bytes are on the unit's partition itself
    assert flow.read_sha(UNIT, "/dev/vda2", 64) == sha
    # all three parties hold the same assignment
    held = flow.host_agent(HOST_B, "--json status").out
    assert a["target_iqn"] in held
    assert flow.station.get(f"/api/v1/assignments/{a['id']}")["device"] == "vda2"
    assert flow.lab.exec(UNIT, f"ls /sys/kernel/config/target/iscsi/{a['target_iqn']}/tpgt_1/acls/").out.split() \
        == [flow.lab.initiator_name(HOST_B)]
    shared["b"] = {**a, "device_path": dev2, "sha": sha}


def test_ep_unassigned_host_cannot_log_in(flow: Flow, shared: dict[str, Any]) -> None:
    a = shared["b"]
    portal = f"{a['unit_address']}:{a['portal_port']}"
    disc = flow.iscsiadm(HOST_C, f"-m discovery -t sendtargets -p {portal}")
    assert disc.rc == 0 and a["target_iqn"] in disc.out      # discovery lists it (LIO does)...
    login = flow.iscsiadm(HOST_C, f"-m node -T {a['target_iqn']} -p {portal} --login")
    assert login.rc == 24, (login.rc, login.err)               # ...but the ACL refuses the login
    flow.iscsiadm(HOST_C, f"-m node -T {a['target_iqn']} -p {portal} -o delete")


def test_gp_two_hosts_do_io_on_different_volumes_of_one_unit_at_once(flow: Flow, shared: dict[str, Any]) -> None:
    c = flow.request(HOST_C, "1GiB")
    b = shared["b"]
    assert c["unit"] == UNIT and c["device"] != b["device"] and c["device"] == "vda3"
    shared["c"] = c
    lab = flow.lab
    # both hosts write and read back 32 MiB at the same time
    for g, dev in ((HOST_B, b["device_path"]), (HOST_C, c["device_path"])):
        lab.exec(g, "rm -f /tmp/conc.*; head -c 32M /dev/urandom > /tmp/conc.bin; "
                    "sha256sum < /tmp/conc.bin | cut -d' ' -f1 > /tmp/conc.want", check=True)
        lab.spawn(g, f"dd if=/tmp/conc.bin of={dev} bs=1M seek=64 oflag=direct status=none && "
                     f"dd if={dev} bs=1M skip=64 count=32 iflag=direct status=none | sha256sum | cut -d' ' -f1 "
                     f"> /tmp/conc.got; touch /tmp/conc.done", "/tmp/conc.log")
    for g in (HOST_B, HOST_C):
        deadline = time.monotonic() + 300
        while lab.exec(g, "test -e /tmp/conc.done").rc != 0:
            assert time.monotonic() < deadline, f"concurrent I/O in {g} did not finish"
            time.sleep(1)
        assert lab.exec(g, "cat /tmp/conc.got").out == lab.exec(g, "cat /tmp/conc.want").out
    # host-b's first 64 MiB are untouched by host-c's writes
    assert flow.read_sha(HOST_B, b["device_path"], 64) == b["sha"]


def test_gp_io_goes_on_with_the_station_stopped(flow: Flow, shared: dict[str, Any]) -> None:
    b = shared["b"]
    flow.station.stop()
    try:
        sha = flow.write_pattern(HOST_B, b["device_path"], 16, "nostation")
        assert flow.lab.exec(HOST_B, f"dd if={b['device_path']} bs=1M count=16 iflag=direct status=none "
                                     f"| sha256sum").out.split()[0] == sha
        b["sha16"] = sha
    finally:
        flow.station.start()


def test_gp_unit_agent_stop_marks_offline_and_restart_brings_back_with_export(flow: Flow, shared: dict[str, Any]) -> None:
    b = shared["b"]
    flow.stop_unit(UNIT)
    vols = flow.station.volumes(UNIT)
    assert {v["state"] for v in vols} == {"offline"}
    assert flow.station.get(f"/api/v1/units/{UNIT}")["state"] == "offline"
    # the kernel keeps exporting while the agent is down: out of band
    assert flow.read_sha(HOST_B, b["device_path"], 16) == b["sha16"]
    flow.start_unit(UNIT)
    flow.wait_pool(UNIT, 3)
    a = flow.station.get(f"/api/v1/assignments/{b['id']}")
    assert a["volume_state"] == "online" and a["target_iqn"] == b["target_iqn"]
    acl_dir = f"/sys/kernel/config/target/iscsi/{b['target_iqn']}/tpgt_1/acls/"
    assert flow.lab.exec(UNIT, f"ls {acl_dir}").out.split() == [flow.lab.initiator_name(HOST_B)]
    # and a fresh login still works against the re-applied export
    dev = flow.relogin(HOST_B, b)
    assert flow.read_sha(HOST_B, dev, 16) == b["sha16"]
    b["device_path"] = dev


def test_ep_too_large_request_is_refused_naming_largest_free(flow: Flow) -> None:
    before = flow.station.volumes()
    r = flow.host_agent(HOST_C, "request 50GiB")
    assert r.rc != 0
    assert "largest free volume is 512.0 MiB (unit-a:vda1)" in r.err, r.err
    assert flow.station.volumes() == before


def test_ep_malformed_and_forged_datagrams_leave_pool_unchanged(flow: Flow) -> None:
    before = flow.station.volumes()
    stats0 = flow.station.get("/api/v1/protocol/stats")
    key = flow.station.key_file.read_text().strip().encode()
    shutdown = encode(key, MsgType.SHUTDOWN, 4242, {"unit": UNIT})[0]
    tampered = bytearray(shutdown)
    tampered[-1] ^= 1
    forged = encode(b"not-the-cluster-key!", MsgType.SHUTDOWN, 4243, {"unit": UNIT})[0]
    garbage = [b"", b"DVSN", bytes(tampered), forged, b"\x00" * 2000, shutdown[:-5]]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in garbage:
            s.sendto(d, (flow.lab.host_ip, 7479))
    time.sleep(1)
    assert flow.station.volumes() == before
    stats = flow.station.get("/api/v1/protocol/stats")
    assert stats.get("dropped", 0) - stats0.get("dropped", 0) == len(garbage)


def test_gp_release_removes_target_and_frees_volume(flow: Flow, shared: dict[str, Any]) -> None:
    c = shared["c"]
    r = flow.release(HOST_C, c["id"])
    assert r.rc == 0, r.err
    assert flow.iscsiadm(HOST_C, "-m session").rc == 21       # no session left (ISCSI_ERR_NO_OBJS_FOUND)
    assert flow.lab.exec(UNIT, f"test -e /sys/kernel/config/target/iscsi/{c['target_iqn']}").rc != 0
    vol = next(v for v in flow.station.volumes(UNIT) if v["device"] == c["device"])
    assert vol["assigned_to"] is None and vol["state"] == "online"
