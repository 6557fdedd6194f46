"""Permissions per object over the real station process: an operator granted only unit-a assigns,
releases and wipes there and nowhere else, by choice of volume or by best fit; grants are the
admin's alone; every attempt is in the audit log."""

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.component.test_concurrent_allocation import parts
from tests.component.test_host_agent import enrol_host
from tests.component.test_station_autoconf import UnitHarness, online, request, volumes
from tests.component.test_tasks_api import user_token


def assign(station: Any, headers: dict[str, str], host: str, **body: Any) -> httpx.Response:
    return httpx.post(station.url + "/api/v1/assignments?wait=60", headers=headers, timeout=90, json={
        "host": host, "initiator_iqn": f"iqn.2026-11.org.dvsan.lab:{host}", "host_address": "127.0.0.2", **body})


def grant(station: Any, headers: dict[str, str], **body: Any) -> httpx.Response:
    return httpx.post(station.url + "/api/v1/grants", headers=headers, json=body, timeout=10)


def test_gp_an_operator_of_one_unit_acts_there_and_nowhere_else(station, tmp_path: Path):
    a, b = UnitHarness(station, "unit-a", parts=parts("vdy", 2)), UnitHarness(station, "unit-b", parts=parts("vdx", 2))
    olga = user_token(station, tmp_path, "olga", "viewer")
    try:
        a.start()
        b.start()
        online(station, 4)
        vols = volumes(station)
        on_a = [v["id"] for v in vols if v["unit_name"] == "unit-a"]
        on_b = [v["id"] for v in vols if v["unit_name"] == "unit-b"]
        # a viewer: no write anywhere
        r = assign(station, olga, "host-1", volume_id=on_a[0])
        assert r.status_code == 403 and "'assignments.write'" in r.json()["detail"], r.text
        g = grant(station, station.auth, user="olga", role="operator", object="/units/unit-a")
        assert g.status_code == 201, g.text
        # unit-b's volume: refused, naming it; unit-a's: assigned
        r = assign(station, olga, "host-1", volume_id=on_b[0])
        assert r.status_code == 403, r.text
        assert f"lacks the permission 'assignments.write' on /volumes/{on_b[0]}" in r.json()["detail"]
        r = assign(station, olga, "host-1", volume_id=on_a[0])
        assert r.status_code == 201 and r.json()["unit"] == "unit-a" and r.json()["volume_id"] == on_a[0], r.text
        # by best fit: only among unit-a's volumes, even while unit-b has free ones
        r = assign(station, olga, "host-2", size="32M")
        assert r.status_code == 201 and r.json()["unit"] == "unit-a", r.text
        r = assign(station, olga, "host-3", size="32M")
        assert r.status_code == 409 and "no free volume" in r.json()["detail"], r.text
        # the admin gives host-9 a unit-b volume: olga cannot release it nor wipe unit-b's volumes
        theirs = assign(station, station.auth, "host-9", volume_id=on_b[1]).json()
        r = httpx.delete(f"{station.url}/api/v1/assignments/{theirs['id']}?wait=60", headers=olga, timeout=60)
        assert r.status_code == 403 and f"on /volumes/{on_b[1]}" in r.json()["detail"], r.text
        r = httpx.post(f"{station.url}/api/v1/volumes/{on_b[0]}/wipe", headers=olga, timeout=10)
        assert r.status_code == 403 and f"'volumes.wipe' on /volumes/{on_b[0]}" in r.json()["detail"], r.text
        # grants are the admin's: olga cannot give herself more
        assert grant(station, olga, user="olga", role="operator", object="/units/unit-b").status_code == 403
        # the assignments on unit-a are hers to release
        mine = [x for x in httpx.get(station.url + "/api/v1/assignments", headers=olga, timeout=10).json()
                if x["unit"] == "unit-a"]
        r = httpx.delete(f"{station.url}/api/v1/assignments/{mine[0]['id']}?wait=60", headers=olga, timeout=60)
        assert r.status_code == 200, r.text
        # the grant taken back: nothing more on unit-a either
        gid = g.json()["id"]
        assert httpx.delete(f"{station.url}/api/v1/grants/{gid}", headers=station.auth, timeout=10).status_code == 200
        r = httpx.delete(f"{station.url}/api/v1/assignments/{mine[1]['id']}?wait=60", headers=olga, timeout=60)
        assert r.status_code == 403, r.text
        log = httpx.get(station.url + "/api/v1/audit?principal=user:olga&limit=100", headers=station.auth, timeout=10).json()
        outcomes = [(x["action"], x["outcome"]) for x in reversed(log)]
        assert outcomes == [
            ("POST /api/v1/assignments", 403), ("POST /api/v1/assignments", 403), ("POST /api/v1/assignments", 201),
            ("POST /api/v1/assignments", 201), ("POST /api/v1/assignments", 409),
            ("DELETE /api/v1/assignments/{assignment_id}", 403), ("POST /api/v1/volumes/{volume_id}/wipe", 403),
            ("POST /api/v1/grants", 403), ("DELETE /api/v1/assignments/{assignment_id}", 200),
            ("DELETE /api/v1/assignments/{assignment_id}", 403)]
        admin_log = httpx.get(station.url + "/api/v1/audit?action=POST /api/v1/grants", headers=station.auth,
                              timeout=10).json()
        assert [(x["principal"], x["outcome"]) for x in admin_log] == [("user:olga", 403), ("user:admin", 201)]
    finally:
        a.close()
        b.close()


