"""Mirrors, member replacement and host takeover (issue 8) through the real station process (its
SQLite file, REST over loopback) with real unit agent protocol loops (in-memory LIO; files that
stand in for partitions where a wipe must really zero something). The data path (mdadm over two
real iSCSI sessions) is proven in tests/lab."""

import asyncio
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dvsan_lab.events import Stream
from tests.component.conftest import StationProc, free_port
from tests.component.test_concurrent_allocation import parts
from tests.component.test_host_agent import enrol_host
from tests.component.test_station_autoconf import MiB, UnitHarness, online, volumes, wait_for
from tests.component.test_tasks_api import user_token
from tests.component.test_two_units import recording
from tests.component.test_wipe_release import unit_with_files, zeros

IQN_B = "iqn.2026-11.org.dvsan.lab:host-b"
IQN_C = "iqn.2026-11.org.dvsan.lab:host-c"


def api(station: Any, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    return httpx.request(method, station.url + "/api/v1" + path, headers=headers or station.auth, timeout=90, **kw)


def mirror(station: Any, size: Any = "32M", host: str = "host-b", iqn: str = IQN_B,
           headers: dict[str, str] | None = None) -> httpx.Response:
    return api(station, "POST", "/mirrors?wait=60", headers, json={
        "host": host, "initiator_iqn": iqn, "host_address": "127.0.0.2", "size_bytes": size})


def assignments(station: Any) -> list[dict[str, Any]]:
    return api(station, "GET", "/assignments").json()  # type: ignore[no-any-return]


def initiators(u: UnitHarness) -> dict[str, tuple[str, ...]]:
    return {t: e.initiators for t, e in u.lio.exports.items()}


class Mute:
    """A unit agent that takes EXPORTS but does not answer them while `on` (a unit gone quiet)."""

    def __init__(self, u: UnitHarness):
        self.on = False
        apply = u.agent.apply_exports

        async def maybe(body: dict[str, Any]) -> dict[str, Any]:
            while self.on:                    # answered once unmuted (if anyone still waits)
                await asyncio.sleep(0.05)
            return await apply(body)
        u.agent.apply_exports = maybe  # type: ignore[method-assign]


@pytest.fixture
def quick_station(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StationProc]:
    """A station that waits 2 s for a unit's answer to a push (the default is 15 s)."""
    monkeypatch.setenv("DVSAN_EXPORT_TIMEOUT", "2")
    st = StationProc(tmp_path / "station", free_port(), free_port(socket.SOCK_DGRAM))
    st.data_dir.mkdir()
    st.start()
    yield st
    st.stop()


def kill_and_restart(st: StationProc) -> None:
    assert st.proc is not None
    st.proc.send_signal(signal.SIGKILL)
    st.proc.wait(10)
    st.start()


# --- making and releasing a mirror ----------------------------------------------------------------

def test_gp_a_mirror_is_two_volumes_on_two_units_exported_to_its_host_then_released(station):
    a, b = UnitHarness(station, "unit-a", parts=parts("vdy", 3)), UnitHarness(station, "unit-b", parts=parts("vdx", 3))
    try:
        a.start()
        b.start()
        online(station, 6)
        r = mirror(station)
        assert r.status_code == 201, r.text
        m = r.json()
        assert r.headers["location"] == f"/api/v1/mirrors/{m['id']}" and r.headers["dvsan-task"].isdigit()
        assert (m["host"], m["requested_bytes"], m["size_bytes"], m["state"]) == ("host-b", 32 * MiB, 64 * MiB, "unknown")
        units = [x["unit"] for x in m["members"]]
        assert sorted(units) == ["unit-a", "unit-b"], units           # never two on one unit
        assert [x["id"] for x in m["members"]] == sorted(x["id"] for x in m["members"])
        for x in m["members"]:
            assert (x["mirror_id"], x["member_state"], x["export_state"], x["fenced"]) == (m["id"], "unknown", "exported", False)
            assert x["chap_user"] and x["chap_secret"]
        # each unit holds its member, for host-b only
        for u, x in zip((a, b), sorted(m["members"], key=lambda x: x["unit"]), strict=True):
            assert initiators(u) == {x["target_iqn"]: (IQN_B,)}
        assert api(station, "GET", f"/mirrors/{m['id']}").json() == m
        assert [x["id"] for x in api(station, "GET", "/mirrors").json()] == [m["id"]]
        assert api(station, "GET", "/mirrors?host=host-c").json() == []
        assert {x["mirror_id"] for x in assignments(station)} == {m["id"]}
        # a second mirror takes the next pair
        m2 = mirror(station, host="host-c", iqn=IQN_C).json()
        assert sorted(x["unit"] for x in m2["members"]) == ["unit-a", "unit-b"]
        # released: both exports dropped (under a live session too), both volumes owe their wipe
        a.lio.logged_in[m["members"][0]["target_iqn"]] = 1
        rel = api(station, "DELETE", f"/mirrors/{m['id']}?wait=60")
        assert rel.status_code == 200, rel.text
        out = rel.json()
        assert out["id"] == m["id"] and [x["id"] for x in out["members"]] == [x["id"] for x in m["members"]]
        assert all(x["unit_confirmed"] for x in out["members"])
        held = {t for u in (a, b) for t in u.lio.exports}
        assert held == {x["target_iqn"] for x in m2["members"]}
        assert api(station, "GET", f"/mirrors/{m['id']}").status_code == 404
        gone = {x["volume_id"] for x in m["members"]}
        assert all(v["assigned_to"] is None and v["wipe_state"] != "clean" for v in volumes(station) if v["id"] in gone)
    finally:
        a.close()
        b.close()


def test_ep_a_mirror_needs_two_units_409_and_nothing_changes(station):
    a, b = UnitHarness(station, "unit-a", parts=parts("vdy", 3)), UnitHarness(station, "unit-b", parts=parts("vdx", 1, 16 * MiB))
    try:
        a.start()
        b.start()
        online(station, 4)
        before = volumes(station)
        r = mirror(station, "32M")
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert detail.startswith("no two units each have a free volume of at least 32.0 MiB"), detail
        assert "unit-a: largest 64.0 MiB" in detail and "unit-b: largest 16.0 MiB" in detail
        assert volumes(station) == before and api(station, "GET", "/mirrors").json() == []
        assert a.lio.exports == {} and b.lio.exports == {}
        # bad bodies: 422, no task
        good = {"host": "host-b", "initiator_iqn": IQN_B, "host_address": "127.0.0.2", "size_bytes": 1 * MiB}
        for bad in ({**good, "size_bytes": "lots"}, {**good, "size_bytes": 0}, {**good, "host": "Host B"},
                    {**good, "host_address": "nowhere"}, {**good, "size": "1M"},
                    {k: v for k, v in good.items() if k != "size_bytes"}):
            assert api(station, "POST", "/mirrors?wait=10", json=bad).status_code == 422, bad
        assert [t["kind"] for t in api(station, "GET", "/tasks").json()] == ["assign"]
    finally:
        a.close()
        b.close()


def test_ep_a_mirror_one_unit_does_not_confirm_is_undone_both_volumes_back(station):
    a, b = UnitHarness(station, "unit-a", parts=parts("vdy", 2)), UnitHarness(station, "unit-b", parts=parts("vdx", 2))
    try:
        a.start()
        b.start()
        online(station, 4)
        b.agent.inventory = list                    # unit-b's devices vanished: it refuses the export
        n0 = a.agent.exports_applied
        r = mirror(station)
        assert r.status_code == 409, r.text
        assert "unit-b refused the export" in r.json()["detail"] and "both volumes were returned to the pool" in r.json()["detail"]
        assert assignments(station) == [] and api(station, "GET", "/mirrors").json() == []
        # unit-a, which had made its export, is pushed again and drops it
        wait_for(lambda: a.agent.exports_applied >= n0 + 2)
        assert a.lio.exports == {} and b.lio.exports == {}
        assert all(v["assigned_to"] is None and v["wipe_state"] == "clean" for v in volumes(station))
        b.agent.inventory = lambda: list(b.parts)
        assert mirror(station).status_code == 201
    finally:
        a.close()
        b.close()


def test_ep_a_host_token_asks_for_its_own_mirror_only(station, tmp_path):
    enrol_host(station, tmp_path, "host-b", IQN_B)
    hb = {"Authorization": f"Bearer {(tmp_path / 'host-b.token').read_text().strip()}"}
    viewer = user_token(station, tmp_path, "vera", "viewer")
    a, b = UnitHarness(station, "unit-a", parts=parts("vdy", 2)), UnitHarness(station, "unit-b", parts=parts("vdx", 2))
    try:
        a.start()
        b.start()
        online(station, 4)
        assert mirror(station, host="host-c", iqn=IQN_C, headers=hb).status_code == 403
        assert mirror(station, iqn=IQN_C, headers=hb).status_code == 403          # not its initiator
        assert mirror(station, headers=viewer).status_code == 403
        r = mirror(station, headers=hb)
        assert r.status_code == 201 and r.json()["members"][0]["chap_secret"], r.text
        other = mirror(station, host="host-c", iqn=IQN_C).json()
        assert [x["id"] for x in api(station, "GET", "/mirrors", hb).json()] == [r.json()["id"]]
        assert api(station, "GET", f"/mirrors/{other['id']}", hb).status_code == 404
        assert api(station, "DELETE", f"/mirrors/{other['id']}", hb).status_code == 404
        assert api(station, "DELETE", f"/mirrors/{other['id']}", viewer).status_code == 403
        # a viewer reads, without the secrets
        seen = api(station, "GET", f"/mirrors/{other['id']}", viewer).json()
        assert seen["members"][0]["chap_secret"] is None
        assert api(station, "DELETE", f"/mirrors/{r.json()['id']}?wait=60", hb).status_code == 200
    finally:
        a.close()
        b.close()


# --- health reports -------------------------------------------------------------------------------

def test_gp_a_health_report_by_its_host_is_kept_and_published_others_refused(station, tmp_path):
    enrol_host(station, tmp_path, "host-b", IQN_B)
    enrol_host(station, tmp_path, "host-c", IQN_C)
    hb = {"Authorization": f"Bearer {(tmp_path / 'host-b.token').read_text().strip()}"}
    hc = {"Authorization": f"Bearer {(tmp_path / 'host-c.token').read_text().strip()}"}
    viewer = user_token(station, tmp_path, "vera", "viewer")
    a, b = UnitHarness(station, "unit-a", parts=parts("vdy", 2)), UnitHarness(station, "unit-b", parts=parts("vdx", 2))
    try:
        a.start()
        b.start()
        online(station, 4)
        m = mirror(station).json()
        m1, m2 = (x["id"] for x in m["members"])
        path = f"/mirrors/{m['id']}/health"
        seen, hidden = Stream(station, hb), Stream(station, hc)
        report = {"state": "resyncing", "sync_percent": 42.5, "detail": "recovery",
                  "members": {str(m1): "active", str(m2): "resyncing"}}
        r = api(station, "PUT", path, hb, json=report)
        assert r.status_code == 200, r.text
        got = r.json()
        assert (got["state"], got["sync_percent"], got["detail"]) == ("resyncing", 42.5, "recovery")
        assert got["reported_at"] is not None
        assert [x["member_state"] for x in got["members"]] == ["active", "resyncing"]
        assert {x["id"]: x["member_state"] for x in assignments(station)} == {m1: "active", m2: "resyncing"}
        # the change is an event for its host (and staff), not for another host
        ev = wait_for(lambda: [d for k, _, d in list(seen.events) if k == "mirror"])
        assert ev[0] == {"id": m["id"], "host": "host-b", "state": "resyncing", "sync_percent": 42.5,
                         "detail": "recovery", "members": {str(m1): "active", str(m2): "resyncing"}}
        # refused: another host (404, it learns nothing), a viewer (403), bad bodies and unknown
        # members (422); none changes anything
        assert api(station, "PUT", path, hc, json={"state": "failed"}).status_code == 404
        assert api(station, "PUT", path, viewer, json={"state": "failed"}).status_code == 403
        assert api(station, "PUT", "/mirrors/9999/health", hb, json={"state": "failed"}).status_code == 404
        for bad in ({"state": "great"}, {"state": "clean", "sync_percent": 101}, {"state": "clean", "extra": 1},
                    {"state": "clean", "members": {str(m1): "happy"}}, {"state": "clean", "members": {"x": "active"}},
                    {"members": {}}, {"state": "clean", "detail": "x" * 300}):
            assert api(station, "PUT", path, hb, json=bad).status_code == 422, bad
        r = api(station, "PUT", path, hb, json={"state": "clean", "members": {str(m1): "active", "999999": "active"}})
        assert r.status_code == 422 and "999999" in r.json()["detail"] and "not members" in r.json()["detail"]
        now = api(station, "GET", f"/mirrors/{m['id']}").json()
        assert (now["state"], [x["member_state"] for x in now["members"]]) == ("resyncing", ["active", "resyncing"])
        # an operator may report too; the last writer wins
        r = api(station, "PUT", path, json={"state": "clean", "sync_percent": 100,
                                            "members": {str(m1): "active", str(m2): "active"}})
        assert r.status_code == 200 and r.json()["state"] == "clean" and r.json()["detail"] is None
        assert [k for k, _, _ in list(hidden.events) if k == "mirror"] == []
        seen.close()
        hidden.close()
        log = api(station, "GET", "/audit?limit=100").json()
        puts = [x for x in log if x["action"] == "PUT /api/v1/mirrors/{mirror_id}/health"]
        assert sorted(x["outcome"] for x in puts).count(200) == 2 and 404 in {x["outcome"] for x in puts}
    finally:
        a.close()
        b.close()


# --- replacing a failed member --------------------------------------------------------------------

def three_units(station: Any, root: Path) -> tuple[UnitHarness, UnitHarness, UnitHarness]:
    """unit-z (files: 8, 16, 32 MiB), unit-a (3 x 64 MiB), unit-c (3 x 128 MiB): a 16 MiB mirror
    goes on unit-z and unit-a, and unit-c is the spare."""
    z = unit_with_files(station, root)
    a = UnitHarness(station, "unit-a", parts=parts("vdy", 3))
    c = UnitHarness(station, "unit-c", parts=parts("vdx", 3, 128 * MiB))
    for u in (z, a, c):
        u.start()
    online(station, 9)
    return z, a, c


def test_gp_replace_takes_a_unit_holding_no_member_and_the_old_one_is_dropped_and_wiped(station, tmp_path):
    disks = tmp_path / "disks"
    z, a, c = three_units(station, disks)
    try:
        m = mirror(station, 12 * MiB).json()
        old = next(x for x in m["members"] if x["unit"] == "unit-z")
        keep = next(x for x in m["members"] if x["unit"] == "unit-a")
        assert old["device"] == "vdz2"
        # unit-z fails: its member is the one to replace
        assert z.stop()
        wait_for(lambda: api(station, "GET", "/units/unit-z").json()["state"] == "offline")
        r = api(station, "POST", f"/mirrors/{m['id']}/replace?wait=60", json={})
        assert r.status_code == 200, r.text
        t = r.json()
        assert (t["kind"], t["object"], t["state"]) == ("replace", f"/mirrors/{m['id']}", "succeeded"), t
        res = t["result"]
        assert (res["mirror"], res["old_member"], res["unit"]) == (m["id"], old["id"], "unit-c")
        assert res["old_unit_confirmed"] is False and res["old_wipe_state"] == "needed"
        now = api(station, "GET", f"/mirrors/{m['id']}").json()
        assert [x["id"] for x in now["members"]] == [keep["id"], res["new_member"]]
        new = now["members"][1]
        assert (new["unit"], new["device"], new["host"], new["initiator_iqn"]) == ("unit-c", res["device"], "host-b", IQN_B)
        assert new["chap_user"] not in (old["chap_user"], keep["chap_user"]) and new["export_state"] == "exported"
        assert initiators(c) == {new["target_iqn"]: (IQN_B,)}
        # the old member's volume is nobody's and owes its wipe: never free before it
        v = next(x for x in volumes(station) if x["id"] == old["volume_id"])
        assert (v["assigned_to"], v["wipe_state"]) == (None, "needed")
        # unit-z comes back: it drops the stale export (never re-exported) and zeroes the volume
        z.close()
        z = unit_with_files(station, disks, fill=False)
        n0 = z.agent.exports_applied
        z.lio._exports[old["target_iqn"]] = _stale(old)          # what its LIO kept (a link that came back)
        z.lio.logged_in[old["target_iqn"]] = 1                                       # host-b still logged in
        z.start()
        wait_for(lambda: z.agent.exports_applied > n0)
        assert old["target_iqn"] not in z.lio.exports
        wait_for(lambda: next(x for x in volumes(station) if x["id"] == old["volume_id"])["wipe_state"] == "clean", 30)
        assert zeros(disks / "vdz2")
    finally:
        for u in (z, a, c):
            u.close()


def _stale(a: dict[str, Any]) -> Any:
    """The export a unit's LIO still holds after a failure (the station no longer wants it)."""
    from dvsan.model import Export, Extent

    return Export(device=a["device"], target_iqn=a["target_iqn"], initiators=(a["initiator_iqn"],), lun=0,
                  wwn=a["wwn"], extent=Extent(a["start_lba"], a["end_lba"] - a["start_lba"] + 1, a["block_size"], ""))


def test_ep_replace_refusals(station, tmp_path):
    enrol_host(station, tmp_path, "host-b", IQN_B)
    hb = {"Authorization": f"Bearer {(tmp_path / 'host-b.token').read_text().strip()}"}
    viewer = user_token(station, tmp_path, "vera", "viewer")
    a, b = UnitHarness(station, "unit-a", parts=parts("vdy", 2)), UnitHarness(station, "unit-b", parts=parts("vdx", 2))
    try:
        a.start()
        b.start()
        online(station, 4)
        m = mirror(station).json()
        path = f"/mirrors/{m['id']}/replace?wait=30"
        r = api(station, "POST", path, json={})
        assert r.status_code == 409 and "no failed member" in r.json()["detail"], r.text
        r = api(station, "POST", path)                                   # no body: the same
        assert r.status_code == 409, r.text
        assert api(station, "POST", path, hb, json={}).status_code == 403
        assert api(station, "POST", path, viewer, json={}).status_code == 403
        assert api(station, "POST", "/mirrors/9999/replace", json={}).status_code == 404
        r = api(station, "POST", path, json={"member": 999999})
        assert r.status_code == 422 and "not a member" in r.json()["detail"]
        assert api(station, "POST", path, json={"member": "x"}).status_code == 422
        # a named member, but no third unit to put its replacement on: 409, nothing changed
        r = api(station, "POST", path, json={"member": m["members"][0]["id"]})
        assert r.status_code == 409 and "holding no member" in r.json()["detail"], r.text
        assert api(station, "GET", f"/mirrors/{m['id']}").json()["members"] == m["members"]
        assert [t["kind"] for t in api(station, "GET", "/tasks?kind=replace").json()] == ["replace"]
    finally:
        a.close()
        b.close()


@pytest.mark.station_args("--auto-replace")
def test_gp_auto_replace_starts_one_task_when_its_host_reports_a_member_faulty_on_a_down_unit(station, tmp_path):
    enrol_host(station, tmp_path, "host-b", IQN_B)
    hb = {"Authorization": f"Bearer {(tmp_path / 'host-b.token').read_text().strip()}"}
    z, a, c = three_units(station, tmp_path / "disks")
    try:
        m = mirror(station, 12 * MiB, headers=hb).json()
        old = next(x for x in m["members"] if x["unit"] == "unit-z")
        keep = next(x for x in m["members"] if x["unit"] == "unit-a")
        report = {"state": "degraded", "members": {str(old["id"]): "faulty", str(keep["id"]): "active"}}
        # faulty on a unit that is online: an operator decides, the station starts nothing
        assert api(station, "PUT", f"/mirrors/{m['id']}/health", hb, json=report).status_code == 200
        assert api(station, "GET", "/tasks?kind=replace").json() == []
        mute = Mute(c)
        mute.on = True                       # the spare unit's export hangs: the task stays running
        assert z.stop()
        wait_for(lambda: api(station, "GET", "/units/unit-z").json()["state"] == "offline")
        for _ in range(3):                   # the host reports again and again
            assert api(station, "PUT", f"/mirrors/{m['id']}/health", hb, json=report).status_code == 200
        tasks = api(station, "GET", "/tasks?kind=replace").json()
        assert len(tasks) == 1 and tasks[0]["requested_by"] == "station", tasks
        mute.on = False
        done = api(station, "GET", f"/tasks/{tasks[0]['id']}?wait=60").json()
        assert done["state"] == "succeeded", done
        assert done["result"]["unit"] == "unit-c" and done["result"]["old_member"] == old["id"]
        assert len(api(station, "GET", "/tasks?kind=replace").json()) == 1
    finally:
        for u in (z, a, c):
            u.close()


def test_ep_station_killed_mid_replace_task_interrupted_then_rerun_completes(quick_station, tmp_path, monkeypatch):
    station = quick_station
    z, a, c = three_units(station, tmp_path / "disks")
    try:
        m = mirror(station, 12 * MiB).json()
        old = next(x for x in m["members"] if x["unit"] == "unit-z")
        assert z.stop()
        wait_for(lambda: api(station, "GET", "/units/unit-z").json()["state"] == "offline")
        mute = Mute(c)
        mute.on = True
        t = api(station, "POST", f"/mirrors/{m['id']}/replace", json={}).json()
        # the new member is recorded, its export not yet confirmed: the station dies
        wait_for(lambda: len(api(station, "GET", f"/mirrors/{m['id']}").json()["members"]) == 3)
        kill_and_restart(station)
        got = api(station, "GET", f"/tasks/{t['id']}").json()
        assert got["state"] == "interrupted", got
        held = api(station, "GET", f"/mirrors/{m['id']}").json()["members"]
        assert len({x["volume_id"] for x in held}) == 3 and {x["host"] for x in held} == {"host-b"}
        mute.on = False
        r = api(station, "POST", f"/mirrors/{m['id']}/replace?wait=60", json={})
        assert r.status_code == 200 and r.json()["state"] == "succeeded", r.text
        res = r.json()["result"]
        assert res["old_member"] == old["id"] and res["unit"] == "unit-c"
        now = api(station, "GET", f"/mirrors/{m['id']}").json()["members"]
        assert len(now) == 2 and sorted(x["unit"] for x in now) == ["unit-a", "unit-c"]    # not a third
        assert all(x["export_state"] == "exported" for x in now)
        v = next(x for x in volumes(station) if x["id"] == old["volume_id"])
        assert (v["assigned_to"], v["wipe_state"]) == (None, "needed")
    finally:
        for u in (z, a, c):
            u.close()


# --- host takeover --------------------------------------------------------------------------------

def takeover_setup(station: Any, tmp_path: Path) -> tuple[UnitHarness, UnitHarness, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """unit-a and unit-b; host-b holds a plain volume and a mirror, logged in to all three; host-c
    (enrolled) holds one volume at its own address."""
    enrol_host(station, tmp_path, "host-c", IQN_C)
    a, b = UnitHarness(station, "unit-a", parts=parts("vdy", 3)), UnitHarness(station, "unit-b", parts=parts("vdx", 3))
    a.start()
    b.start()
    online(station, 6)
    plain = api(station, "POST", "/assignments?wait=60", json={
        "host": "host-b", "initiator_iqn": IQN_B, "host_address": "127.0.0.2", "size": "32M"}).json()
    m = mirror(station).json()
    spare = api(station, "POST", "/assignments?wait=60", json={
        "host": "host-c", "initiator_iqn": IQN_C, "host_address": "127.0.0.3", "size": "32M"}).json()
    for x in [plain, *m["members"]]:
        for u in (a, b):
            if x["target_iqn"] in u.lio.exports:
                u.lio.logged_in[x["target_iqn"]] = 1
    return a, b, plain, m, spare


def check_moved(station: Any, a: UnitHarness, b: UnitHarness, before: list[dict[str, Any]]) -> None:
    """Every assignment of host-b now host-c's, with fresh CHAP; each unit exports it to host-c only."""
    now = {x["id"]: x for x in assignments(station)}
    for x in before:
        y = now[x["id"]]
        assert (y["host"], y["initiator_iqn"], y["host_address"], y["fenced"]) == ("host-c", IQN_C, "127.0.0.3", False)
        assert y["chap_user"] != x["chap_user"] and y["chap_secret"] != x["chap_secret"]
        assert y["export_state"] == "exported" and y["volume_id"] == x["volume_id"]
    held = {**initiators(a), **initiators(b)}
    assert all(v == (IQN_C,) for v in held.values()), held     # no volume held by host-b any more
    assert {x["host"] for x in now.values()} == {"host-c"}


def test_gp_takeover_fences_at_every_unit_then_moves_everything_to_the_spare_host(station, tmp_path):
    a, b, plain, m, spare = takeover_setup(station, tmp_path)
    sent = {"unit-a": recording(a), "unit-b": recording(b)}
    try:
        before = [plain, *m["members"]]
        r = api(station, "POST", "/hosts/host-b/takeover?wait=60", json={"to": "host-c"})
        assert r.status_code == 200, r.text
        t = r.json()
        assert (t["kind"], t["object"], t["state"], t["host"]) == ("takeover", "/hosts/host-b", "succeeded", "host-b")
        res = t["result"]
        assert (res["from"], res["to"], res["mirrors"], res["unconfirmed"]) == ("host-b", "host-c", [m["id"]], {})
        assert sorted(res["assignments"]) == sorted(x["id"] for x in before)
        # step 1: each unit was told to drop host-b's targets (under its live sessions) and
        # was sent none of them, before any was sent for host-c
        for name, u in (("unit-a", a), ("unit-b", b)):
            mine = {x["target_iqn"] for x in before if x["unit"] == name}
            fence = next(body for body in sent[name] if mine <= set(body["drop"]))
            assert not mine & {e["target_iqn"] for e in fence["exports"]}
            assert sent[name].index(fence) < max(i for i, body in enumerate(sent[name])
                                                 if mine & {e["target_iqn"] for e in body["exports"]})
        check_moved(station, a, b, before)
        assert api(station, "GET", f"/mirrors/{m['id']}").json()["host"] == "host-c"
        assert next(x for x in assignments(station) if x["id"] == spare["id"])["chap_user"] == spare["chap_user"]
        # nothing left to take over: a second run moves nothing
        again = api(station, "POST", "/hosts/host-b/takeover?wait=60", json={"to": "host-c"}).json()
        assert again["state"] == "succeeded" and again["result"]["assignments"] == []
    finally:
        a.close()
        b.close()


def test_ep_takeover_refusals(station, tmp_path):
    viewer = user_token(station, tmp_path, "vera", "viewer")
    a, b, _plain, _m, spare = takeover_setup(station, tmp_path)
    hc = {"Authorization": f"Bearer {(tmp_path / 'host-c.token').read_text().strip()}"}
    try:
        path = "/hosts/host-b/takeover?wait=30"
        assert api(station, "POST", path, viewer, json={"to": "host-c"}).status_code == 403
        assert api(station, "POST", path, hc, json={"to": "host-c"}).status_code == 403
        r = api(station, "POST", path, json={"to": "host-x"})
        assert r.status_code == 404 and "host-x" in r.json()["detail"]
        r = api(station, "POST", "/hosts/host-c/takeover?wait=30", json={"to": "host-c"})
        assert r.status_code == 409 and "its own storage" in r.json()["detail"]
        for bad in ({}, {"to": "Host C"}, {"to": "host-c", "force": True}):
            assert api(station, "POST", path, json=bad).status_code == 422, bad
        assert api(station, "GET", "/tasks?kind=takeover").json() == []
        assert {x["host"] for x in assignments(station) if x["id"] != spare["id"]} == {"host-b"}
        assert not any(x["fenced"] for x in assignments(station))
    finally:
        a.close()
        b.close()


def test_ep_takeover_a_unit_silent_during_fencing_fails_leaving_host_b_fenced_then_rerun_completes(quick_station, tmp_path):
    station = quick_station
    a, b, plain, m, _spare = takeover_setup(station, tmp_path)
    mute = Mute(b)
    try:
        before = [plain, *m["members"]]
        mute.on = True
        r = api(station, "POST", "/hosts/host-b/takeover?wait=60", json={"to": "host-c"})
        assert r.status_code == 503, r.text
        assert "not confirmed by unit(s) unit-b" in r.json()["detail"] and "stay fenced" in r.json()["detail"]
        t = api(station, "GET", "/tasks?kind=takeover").json()[0]
        assert t["state"] == "failed"
        now = {x["id"]: x for x in assignments(station)}
        assert all(now[x["id"]]["fenced"] and now[x["id"]]["host"] == "host-b" for x in before)
        # unit-a, which answered, no longer exports anything to host-b
        assert all(v != (IQN_B,) for v in initiators(a).values())
        # host-b (alive after all?) cannot release what is fenced, nor is its mirror changed
        hb = {"Authorization": f"Bearer {enrol_host(station, tmp_path, 'host-b', IQN_B).read_text().strip()}"}
        r = api(station, "DELETE", f"/assignments/{plain['id']}?wait=30", hb)
        assert r.status_code == 409 and "fenced" in r.json()["detail"], r.text
        r = api(station, "DELETE", f"/mirrors/{m['id']}?wait=30", hb)
        assert r.status_code == 409 and "fenced" in r.json()["detail"], r.text
        r = api(station, "POST", f"/mirrors/{m['id']}/replace?wait=30", json={"member": m["members"][0]["id"]})
        assert r.status_code == 409 and "fenced" in r.json()["detail"], r.text
        mute.on = False
        r = api(station, "POST", "/hosts/host-b/takeover?wait=60", json={"to": "host-c"})
        assert r.status_code == 200 and r.json()["state"] == "succeeded", r.text
        check_moved(station, a, b, before)
    finally:
        a.close()
        b.close()


def test_ep_station_killed_mid_takeover_task_interrupted_nothing_held_twice_rerun_completes(quick_station, tmp_path):
    station = quick_station
    a, b, plain, m, _spare = takeover_setup(station, tmp_path)
    mute = Mute(b)
    try:
        before = [plain, *m["members"]]
        mute.on = True
        t = api(station, "POST", "/hosts/host-b/takeover", json={"to": "host-c"}).json()
        wait_for(lambda: all(x["fenced"] for x in assignments(station) if x["host"] == "host-b"))
        kill_and_restart(station)
        got = api(station, "GET", f"/tasks/{t['id']}").json()
        assert got["state"] == "interrupted", got
        now = assignments(station)
        assert {x["host"] for x in now if x["id"] in {y["id"] for y in before}} == {"host-b"}
        assert all(x["fenced"] for x in now if x["host"] == "host-b")
        mute.on = False
        r = api(station, "POST", "/hosts/host-b/takeover?wait=60", json={"to": "host-c"})
        assert r.status_code == 200 and r.json()["state"] == "succeeded", r.text
        check_moved(station, a, b, before)
    finally:
        a.close()
        b.close()


def test_gp_a_fenced_assignment_is_withheld_on_a_units_next_report(quick_station, tmp_path):
    """A unit that comes back (a reboot) while host-b is fenced gets its drop, not its export."""
    station = quick_station
    a, b, _plain, _m, _spare = takeover_setup(station, tmp_path)
    mute = Mute(b)
    try:
        mute.on = True
        assert api(station, "POST", "/hosts/host-b/takeover?wait=60", json={"to": "host-c"}).status_code == 503
        mute.on = False
        b.lio.logged_in.clear()
        n0 = b.agent.exports_applied
        b.start()
        wait_for(lambda: b.agent.exports_applied > n0)
        assert all(v != (IQN_B,) for v in initiators(b).values())
        fenced = [x for x in assignments(station) if x["fenced"] and x["unit"] == "unit-b"]
        assert fenced and all(x["export_state"] == "withheld" and "fenced" in x["export_detail"] for x in fenced)
    finally:
        a.close()
        b.close()


def test_gp_the_host_agents_client_speaks_the_stations_mirror_routes(station, tmp_path):
    """host_agent/client.py (its request, health report and release of a mirror) against the real
    station: both sides of the issue 8 contract agree."""
    from host_agent.client import StationClient

    token = enrol_host(station, tmp_path, "host-b", IQN_B).read_text().strip()
    a, b = UnitHarness(station, "unit-a", parts=parts("vdy", 2)), UnitHarness(station, "unit-b", parts=parts("vdx", 2))
    client = StationClient(station.url, token=token)
    try:
        a.start()
        b.start()
        online(station, 4)
        m = client.request_mirror("host-b", IQN_B, "127.0.0.2", 32 * MiB)
        assert sorted(x["unit"] for x in m["members"]) == ["unit-a", "unit-b"] and m["host"] == "host-b"
        assert [x["id"] for x in client.mirrors()] == [m["id"]]
        ids = [str(x["id"]) for x in m["members"]]
        got = client.report_mirror_health(m["id"], "resyncing", {ids[0]: "active", ids[1]: "resyncing"}, 12.5, "recover")
        assert (got["state"], got["sync_percent"]) == ("resyncing", 12.5)
        out = client.release_mirror(m["id"])
        assert out["id"] == m["id"] and len(out["members"]) == 2 and all(x["unit_confirmed"] for x in out["members"])
        assert client.mirrors() == [] and a.lio.exports == {} and b.lio.exports == {}
    finally:
        client.close()
        a.close()
        b.close()
