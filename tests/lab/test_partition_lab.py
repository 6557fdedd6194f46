"""Partitioning from the console (issue 7), on a real kernel: unit-a's blank second disk (vdb) goes
from no label to four partitions through the REST API the console uses; the pool lists them with
the LBAs `sfdisk --json` reports in the guest; a host gets one over real iSCSI and writes to it.
Then the refusals, each naming what is in the way and leaving the table as it was: a mounted
partition, a partition exported to a host, the system disk (a disk holding /boot)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dvsan_lab.scenario import Flow, Station, reset_host, wait_for

pytestmark = pytest.mark.lab
UNIT, HOST = "unit-a", "host-b"
MiB = 1 << 20
SIZES = (256 * MiB, 256 * MiB, 512 * MiB, 900 * MiB)
BLANK = "wipefs --all --force /dev/vdb >/dev/null && blockdev --rereadpt /dev/vdb; udevadm settle 2>/dev/null; true"


@pytest.fixture(scope="module")
def flow(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    reset_host(lab, HOST)
    lab.exec(UNIT, "umount /tmp/dvsan-p /boot 2>/dev/null; " + BLANK, check=True)
    station = Station(Path.cwd(), Path(tmp_path_factory.mktemp("partition-station")), lab.host_ip)
    station.start()
    f = Flow(lab, station)
    try:
        f.start_unit(UNIT, extra="--disk vdb")     # vda as every lab test has it, and the blank vdb
        f.wait_pool(UNIT, 3)
        yield f
    finally:
        reset_host(lab, HOST)
        if UNIT in f.unit_pids:
            f.stop_unit(UNIT)
        station.stop()
        lab.exec(UNIT, "umount /tmp/dvsan-p /boot 2>/dev/null; " + BLANK)


def layout(flow: Flow, body: dict[str, Any], disk: str = "vdb") -> httpx.Response:
    return httpx.post(f"{flow.station.url}/api/v1/units/{UNIT}/disks/{disk}/layout?wait=180", json=body,
                      headers=flow.station.auth, timeout=200)


def disk(flow: Flow, name: str = "vdb") -> dict[str, Any]:
    return next(d for d in flow.station.get(f"/api/v1/units/{UNIT}/disks") if d["name"] == name)


def guest_table(flow: Flow) -> dict[str, tuple[int, int, int]]:
    """vdb's partitions as `sfdisk --json` in the guest reports them: device -> (start, end, bytes)."""
    t = flow.sfdisk(UNIT, "vdb")
    return {p["node"].removeprefix("/dev/"): (p["start"], p["start"] + p["size"] - 1, p["size"] * t["sectorsize"])
            for p in t["partitions"]}


def refused(flow: Flow, body: dict[str, Any], *, disk: str = "vdb") -> str:
    """Ask for `body`, expect the unit's refusal (409) and the table unchanged; the refusal's text."""
    before = flow.lab.exec(UNIT, f"sfdisk --dump /dev/{disk}", check=True).out
    r = layout(flow, body, disk)
    assert r.status_code == 409, r.text
    assert flow.lab.exec(UNIT, f"sfdisk --dump /dev/{disk}", check=True).out == before
    return str(r.json()["detail"])


