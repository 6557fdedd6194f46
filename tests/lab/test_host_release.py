"""`release` on real kernels (issue 15 item 2): refused while the volume is mounted, with the mount
point named; after unmount it flushes, deletes the SCSI disk, logs out, and leaves no session, node
record or block device behind. Real LIO in unit-a, real open-iscsi and ext4 in host-b."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dvsan_lab.scenario import Flow, Station, reset_host

pytestmark = pytest.mark.lab
UNIT, HOST = "unit-a", "host-b"
MNT = "/tmp/dvsan-release-mnt"
USED: list[str] = []   # the unit's partitions this module put a filesystem on


@pytest.fixture(scope="module")
def flow(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    reset_host(lab, HOST)
    station = Station(Path.cwd(), Path(tmp_path_factory.mktemp("release-station")), lab.host_ip)
    station.start()
    f = Flow(lab, station)
    try:
        f.start_unit(UNIT)
        f.wait_pool(UNIT, 3)
        yield f
    finally:
        lab.exec(HOST, f"umount {MNT} >/dev/null 2>&1; true")
        reset_host(lab, HOST)
        if UNIT in f.unit_pids:
            f.stop_unit(UNIT)
        station.stop()
        # NOTE: the unit offers only partitions without a signature (unit_agent/inventory.py):
        # the ext4 made here would keep the volume out of every later module's pool.
        for part in USED:
            lab.exec(UNIT, f"wipefs -a -q /dev/{part}", check=True)


def test_ep_release_of_a_mounted_volume_is_refused_then_after_unmount_leaves_nothing(flow: Flow) -> None:
    lab = flow.lab
    a = flow.request(HOST, "100MiB")
    dev = a["device_path"]
    name = dev.removeprefix("/dev/")
    USED.append(a["device"])
    lab.exec(HOST, f"mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 {dev} && mkdir -p {MNT} && "
                   f"mount {dev} {MNT} && echo kept > {MNT}/file && sync", timeout=300, check=True)

    refused = flow.release(HOST, a["id"])
    assert refused.rc == 1, (refused.rc, refused.out, refused.err)
    assert f"{dev} is in use: {name} is mounted at {MNT}" in refused.err, refused.err
    # nothing was taken away: the session, the record, the station's assignment and the data stay
    assert a["target_iqn"] in flow.iscsiadm(HOST, "-m session").out
    assert lab.exec(HOST, f"cat {MNT}/file").out.strip() == "kept"
    assert flow.station.get(f"/api/v1/assignments/{a['id']}")["id"] == a["id"]
    assert str(a["id"]) in flow.host_agent(HOST, "--json status").out

    lab.exec(HOST, f"umount {MNT}", check=True, timeout=120)
    released = flow.release(HOST, a["id"])
    assert released.rc == 0, released.err
    sessions = flow.iscsiadm(HOST, "-m session")
    assert sessions.rc == 21 or a["target_iqn"] not in sessions.out, sessions.out   # no session
    nodes = flow.iscsiadm(HOST, "-m node")
    assert nodes.rc == 21 or a["target_iqn"] not in nodes.out, nodes.out            # no node record
    assert lab.exec(HOST, f"test -e {dev} || test -e /sys/block/{name}").rc != 0   # no device
    assert flow.host_agent(HOST, "--json status").out.strip() == "[]"
    vol = next(v for v in flow.station.volumes(UNIT) if v["device"] == a["device"])
    assert vol["assigned_to"] is None
