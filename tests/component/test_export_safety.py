"""Export safety through the real station process (issue 15 items 1, 4, 6, 7, 9): what the station
sends, withholds, records and undoes, with the real unit agent protocol loop (in-memory LIO)."""

import shutil
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from dvsan.model import Partition
from dvsan.protocol import MsgType
from dvsan.reconcile import CreateExport
from tests.component.conftest import StationProc, free_port
from tests.component.test_station_autoconf import (
    MemoryLio,
    UnitHarness,
    online,
    request,
    volumes,
    wait_for,
)

HOST_C = "iqn.2026-11.org.dvsan.lab:host-c"


def assignment(station: Any, aid: int) -> dict[str, Any]:
    return station.get(f"/api/v1/assignments/{aid}").json()  # type: ignore[no-any-return]


def volume(station: Any, device: str) -> dict[str, Any]:
    return next(v for v in station.get("/api/v1/volumes").json() if v["device"] == device)


def moved(p: Partition, by: int = 2048) -> Partition:
    """The same device name over another extent (a repartitioned or replaced disk)."""
    return Partition(p.device, p.disk, p.number, p.start_lba + by, p.length_blocks - by, p.end_lba,
                     p.block_size, (p.length_blocks - by) * p.block_size, p.uid)


def held(u: UnitHarness) -> set[str]:
    return set(u.lio.exports)


def announce_again(u: UnitHarness, n0: int) -> None:
    """The unit announces itself afresh (a reboot): storage info, then the station's push."""
    u.start()
    wait_for(lambda: u.agent.exports_applied > n0)


def test_ep_changed_extent_under_an_assignment_is_flagged_withheld_and_dropped(station):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        r = request(station, "1M")
        assert r.status_code == 201, r.text
        a = r.json()
        dev = a["device"]
        assert held(u) == {a["target_iqn"]} and assignment(station, a["id"])["export_state"] == "exported"
        u.lio.logged_in[a["target_iqn"]] = 1              # the host is logged in
        i = next(i for i, p in enumerate(u.parts) if p.device == dev)
        original = u.parts[i]
        u.parts[i] = moved(original)
        announce_again(u, u.agent.exports_applied)
        v = volume(station, dev)
        assert v["state"] == "changed" and "extent changed" in v["detail"], v
        assert v["start_lba"] == original.start_lba            # the station keeps what the host got
        got = assignment(station, a["id"])
        assert got["export_state"] == "withheld" and "changed" in got["export_detail"]
        assert held(u) == set()                              # dropped even under the session
        # a changed volume is never allocated again, nor exported on its new extent
        r = request(station, "1M", host="host-c", iqn=HOST_C)
        assert r.status_code == 201 and r.json()["device"] != dev
        # the disk is put back: the volume is whole again and its export returns
        u.parts[i] = original
        announce_again(u, u.agent.exports_applied)
        assert volume(station, dev)["state"] == "online"
        assert a["target_iqn"] in held(u)
    finally:
        u.close()


def test_gp_a_free_volume_with_a_new_extent_is_simply_updated(station):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        u.parts[0] = moved(u.parts[0])
        announce_again(u, u.agent.exports_applied)
        v = volume(station, u.parts[0].device)
        assert (v["state"], v["start_lba"]) == ("online", u.parts[0].start_lba)
    finally:
        u.close()


def test_ep_the_unit_refuses_one_export_and_the_station_shows_why(station):
    """Item 4: the unit no longer offers one assigned device; the other export stays and the
    station shows the refused one with the unit's reason."""
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        a1 = request(station, "1M").json()
        a2 = request(station, "1M", host="host-c", iqn=HOST_C).json()
        assert held(u) == {a1["target_iqn"], a2["target_iqn"]}
        gone = a1["device"]
        # the device vanishes between the unit's storage report and the next push
        u.agent.inventory = lambda: [p for p in u.parts if p.device != gone]
        r = request(station, "1M", host="host-d", iqn="iqn.2026-11.org.dvsan.lab:host-d")
        assert r.status_code == 201, r.text                  # the new export was applied
        got = assignment(station, a1["id"])
        assert got["export_state"] == "refused" and "not offered" in got["export_detail"], got
        assert assignment(station, a2["id"])["export_state"] == "exported"
        assert {a2["target_iqn"], r.json()["target_iqn"]} <= held(u)
    finally:
        u.close()


def test_ep_a_missing_volume_is_withheld_and_the_other_export_stays(station):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        a1 = request(station, "1M").json()
        a2 = request(station, "1M", host="host-c", iqn=HOST_C).json()
        u.parts = [p for p in u.parts if p.device != a1["device"]]
        announce_again(u, u.agent.exports_applied)
        assert volume(station, a1["device"])["state"] == "missing"
        got = assignment(station, a1["id"])
        assert got["export_state"] == "withheld" and "missing" in got["export_detail"]
        assert a2["target_iqn"] in held(u)
    finally:
        u.close()


def test_ep_a_refused_new_export_is_undone_and_the_unit_reconciled(station):
    """Item 9: the unit refuses the new export: the request fails with the unit's reason, the
    volume goes back to the pool, and a second push leaves the unit holding nothing of it."""
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        u.agent.inventory = list                             # everything vanished meanwhile
        n0 = u.agent.exports_applied
        r = request(station, "1M")
        assert r.status_code == 409 and "not offered" in r.json()["detail"], r.text
        assert station.get("/api/v1/assignments").json() == []
        wait_for(lambda: u.agent.exports_applied >= n0 + 2)  # the push, then the one after the undo
        assert held(u) == set()
        assert all(v["assigned_to"] is None for v in station.get("/api/v1/volumes").json())
    finally:
        u.close()