def test_ep_bad_grants_and_volume_choices_are_refused_clearly(station, tmp_path: Path):
    u = UnitHarness(station, "unit-a", parts=parts("vdy", 2))
    user_token(station, tmp_path, "olga", "viewer")
    enrol_host(station, tmp_path, "host-c", "iqn.2026-11.org.dvsan.lab:host-c")
    host_c = {"Authorization": f"Bearer {(tmp_path / 'host-c.token').read_text().strip()}"}
    try:
        u.start()
        online(station, 2)
        cases: list[tuple[dict[str, Any], int, str]] = [
                ({"user": "olga", "role": "admin", "object": "/units/unit-a"}, 422, "operator|viewer"),
                ({"user": "olga", "role": "operator", "object": "/etc/passwd"}, 422, "object"),
                ({"user": "olga", "role": "operator", "object": "/units/UNIT A"}, 422, "object"),
                ({"user": "olga", "role": "operator", "object": "/units/unit-a", "extra": 1}, 422, "extra"),
                ({"user": "nobody", "role": "operator", "object": "/units/unit-a"}, 404, "no user 'nobody'")]
        for body, status, words in cases:
            r = grant(station, station.auth, **body)
            assert r.status_code == status and words in r.text, (body, r.text)
        assert grant(station, station.auth, user="olga", role="operator", object="/hosts/host-c").status_code == 201
        dup = grant(station, station.auth, user="olga", role="operator", object="/hosts/host-c")
        assert dup.status_code == 409 and "already has operator on /hosts/host-c" in dup.json()["detail"]
        assert httpx.delete(f"{station.url}/api/v1/grants/99999", headers=station.auth, timeout=10).status_code == 404
        vid = volumes(station)[0]["id"]
        # a host never chooses a volume; neither size nor volume: 422; unknown volume: 404
        r = assign(station, host_c, "host-c", volume_id=vid)
        assert r.status_code == 403, r.text
        r = assign(station, station.auth, "host-c")
        assert r.status_code == 422 and "give the size the host needs, or the volume_id" in r.text
        assert assign(station, station.auth, "host-c", volume_id=99999).status_code == 404
        assert assign(station, station.auth, "host-c", volume_id=2**63).status_code == 422
        assert assign(station, station.auth, "host-c", volume_id=2**53 + 1).status_code == 422
        # a volume already taken: 409 naming its host, and the pool unchanged
        assert assign(station, station.auth, "host-c", volume_id=vid).status_code == 201
        r = assign(station, station.auth, "host-d", volume_id=vid)
        assert r.status_code == 409 and "assigned to host host-c" in r.json()["detail"]
        assert sum(v["assigned_to"] is not None for v in volumes(station)) == 1
        # a volume smaller than the size asked
        other = next(v["id"] for v in volumes(station) if v["id"] != vid)
        r = assign(station, station.auth, "host-d", volume_id=other, size="1G")
        assert r.status_code == 409 and f"volume {other} cannot be assigned" in r.json()["detail"], r.text
        assert request(station, "32M", "host-d", "iqn.2026-11.org.dvsan.lab:host-d").json()["volume_id"] == other
    finally:
        u.close()


