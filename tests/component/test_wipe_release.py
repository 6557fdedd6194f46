"""A released volume is zeroed before the next host can have it: the real station process on loopback
with its SQLite file, the real UnitAgent protocol loop and its real Wiper zeroing files that stand
in for the unit's partitions (the lab does it on a real disk under real LIO: tests/lab).
"""

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from dvsan.model import Export
from tests.component.test_station_autoconf import (
    MiB,
    UnitHarness,
    online,
    part,
    request,
    volumes,
    wait_for,
)
from unit_agent.inventory import Inventory
from unit_agent.wipe import Wiper, _AgentSink

PARTS = [part("vdz1", 2048, 8 * MiB), part("vdz2", 2048 + 16384, 16 * MiB),
         part("vdz3", 2048 + 49152, 32 * MiB)]
PATTERN = b"tenant-b secret " * 4096          # 64 KiB


class FileDevices:
    """The Wiper's DevicePort over the harness: its offered partitions and in-memory LIO."""

    def __init__(self, u: UnitHarness):
        self.u = u

    def inventory(self) -> Inventory:
        return Inventory(offered=list(self.u.parts), excluded={})

    def exports(self) -> list[Export]:
        return self.u.lio.actual_exports()

    def sessions(self, target_iqn: str) -> int:
        return self.u.lio.sessions(target_iqn)


