"""Liveness: heartbeats keep a unit online; a silent unit becomes unreachable, then comes back."""

import asyncio

import pytest

from tests.component.test_station_autoconf import UnitHarness, online, request, volumes, wait_for

FAST = pytest.mark.station_args("--liveness-timeout", "1.5")


@FAST
def test_gp_heartbeats_keep_a_unit_online(station):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        reannounced: list[int] = []
        again = u.agent.reannounce
        u.agent.reannounce = lambda: (reannounced.append(1), again())[1]  # type: ignore[method-assign]
        startups = station.log.read_text().count("unit unit-z started")
        h0 = station.get("/api/v1/protocol/stats").json().get("received_heartbeat", 0)
        hb = asyncio.run_coroutine_threadsafe(u.agent.heartbeat(0.3), u.loop)
        # 16 heartbeats 0.3 s apart: over 3 liveness periods (1.5 s), counted, not slept through
        wait_for(lambda: station.get("/api/v1/protocol/stats").json().get("received_heartbeat", 0)
                 >= h0 + 16, 30)
        hb.cancel()
        # held online the whole time: never unreachable, never told to announce again
        assert station.get("/api/v1/units/unit-z").json()["state"] == "online"
        assert {v["state"] for v in volumes(station)} == {"online"}
        log = station.log.read_text()
        assert "unreachable" not in log and "volumes offline" not in log
        assert log.count("unit unit-z started") == startups and reannounced == []
    finally:
        u.close()


@FAST
def test_ep_silent_unit_becomes_unreachable_keeps_assignment_and_comes_back(station):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        a = request(station, "1GiB").json()
        # no heartbeats: the unit goes quiet (a killed guest looks just like this to the station)
        wait_for(lambda: station.get("/api/v1/units/unit-z").json()["state"] == "unreachable", 10)
        assert {v["state"] for v in volumes(station)} == {"offline"}
        kept = station.get(f"/api/v1/assignments/{a['id']}").json()
        assert kept["target_iqn"] == a["target_iqn"] and kept["volume_state"] == "offline"
        # an unreachable unit's volumes are never handed out
        assert request(station, "100M", "host-c", "iqn.2026-11.org.dvsan.lab:host-c").status_code == 409
        # the unit speaks again: the station tells it it is unreachable, it re-announces, all comes back
        u.lio.exports.clear()
        hb = asyncio.run_coroutine_threadsafe(u.agent.heartbeat(0.3), u.loop)
        online(station, 3)
        assert station.get("/api/v1/units/unit-z").json()["state"] == "online"
        wait_for(lambda: a["target_iqn"] in u.lio.exports)
        hb.cancel()
    finally:
        u.close()


def test_gp_link_up_reannounces(station):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        assert u.stop() is True            # the station now holds the unit offline
        assert station.get("/api/v1/units/unit-z").json()["state"] == "offline"
    finally:
        u.close()
    u2 = UnitHarness(station)
    try:
        u2.call(asyncio.sleep(0))
        u2.agent.on_link_change("eth1", "up")      # as the netlink watch reports it
        online(station, 3)
        assert station.get("/api/v1/units/unit-z").json()["state"] == "online"
    finally:
        u2.close()