def test_gp_groups_and_the_users_of_a_host_over_http(station, tmp_path: Path):
    a, b = UnitHarness(station, "unit-a", parts=parts("vdy", 2)), UnitHarness(station, "unit-b", parts=parts("vdx", 2))
    olga = user_token(station, tmp_path, "olga", "viewer")
    pavel = user_token(station, tmp_path, "pavel", "viewer")
    url = station.url + "/api/v1"
    try:
        a.start()
        b.start()
        online(station, 4)
        # host-b enrolled with who may use its storage: olga, and the group tenant-a (pavel)
        r = httpx.post(url + "/groups", headers=station.auth, timeout=10, json={"name": "tenant-a", "members": ["pavel"]})
        assert r.status_code == 201 and r.json()["members"] == ["pavel"], r.text
        r = httpx.post(url + "/hosts", headers=station.auth, timeout=10, json={
            "name": "host-b", "initiator_iqns": ["iqn.2026-11.org.dvsan.lab:host-b"], "users": ["olga"],
            "groups": ["tenant-a"]})
        assert r.status_code == 201 and (r.json()["users"], r.json()["groups"]) == (["olga"], ["tenant-a"]), r.text
        listed = httpx.get(url + "/hosts", headers=olga, timeout=10).json()
        assert [(h["name"], h["users"], h["groups"]) for h in listed] == [("host-b", ["olga"], ["tenant-a"])]
        # olga takes storage for host-b from the whole pool (best fit, any unit); not for host-c
        got = assign(station, olga, "host-b", size="32M")
        assert got.status_code == 201, got.text
        r = assign(station, olga, "host-c", size="32M")
        assert r.status_code == 403 and "'assignments.write'" in r.json()["detail"], r.text
        # pavel, through his group, releases host-b's assignment; once out of the group he cannot
        r = assign(station, pavel, "host-b", size="32M")
        assert r.status_code == 201, r.text
        assert httpx.delete(f"{url}/assignments/{got.json()['id']}?wait=60", headers=pavel, timeout=90).status_code == 200
        assert httpx.delete(url + "/groups/tenant-a/members/pavel", headers=station.auth, timeout=10).status_code == 204
        r = httpx.delete(f"{url}/assignments/{r.json()['id']}?wait=60", headers=pavel, timeout=90)
        assert r.status_code == 403 and "on /volumes/" in r.json()["detail"], r.text
        # a group grant on a unit, given over REST, holds for a member added later
        g = grant(station, station.auth, group="tenant-a", role="operator", object="/units/unit-b")
        assert g.status_code == 201 and g.json()["group_name"] == "tenant-a" and g.json()["user_name"] is None, g.text
        assert httpx.put(url + "/groups/tenant-a/members/pavel", headers=station.auth, timeout=10).status_code == 204
        r = assign(station, pavel, "host-z", size="32M")
        assert r.status_code == 201 and r.json()["unit"] == "unit-b", r.text
        assert [x["object"] for x in httpx.get(url + "/grants?group=tenant-a", headers=station.auth,
                                               timeout=10).json()] == ["/hosts/host-b", "/units/unit-b"]
        # the group deleted: its grant goes, pavel is back to a viewer
        assert httpx.delete(url + "/groups/tenant-a", headers=station.auth, timeout=10).status_code == 204
        assert assign(station, pavel, "host-z", size="32M").status_code == 403
        assert httpx.get(url + "/grants?group=tenant-a", headers=station.auth, timeout=10).json() == []
        log = httpx.get(url + "/audit?action=POST /api/v1/hosts", headers=station.auth, timeout=10).json()
        assert log[0]["outcome"] == 201 and "tenant-a" in str(log[0]["detail"]), log
    finally:
        a.close()
        b.close()