def test_gp_release_drops_the_export_even_with_the_host_logged_in(station):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        a = request(station, "1M").json()
        u.lio.logged_in[a["target_iqn"]] = 1
        r = httpx.delete(f"{station.url}/api/v1/assignments/{a['id']}?wait=60", headers=station.auth, timeout=30)
        assert r.status_code == 200 and r.json()["unit_confirmed"], r.text
        assert held(u) == set()
    finally:
        u.close()


def _second_station(first: StationProc, tmp_path: Path, name: str) -> StationProc:
    """Another station process holding the same cluster key (and signing identity) as `first`."""
    st = StationProc(tmp_path / name, free_port(), free_port(socket.SOCK_DGRAM))
    st.data_dir.mkdir(parents=True)
    for f in first.data_dir.iterdir():
        if f.is_file() and not f.name.startswith(("station.db", "station.log", "admin.")):
            shutil.copy2(f, st.data_dir / f.name)
    return st


def test_ep_a_second_station_with_a_fresh_database_unexports_nothing(station, tmp_path):
    """Item 6: a standby station with its own empty database pushes an empty list: refused."""
    u = UnitHarness(station)
    other = _second_station(station, tmp_path, "standby")
    try:
        u.start()
        online(station, 3)
        a = request(station, "1M").json()
        other.start()
        u.agent.station = ("127.0.0.1", other.udp_port)
        u.start()                                          # the unit announces to the standby
        wait_for(lambda: "belongs to pool" in other.log.read_text())
        assert held(u) == {a["target_iqn"]}
        assert other.get("/api/v1/units").json()[0]["name"] == u.agent.name
    finally:
        other.stop()
        u.close()


def test_ep_a_station_restored_from_an_older_backup_unexports_nothing(tmp_path):
    """Item 6: the station's database is restored from a copy older than what the unit applied."""
    st = StationProc(tmp_path / "st", free_port(), free_port(socket.SOCK_DGRAM))
    st.data_dir.mkdir()
    st.start()
    u = UnitHarness(st)
    try:
        u.start()
        online(st, 3)
        request(st, "1M")
        st.stop()
        backup = tmp_path / "backup"
        shutil.copytree(st.data_dir, backup)
        st.start()
        a2 = request(st, "1M", host="host-c", iqn=HOST_C).json()
        assert a2["target_iqn"] in held(u)
        st.stop()
        for f in st.data_dir.glob("station.db*"):
            f.unlink()
        for f in backup.glob("station.db*"):
            shutil.copy2(f, st.data_dir / f.name)
        st.start()
        n0 = u.agent.exports_applied
        u.start()
        wait_for(lambda: "generation" in st.log.read_text() and "refused" in st.log.read_text())
        assert u.agent.exports_applied == n0
        assert a2["target_iqn"] in held(u)                 # the newer export is still there
    finally:
        st.stop()
        u.close()


def test_ep_a_degraded_unit_gets_no_new_allocation(station):
    """Item 7: a unit whose kernel change is stuck says so in its heartbeats; allocation avoids it."""
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        u.agent.health = ("degraded", "a change has run for over 60 s (a hung disk?)")
        u.call(u.agent.endpoint.send(u.agent.station, MsgType.HEARTBEAT,
                                     {"unit": u.agent.name, "health": "degraded",
                                      "health_detail": u.agent.health[1]}))
        unit = station.get(f"/api/v1/units/{u.agent.name}").json()
        assert (unit["health"], unit["health_detail"]) == ("degraded", u.agent.health[1])
        r = request(station, "1M")
        assert r.status_code == 409, r.text
        u.call(u.agent.endpoint.send(u.agent.station, MsgType.HEARTBEAT,
                                     {"unit": u.agent.name, "health": "ok"}))
        assert request(station, "1M").status_code == 201
    finally:
        u.close()


@pytest.mark.parametrize("bad", [{"health": "great"}, {"health_detail": 7}])
def test_ep_malformed_health_in_a_heartbeat_is_refused(station, bad):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        ack = u.call(u.agent.endpoint.send(u.agent.station, MsgType.HEARTBEAT, {"unit": u.agent.name, **bad}))
        assert ack["status"] == "error" and "health" in ack["error"]
        assert station.get(f"/api/v1/units/{u.agent.name}").json()["health"] == "ok"
    finally:
        u.close()



class SlowLio(MemoryLio):
    """Applies a new export only after the station has given up waiting for it."""

    def __init__(self, delay: float):
        super().__init__()
        self.delay = delay

    def apply(self, actions):  # type: ignore[no-untyped-def]
        if any(isinstance(a, CreateExport) for a in actions):
            time.sleep(self.delay)
        super().apply(actions)


def test_ep_an_export_applied_after_the_station_gave_up_is_dropped_by_the_undo_push(station, monkeypatch):
    """Issue 15 item 9: the unit applies the new export, but too late: the station has answered 503
    and taken the assignment back. Its second push makes the unit drop what it applied, so station
    and unit agree (the volume free, the unit holding nothing) without waiting for a report."""
    station.stop()
    monkeypatch.setenv("DVSAN_EXPORT_TIMEOUT", "1.5")
    station.start()
    u = UnitHarness(station)
    u.agent.lio = u.lio = SlowLio(4.0)
    try:
        u.start()
        online(station, 3)
        r = request(station, "1GiB")
        assert r.status_code == 503, r.text
        assert "returned to the pool" in r.json()["detail"]
        # the late apply did make the export ...
        wait_for(lambda: any(isinstance(a, CreateExport) for a in u.lio.applied), 20)
        # ... and the undo's push removes it
        wait_for(lambda: not u.lio.exports, 30)
        assert station.get("/api/v1/assignments").json() == []
        assert all(v["assigned_to"] is None and v["wipe_state"] == "clean" for v in volumes(station))
    finally:
        u.close()