def unit_with_files(station: Any, root: Path, fill: bool = True) -> UnitHarness:
    """A unit whose partitions are files under `root`, each holding a previous tenant's bytes
    (`fill`: write them; else the unit "reboots" on the files as they are)."""
    root.mkdir(exist_ok=True)
    for p in PARTS if fill else ():
        f = root / p.device
        with open(f, "wb") as fh:
            fh.truncate(p.size_bytes)
            for off in (0, p.size_bytes // 2, p.size_bytes - len(PATTERN)):
                fh.seek(off)
                fh.write(PATTERN)
    u = UnitHarness(station, parts=PARTS)
    agent = u.agent
    agent.wiper = Wiper(agent.name, FileDevices(u), sink=_AgentSink(agent), pool=lambda: agent.pin.pool_id,
                        path_of=lambda device: str(root / device), sysfs_root=str(root))
    agent.wiper.chunk = 1 * MiB
    return u


def zeros(path: Path) -> bool:
    data = path.read_bytes()
    return data.count(0) == len(data)


def vol(station: Any, vid: int) -> dict[str, Any]:
    return next(v for v in volumes(station) if v["id"] == vid)


def test_gp_a_released_volume_is_zeroed_then_handed_out_again(station, tmp_path):
    u = unit_with_files(station, tmp_path / "disks")
    try:
        u.start()
        online(station, 3)
        a = request(station, 10 * MiB)
        assert a.status_code == 201, a.text
        a = a.json()
        assert a["device"] == "vdz2"
        r = httpx.delete(f"{station.url}/api/v1/assignments/{a['id']}?wait=60", headers=station.auth, timeout=30)
        assert r.status_code == 200, r.text
        rel = r.json()
        assert rel["unit_confirmed"] is True and rel["volume_id"] == a["volume_id"]
        assert rel["wipe_state"] in ("running", "clean"), rel
        v = wait_for(lambda: (x := vol(station, a["volume_id"]))["wipe_state"] == "clean" and x)
        assert (v["wipe_done_bytes"], v["wipe_total_bytes"]) == (16 * MiB, 16 * MiB)
        assert v["wipe_method"] in ("direct", "buffered") and v["wipe_detail"].startswith("zeroed")
        assert zeros(tmp_path / "disks" / "vdz2")
        assert not zeros(tmp_path / "disks" / "vdz3"), "a wipe touched another volume"
        again = request(station, 10 * MiB, host="host-c", iqn="iqn.2026-11.org.dvsan.lab:host-c")
        assert again.status_code == 201 and again.json()["volume_id"] == a["volume_id"]
    finally:
        u.close()


def test_ep_a_refused_wipe_keeps_the_volume_out_and_says_why_then_a_retry_frees_it(station, tmp_path):
    disks = tmp_path / "disks"
    u = unit_with_files(station, disks)
    try:
        u.start()
        online(station, 3)
        a = request(station, 10 * MiB).json()
        # the device is not the size of the extent any more: the unit refuses to wipe it
        os.truncate(disks / "vdz2", 15 * MiB)
        r = httpx.delete(f"{station.url}/api/v1/assignments/{a['id']}?wait=60", headers=station.auth, timeout=30).json()
        assert r["wipe_state"] == "failed"
        v = vol(station, a["volume_id"])
        assert v["wipe_state"] == "failed" and "bytes but the extent to wipe is" in v["wipe_detail"]
        assert v["assigned_to"] is None
        # not handed out: the next best fit for 10 MiB is the 32 MiB volume
        b = request(station, 10 * MiB, host="host-c", iqn="iqn.2026-11.org.dvsan.lab:host-c")
        assert b.status_code == 201 and b.json()["device"] == "vdz3"
        # bad retries: unknown volume, a clean one, an assigned one, a bad id
        assert httpx.post(f"{station.url}/api/v1/volumes/999/wipe", headers=station.auth, timeout=10).status_code == 404
        clean = next(x for x in volumes(station) if x["device"] == "vdz1")
        r2 = httpx.post(f"{station.url}/api/v1/volumes/{clean['id']}/wipe", headers=station.auth, timeout=10)
        assert r2.status_code == 409 and "nothing to wipe" in r2.json()["detail"]
        r3 = httpx.post(f"{station.url}/api/v1/volumes/{b.json()['volume_id']}/wipe", headers=station.auth, timeout=10)
        assert r3.status_code == 409 and "release it first" in r3.json()["detail"]
        assert httpx.post(f"{station.url}/api/v1/volumes/0/wipe", headers=station.auth, timeout=10).status_code == 422
        assert httpx.post(f"{station.url}/api/v1/volumes/{2**70}/wipe", headers=station.auth, timeout=10).status_code == 422
        # repaired; the operator retries
        os.truncate(disks / "vdz2", 16 * MiB)
        r4 = httpx.post(f"{station.url}/api/v1/volumes/{a['volume_id']}/wipe", headers=station.auth, timeout=30)
        assert r4.status_code == 202, r4.text
        wait_for(lambda: vol(station, a["volume_id"])["wipe_state"] == "clean")
        assert zeros(disks / "vdz2")
    finally:
        u.close()


def test_ep_station_killed_with_a_wipe_owed_hands_nothing_out_until_the_unit_wiped_it(station, tmp_path):
    disks = tmp_path / "disks"
    u = unit_with_files(station, disks)
    try:
        u.start()
        online(station, 3)
        a = request(station, 20 * MiB).json()
        assert a["device"] == "vdz3"
        # the unit goes away; the release is kept, its wipe owed
        assert u.stop()
        r = httpx.delete(f"{station.url}/api/v1/assignments/{a['id']}?wait=60", headers=station.auth, timeout=60).json()
        assert r["unit_confirmed"] is False and r["wipe_state"] == "needed"
        # the station dies hard and comes back on its database
        station.proc.send_signal(signal.SIGKILL)
        station.proc.wait(10)
        station.start()
        assert vol(station, a["volume_id"])["wipe_state"] == "needed"
        assert not zeros(disks / "vdz3")
        # the unit restarts: its exports are pushed (the export is dropped), then the wipe ordered
        u.close()
        u = unit_with_files(station, disks, fill=False)
        u.start()
        wait_for(lambda: vol(station, a["volume_id"])["wipe_state"] == "clean", timeout=30)
        assert zeros(disks / "vdz3")
        b = request(station, 20 * MiB, host="host-c", iqn="iqn.2026-11.org.dvsan.lab:host-c")
        assert b.status_code == 201 and b.json()["volume_id"] == a["volume_id"]
    finally:
        u.close()


@pytest.mark.parametrize("body", [
    {"device": "vdz2", "wipe_id": "x", "state": "done", "done_bytes": 1, "total_bytes": 1},
    {"device": "../etc", "wipe_id": "x", "state": "succeeded", "done_bytes": 1, "total_bytes": 1},
    {"device": "vdz2", "wipe_id": "x", "state": "succeeded", "done_bytes": -5, "total_bytes": 1},
])
def test_ep_a_malformed_wipe_status_from_a_unit_gets_an_error_and_changes_nothing(station, tmp_path, body):
    from dvsan.protocol import MsgType

    u = unit_with_files(station, tmp_path / "disks")
    try:
        u.start()
        online(station, 3)

        async def send() -> dict[str, Any]:
            assert u.agent.endpoint is not None
            return await u.agent.endpoint.send(u.agent.station, MsgType.WIPE_STATUS,
                                               {"unit": u.agent.name, **body}, timeout=10)
        ack = u.call(send())
        assert ack["status"] == "error", ack
        assert all(v["wipe_state"] == "clean" for v in volumes(station))
        # a well-formed status of a wipe the station never ordered is answered ok, as stale
        good = {"unit": u.agent.name, "device": "vdz2", "wipe_id": "v9-unknown", "state": "succeeded",
                "done_bytes": 16 * MiB, "total_bytes": 16 * MiB}

        async def send_good() -> dict[str, Any]:
            assert u.agent.endpoint is not None
            return await u.agent.endpoint.send(u.agent.station, MsgType.WIPE_STATUS, good, timeout=10)
        assert u.call(send_good()) == {"status": "ok", "volume": "stale"}
    finally:
        u.close()

