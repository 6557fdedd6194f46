"""Two units with assignments each: every unit is sent, and holds, exactly its own exports.

The station scopes a unit's desired state to that unit (station/services/pool.py desired_state); send
every unit every unit's exports and this test fails twice over: in what the station sends, and
in what the unit ends up holding (issue 18 hole 4).
"""

from typing import Any

import httpx

from dvsan.model import Partition
from tests.component.test_concurrent_allocation import parts
from tests.component.test_station_autoconf import UnitHarness, online, request, wait_for


def recording(u: UnitHarness) -> list[dict[str, Any]]:
    """Every EXPORTS body the unit is sent, as it arrives (before the unit's own checks)."""
    bodies: list[dict[str, Any]] = []
    apply = u.agent.apply_exports

    async def record(body: dict[str, Any]) -> dict[str, Any]:
        bodies.append(body)
        return await apply(body)

    u.agent.apply_exports = record  # type: ignore[method-assign]
    return bodies


def own(u: UnitHarness, offered: list[Partition], body: dict[str, Any]) -> list[str]:
    """What in one EXPORTS body is not this unit's: wrong address, target or device."""
    wrong = [] if body["unit"] == u.agent.name else [f"addressed to {body['unit']}"]
    devices = {p.device for p in offered}
    for e in body["exports"] + [{"target_iqn": t, "device": None} for t in body["drop"]]:
        if not e["target_iqn"].startswith(f"iqn.2026-11.org.dvsan:{u.agent.name}:"):
            wrong.append(f"target {e['target_iqn']}")
        if e["device"] is not None and e["device"] not in devices:
            wrong.append(f"device {e['device']}")
    return wrong


def test_gp_each_of_two_units_holds_exactly_its_own_exports(station):
    pa, pb = parts("vdy", 3), parts("vdx", 3)
    a, b = UnitHarness(station, "unit-a", parts=pa), UnitHarness(station, "unit-b", parts=pb)
    sent = {"unit-a": recording(a), "unit-b": recording(b)}
    try:
        a.start()
        b.start()
        online(station, 6)
        got = []
        # best fit breaks ties by unit name: unit-a's three go first, then unit-b's
        for i in range(5):
            r = request(station, "32M", f"host-{i}", f"iqn.2026-11.org.dvsan.lab:host-{i}")
            assert r.status_code == 201, r.text
            got.append(r.json())
        by_unit = {"unit-a": [x for x in got if x["unit"] == "unit-a"],
                   "unit-b": [x for x in got if x["unit"] == "unit-b"]}
        assert (len(by_unit["unit-a"]), len(by_unit["unit-b"])) == (3, 2)
        for u, offered in ((a, pa), (b, pb)):
            mine = {x["target_iqn"]: (x["initiator_iqn"],) for x in by_unit[u.agent.name]}
            # the unit holds exactly its own, each for its one host...
            assert {t: e.initiators for t, e in u.lio.exports.items()} == mine
            # ...and was never sent anything else (its own refusals are not what keeps it clean)
            assert sent[u.agent.name], "the unit was sent nothing"
            assert [w for body in sent[u.agent.name] for w in own(u, offered, body)] == []
        assert {x["export_state"] for x in httpx.get(station.url + "/api/v1/assignments?wait=60", headers=station.auth).json()} == \
            {"exported"}

        # a release on one unit changes only that unit
        n_b = len(sent["unit-b"])
        victim = by_unit["unit-a"][0]
        rel = httpx.delete(f"{station.url}/api/v1/assignments/{victim['id']}?wait=60", headers=station.auth, timeout=30)
        assert rel.status_code == 200 and rel.json()["unit_confirmed"] is True
        assert victim["target_iqn"] not in a.lio.exports and len(a.lio.exports) == 2
        assert len(b.lio.exports) == 2 and len(sent["unit-b"]) == n_b
        assert [w for body in sent["unit-a"] for w in own(a, pa, body)] == []

        # a unit that comes back empty (a reboot) is given back its own two, not the other's
        b.lio.exports.clear()
        n = b.agent.exports_applied
        b.start()
        wait_for(lambda: b.agent.exports_applied > n and len(b.lio.exports) == 2)
        assert set(b.lio.exports) == {x["target_iqn"] for x in by_unit["unit-b"]}
        assert [w for body in sent["unit-b"] for w in own(b, pb, body)] == []
    finally:
        a.close()
        b.close()