def test_gp_a_blank_disk_gets_four_partitions_the_pool_lists_and_a_host_writes_to(flow: Flow) -> None:
    d = disk(flow)
    assert (d["label"], d["partitions"], d["size_bytes"], d["id"]) == (None, [], 2 << 30, "dvsanlab-unit-a-b")
    t0 = time.monotonic()
    r = layout(flow, {"label": "gpt", "create": [{"size_bytes": s} for s in SIZES]})
    took = time.monotonic() - t0
    assert r.status_code == 200, r.text
    task = r.json()
    assert (task["state"], task["kind"], task["object"]) == ("succeeded", "partition", f"/units/{UNIT}/disks/vdb")
    print(f"\nvdb: blank -> 4 partitions in {took:.1f} s (task {task['id']})")
    want = guest_table(flow)
    assert sorted(want) == ["vdb1", "vdb2", "vdb3", "vdb4"]
    assert [want[f"vdb{i + 1}"][2] for i in range(4)] == list(SIZES[:3]) + [900 * MiB]
    # the console's view and the pool: the LBAs the guest's sfdisk reports
    d = disk(flow)
    assert {p["device"]: (p["start_lba"], p["end_lba"], p["size_bytes"]) for p in d["partitions"]} == want
    vols = flow.wait_pool(UNIT, 7)
    assert {v["device"]: (v["start_lba"], v["end_lba"], v["size_bytes"]) for v in vols
            if v["disk"] == "vdb"} == want
    # the kernel follows the table: each partition's block device has the table's size
    for dev, (_s, _e, size) in want.items():
        assert int(flow.lab.exec(UNIT, f"blockdev --getsize64 /dev/{dev}", check=True).out) == size

    a = flow.request(HOST, "200MiB")
    assert a["device"] in ("vdb1", "vdb2"), a
    sha = flow.write_pattern(HOST, a["device_path"], 8, "partition-lab")
    assert flow.read_sha(UNIT, f"/dev/{a['device']}", 8) == sha

    # refused: a partition exported to a host
    why = refused(flow, {"delete": [int(a["device"][-1])]})
    assert f"{a['device']} is exported by LIO as {a['target_iqn']}" in why and "assigned to a host" in why, why
    assert flow.read_sha(UNIT, f"/dev/{a['device']}", 8) == sha

    # refused: a mounted partition
    flow.lab.exec(UNIT, "mkfs.ext4 -q -F /dev/vdb3 && mkdir -p /tmp/dvsan-p && mount /dev/vdb3 /tmp/dvsan-p",
                  check=True)
    try:
        why = refused(flow, {"delete": [3]})
        assert "vdb3 is mounted on /tmp/dvsan-p" in why, why
    finally:
        flow.lab.exec(UNIT, "umount /tmp/dvsan-p", check=True)

    # refused: the system disk (here the disk that holds /boot), whatever the change
    flow.lab.exec(UNIT, "mkfs.ext4 -q -F /dev/vdb4 && mount /dev/vdb4 /boot", check=True)
    try:
        why = refused(flow, {"delete": [4]})
        assert "vdb is the system disk (holds /boot)" in why, why
    finally:
        flow.lab.exec(UNIT, "umount /boot", check=True)

    # with nothing in the way any more, the same kind of change goes through on the live kernel
    r = layout(flow, {"delete": [3, 4], "create": [{"size_bytes": 600 * MiB}, {"size_bytes": 600 * MiB}]})
    if r.status_code != 200:
        why = flow.lab.exec(UNIT, "pgrep -a udev; fuser -v /dev/vdb3 /dev/vdb4; ls /sys/block/vdb/vdb3/holders; "
                                  "grep vdb /proc/self/mountinfo; tail -20 /tmp/dvsan-unit-agent-unit-a.log")
        pytest.fail(f"{r.text}\n{why.out}\n{why.err}")
    after = guest_table(flow)
    assert after[a["device"]] == want[a["device"]], "a change moved a partition a host writes to"
    assert (after["vdb3"][2], after["vdb4"][2]) == (600 * MiB, 600 * MiB)
    assert {p["device"]: (p["start_lba"], p["end_lba"], p["size_bytes"]) for p in disk(flow)["partitions"]} == after
    assert flow.read_sha(UNIT, f"/dev/{a['device']}", 8) == sha
    wait_for(lambda: {v["device"]: (v["start_lba"], v["end_lba"], v["size_bytes"]) for v in flow.station.volumes(UNIT)
                      if v["disk"] == "vdb" and v["state"] == "online"} == after, 60, "the pool to follow vdb")
