"""host_agent.sync.plan: the pure diff between the station's list and the host's records, both ways."""

from __future__ import annotations

from typing import Any

import pytest

from dvsan.errors import InvalidInput
from host_agent.sync import plan, station_portals

T2, T3 = "iqn.2026-11.org.dvsan:unit-a:vda2", "iqn.2026-11.org.dvsan:unit-a:vda3"


def assignment(aid: int, target: str = T2, host: str = "host-b", **kw: Any) -> dict[str, Any]:
    return {"id": aid, "host": host, "target_iqn": target, "unit": "unit-a", "unit_address": "10.0.0.1",
            "unit_dns_name": None, "portal_port": 3260, "lun": 0, **kw}


def held(a: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {**a, "portal_address": a["unit_address"], **kw}


def by_station(a: dict[str, Any]) -> str:
    return str(a["unit_address"])


def test_gp_in_sync_is_an_empty_plan() -> None:
    a = assignment(1)
    p = plan([a], {"1": held(a)}, "host-b", by_station)
    assert (p.add, p.drop, p.new_portals) == ([], [], [])


def test_gp_station_assignment_the_host_does_not_know_is_added() -> None:
    a, b = assignment(1), assignment(2, T3)
    p = plan([a, b], {"1": held(a)}, "host-b", by_station)
    assert p.add == [b] and p.drop == []


def test_gp_host_record_the_station_does_not_know_is_dropped() -> None:
    a = assignment(1)
    p = plan([], {"1": held(a)}, "host-b", by_station)
    assert p.drop == [held(a)] and p.add == []


def test_gp_another_hosts_assignment_is_never_added() -> None:
    p = plan([assignment(3, host="host-c")], {}, "host-b", by_station)
    assert p.add == []


def test_gp_new_unit_address_is_a_new_portal_and_the_old_one_stays() -> None:
    a = assignment(1)
    moved = {**a, "unit_address": "10.0.0.2"}
    p = plan([moved], {"1": held(a)}, "host-b", by_station)
    assert [(r["id"], new) for r, new in p.new_portals] == [(1, [("10.0.0.2", 3260)])]
    assert p.drop == [] and p.add == []


def test_gp_portals_list_adds_each_unknown_portal() -> None:
    a = assignment(1, portals=[{"address": "10.0.0.1", "port": 3260}, {"address": "fd00::11", "port": 3261}])
    p = plan([a], {"1": held(a, portals=[["10.0.0.1", 3260]])}, "host-b", by_station)
    assert p.new_portals[0][1] == [("fd00::11", 3261)]


def test_gp_a_portal_the_host_added_before_is_known() -> None:
    a = assignment(1, unit_address="10.0.0.2")
    rec = held(assignment(1), portals=[["10.0.0.1", 3260], ["10.0.0.2", 3260]])
    assert plan([a], {"1": rec}, "host-b", by_station).new_portals == []


def test_gp_the_host_resolves_the_units_name_itself() -> None:
    """A DNS name that resolves here to the address the host logged in to is no new portal."""
    a = assignment(1, unit_dns_name="unit-a.storage", unit_address="192.168.0.5")
    rec = held(a, portal_address="10.0.0.1")
    assert plan([a], {"1": rec}, "host-b", lambda a: "10.0.0.1").new_portals == []


@pytest.mark.parametrize("portals", ["10.0.0.2", [{"address": "10.0.0.2"}], [{"address": "", "port": 3260}],
                                     [{"address": "10.0.0.2", "port": 70000}], [["10.0.0.2", 3260]]])
def test_ep_malformed_portals_are_refused(portals: Any) -> None:
    with pytest.raises(InvalidInput, match="assignment 1"):
        station_portals(assignment(1, portals=portals), "10.0.0.1")


def test_ep_same_id_with_another_target_is_reported_not_merged_and_the_rest_goes_on() -> None:
    a, b = assignment(1), assignment(2, T3)
    p = plan([assignment(1, T3), {**b, "portals": "junk"}, assignment(4)], {"1": held(a), "2": held(b)},
             "host-b", by_station)
    assert len(p.conflicts) == 2
    assert "this host holds iqn.2026-11.org.dvsan:unit-a:vda2, the station says" in p.conflicts[0]
    assert "assignment 2: 'portals' is not a list" in p.conflicts[1]
    assert [x["id"] for x in p.add] == [4] and p.drop == [] and p.new_portals == []