def test_ep_bad_groups_and_host_users_are_refused_and_change_nothing(station, tmp_path: Path):
    olga = user_token(station, tmp_path, "olga", "viewer")
    url = station.url + "/api/v1"
    cases: list[tuple[str, str, dict[str, Any] | None, int, str]] = [
        ("POST", "/groups", {"name": "tenant-a", "members": ["nobody"]}, 404, "no user 'nobody'"),
        ("POST", "/groups", {"name": "Tenant A"}, 422, "name"),
        ("POST", "/groups", {"name": "tenant-a", "extra": 1}, 422, "extra"),
        ("PUT", "/groups/tenant-x/members/olga", None, 404, "no group 'tenant-x'"),
        ("DELETE", "/groups/tenant-x", None, 404, "no group 'tenant-x'"),
        ("POST", "/grants", {"user": "olga", "group": "g", "role": "operator", "object": "/units/unit-a"}, 422,
         "exactly one"),
        ("POST", "/grants", {"role": "operator", "object": "/units/unit-a"}, 422, "exactly one"),
        ("POST", "/grants", {"group": "tenant-x", "role": "operator", "object": "/units/unit-a"}, 404,
         "no group 'tenant-x'"),
        ("POST", "/hosts", {"name": "host-b", "initiator_iqns": ["iqn.2026-11.org.dvsan.lab:host-b"],
                            "users": ["nobody"]}, 404, "no user 'nobody'"),
        ("POST", "/hosts", {"name": "host-b", "initiator_iqns": ["iqn.2026-11.org.dvsan.lab:host-b"],
                            "groups": ["tenant-x"]}, 404, "no group 'tenant-x'"),
        ("POST", "/hosts", {"name": "host-b", "initiator_iqns": ["iqn.2026-11.org.dvsan.lab:host-b"],
                            "users": ["Not A Name"]}, 422, "users"),
    ]
    for method, path, body, status, words in cases:
        r = httpx.request(method, url + path, headers=station.auth, json=body, timeout=10)
        assert r.status_code == status and words in r.text, (method, path, body, r.text)
    # nothing was made by the refused calls
    assert httpx.get(url + "/groups", headers=station.auth, timeout=10).json() == []
    assert httpx.get(url + "/hosts", headers=station.auth, timeout=10).json() == []
    assert httpx.get(url + "/grants", headers=station.auth, timeout=10).json() == []
    # groups are the admin's: a viewer gets 403, a caller without credentials 401
    r = httpx.post(url + "/groups", headers=olga, timeout=10, json={"name": "mine", "members": ["olga"]})
    assert r.status_code == 403 and "'users.admin'" in r.json()["detail"], r.text
    assert httpx.get(url + "/groups", headers=olga, timeout=10).status_code == 403
    assert httpx.get(url + "/groups", timeout=10).status_code == 401
    # two admins adding the same member at once: one 204, one 409, one membership
    assert httpx.post(url + "/groups", headers=station.auth, timeout=10, json={"name": "tenant-a"}).status_code == 201

    async def both() -> list[int]:
        async with httpx.AsyncClient(timeout=10) as c:
            rs = await asyncio.gather(*(c.put(url + "/groups/tenant-a/members/olga", headers=station.auth)
                                        for _ in range(2)))
        return sorted(r.status_code for r in rs)
    assert asyncio.run(both()) == [204, 409]
    assert httpx.get(url + "/groups", headers=station.auth, timeout=10).json()[0]["members"] == ["olga"]
