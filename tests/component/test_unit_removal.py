"""Removing a unit from the pool (DELETE /api/v1/units/NAME, a `remove` task) over the real
station process: refused while the unit is online, holds an assignment or owes a wipe, each
refusal saying what is in the way and changing nothing; a removed unit is gone from the pool, and
rejoins with fresh volumes (and its EXPORTS still taken: the generation it pinned is kept) when
its agent announces it again."""

import asyncio
from pathlib import Path

import httpx

from tests.component.test_concurrent_allocation import parts
from tests.component.test_station_autoconf import UnitHarness, online, request, volumes, wait_for
from tests.component.test_tasks_api import user_token
from tests.component.test_wipe_release import unit_with_files


def remove(station, name: str, headers: dict[str, str] | None = None, wait: bool = True) -> httpx.Response:
    return httpx.delete(f"{station.url}/api/v1/units/{name}" + ("?wait=60" if wait else ""),
                        headers=headers or station.auth, timeout=90)


def unit_states(station) -> dict[str, str]:
    return {u["name"]: u["state"] for u in station.get("/api/v1/units").json()}


def test_gp_a_stopped_unit_is_removed_then_rejoins_with_new_volumes_and_exports_again(station, tmp_path: Path):
    a = unit_with_files(station, tmp_path / "disks")              # unit-z: 3 file-backed volumes
    b = UnitHarness(station, "unit-b", parts=parts("vdx", 1))
    try:
        a.start()
        b.start()
        online(station, 4)
        # some history on unit-z: each assignment and release is a new generation of its exports
        for _ in range(3):
            got = request(station, "32M", "host-c", "iqn.2026-11.org.dvsan.lab:host-c").json()
            assert got["unit"] == "unit-z", got
            rel = httpx.delete(f"{station.url}/api/v1/assignments/{got['id']}?wait=60", headers=station.auth, timeout=90)
            assert rel.status_code == 200, rel.text
            wait_for(lambda: all(v["wipe_state"] == "clean" for v in volumes(station)), timeout=60)
        pinned = a.agent.pin.generation
        assert pinned >= 6, pinned
        # online: refused, naming what to do; nothing changed
        r = remove(station, "unit-z")
        assert r.status_code == 409 and "is online: stop its agent" in r.json()["detail"], r.text
        assert a.stop()
        wait_for(lambda: unit_states(station).get("unit-z") == "offline")
        before = {v["id"] for v in volumes(station) if v["unit_name"] == "unit-z"}
        r = remove(station, "unit-z", wait=False)
        assert r.status_code == 202 and r.headers["Location"].startswith("/api/v1/tasks/"), r.text
        task = httpx.get(station.url + r.headers["Location"] + "?wait=60", headers=station.auth, timeout=90).json()
        assert (task["kind"], task["object"], task["state"]) == ("remove", "/units/unit-z", "succeeded"), task
        assert task["result"] == {"unit": "unit-z", "volumes_removed": 3}
        assert unit_states(station) == {"unit-b": "online"}
        assert station.get("/api/v1/units/unit-z").status_code == 404
        assert {v["unit_name"] for v in volumes(station)} == {"unit-b"}
        assert remove(station, "unit-z").status_code == 404
        # the agent announces it again: it rejoins with new volume ids and takes the station's
        # EXPORTS (which it would refuse as older than the generation it pinned, had the station
        # started the unit's generation again at 0)
        a.call(a.agent.open("127.0.0.1", 0))       # the same agent, with the pool and generation it pinned
        a.start()
        wait_for(lambda: unit_states(station).get("unit-z") == "online")
        vols = online(station, 4)
        again = {v["id"] for v in vols if v["unit_name"] == "unit-z"}
        assert len(again) == 3 and not again & before
        b.stop()
        wait_for(lambda: unit_states(station).get("unit-b") == "offline")
        r = request(station, "32M")
        assert r.status_code == 201 and r.json()["unit"] == "unit-z", r.text
        assert r.json()["export_state"] == "exported", r.text
        assert a.agent.pin.generation > pinned
        log = station.get("/api/v1/audit?action=DELETE /api/v1/units/{name}").json()
        assert [x["outcome"] for x in reversed(log)] == [409, 202, 404]
    finally:
        a.close()
        b.close()


def test_ep_a_unit_holding_storage_or_owing_a_wipe_is_kept_and_says_why(station, tmp_path: Path):
    u = UnitHarness(station, "unit-a", parts=parts("vdy", 2))
    olga = user_token(station, tmp_path, "olga", "viewer")
    try:
        u.start()
        online(station, 2)
        got = request(station, "32M").json()
        assert u.stop()
        wait_for(lambda: unit_states(station).get("unit-a") == "offline")
        # a viewer: 403; no credentials: 401; an unknown unit: 404; a bad name: 422
        r = remove(station, "unit-a", olga)
        assert r.status_code == 403 and "'units.write'" in r.json()["detail"], r.text
        assert httpx.delete(f"{station.url}/api/v1/units/unit-a", timeout=10).status_code == 401
        assert remove(station, "unit-q").status_code == 404
        assert remove(station, "Unit A").status_code == 422
        # it holds an assignment
        r = remove(station, "unit-a")
        assert r.status_code == 409, r.text
        assert f"holds 1 assignment(s): release them first (volume {got['volume_id']} to host host-b)" \
            in r.json()["detail"]
        # released while the unit is down: the volume owes its wipe, so the unit is kept
        rel = httpx.delete(f"{station.url}/api/v1/assignments/{got['id']}?wait=60", headers=station.auth, timeout=90)
        assert rel.status_code == 200, rel.text
        r = remove(station, "unit-a")
        assert r.status_code == 409 and f"owes the wipe of 1 released volume(s) ({got['volume_id']})" \
            in r.json()["detail"], r.text
        assert unit_states(station) == {"unit-a": "offline"} and len(volumes(station)) == 2
        # an operator granted another unit only: 403 naming this one
        assert httpx.post(station.url + "/api/v1/grants", headers=station.auth, timeout=10, json={
            "user": "olga", "role": "operator", "object": "/units/unit-b"}).status_code == 201
        r = remove(station, "unit-a", olga)
        assert r.status_code == 403 and "'units.write' on /units/unit-a" in r.json()["detail"], r.text
    finally:
        u.close()


def test_ep_two_removals_at_once_one_runs_the_other_is_refused(station, tmp_path: Path):
    u = UnitHarness(station, "unit-a", parts=parts("vdy", 2))
    try:
        u.start()
        online(station, 2)
        assert u.stop()
        wait_for(lambda: unit_states(station).get("unit-a") == "offline")

        async def both() -> list[int]:
            async with httpx.AsyncClient(timeout=90) as c:
                rs = await asyncio.gather(*(c.delete(f"{station.url}/api/v1/units/unit-a?wait=60",
                                                     headers=station.auth) for _ in range(2)))
            return sorted(r.status_code for r in rs)
        # the second is refused as busy (409) while the first runs, or finds it gone (404)
        codes = asyncio.run(both())
        assert codes[0] == 200 and codes[1] in (404, 409), codes
        assert unit_states(station) == {} and volumes(station) == []
    finally:
        u.close()
