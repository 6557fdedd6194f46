"""Monitoring at the real station over loopback: the real unit agent's protocol loop sends STATS
(its LIO a stand-in with I/O counters; real ones in tests/lab/test_monitoring_lab.py); `/metrics`
is scraped over HTTP and parsed with prometheus-client's parser; the stats route; credentials;
bad and forged samples counted and never stored."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from dvsan.endpoint import Endpoint
from dvsan.protocol import MsgType, encode
from dvsan.stats import MAX_VOLUMES, SystemFigures
from tests.component.test_auth import call, host_token, user_token
from tests.component.test_station_autoconf import MemoryLio, UnitHarness, online, request, wait_for
from unit_agent.stats import sampler

MiB = 1 << 20
SYSTEM = SystemFigures(cpu_busy_s=10.0, cpu_total_s=100.0, cpus=2, mem_total=4 << 30,
                       mem_available=3 << 30, nic="eth1", net_rx_bytes=1000, net_tx_bytes=2000)


class IoLio(MemoryLio):
    """The in-memory LIO with I/O totals per exported device, set by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.io: dict[str, tuple[int, int, int]] = {}
        self.io_lock = threading.Lock()

    def io_counters(self) -> dict[str, tuple[int, int, int]]:
        with self.io_lock:
            held = {e.device for e in self.actual_exports()}
            return {d: v for d, v in self.io.items() if d in held}


class Figures:
    """System figures the test moves forward (a unit's psutil stands in for nothing here)."""

    def __init__(self) -> None:
        self.now = SYSTEM

    def __call__(self, nic: str | None) -> SystemFigures:
        return self.now


def scrape(station: Any, token: str | None = None) -> dict[str, list[tuple[dict[str, str], float]]]:
    """`/metrics` parsed: sample name -> [(labels, value)]."""
    r = call(station, "GET", "/metrics", token or station.token)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(m: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float | None:
    for got, v in m.get(name, []):
        if all(got.get(k) == want for k, want in labels.items()):
            return v
    return None


def start(station: Any) -> tuple[UnitHarness, IoLio, Figures, dict[str, Any]]:
    """A unit with one volume assigned (so exported) that reports every 0.2 s."""
    u = UnitHarness(station)
    lio = IoLio()
    u.lio = lio
    u.agent.lio = lio
    u.start()
    online(station, 3)
    r = request(station, "1GiB")
    assert r.status_code == 201, r.text
    figures = Figures()
    asyncio.run_coroutine_threadsafe(
        u.agent.report_stats(0.2, sampler(u.agent.name, lio, None, figures)), u.loop)
    return u, lio, figures, r.json()


def test_gp_metrics_show_the_pool_units_tasks_and_growing_volume_io(station):
    u, lio, figures, a = start(station)
    try:
        with lio.io_lock:
            lio.io[a["device"]] = (3 * MiB, 5 * MiB, 40)
        labels = {"unit": "unit-z", "device": a["device"]}
        m = wait_for(lambda: (m := scrape(station)) and value(m, "dvsan_volume_write_bytes_total", **labels)
                     == 5 * MiB and m)
        assert value(m, "dvsan_volume_read_bytes_total", **labels) == 3 * MiB
        assert value(m, "dvsan_volume_commands_total", **labels) == 40
        assert value(m, "dvsan_volume_write_bytes_total", **labels, volume_id=str(a["volume_id"])) == 5 * MiB
        # the pool as the REST API lists it
        vols = station.get("/api/v1/volumes").json()
        for st in ("online", "offline"):
            for use in ("free", "assigned", "wiping"):
                want = [v for v in vols if v["state"] == st and (
                    (use == "assigned") == (v["assigned_to"] is not None)) and (
                    use != "wiping" or v["wipe_state"] != "clean") and (use != "free" or v["wipe_state"] == "clean")]
                assert value(m, "dvsan_pool_bytes", state=st, use=use) == sum(v["size_bytes"] for v in want), (st, use)
                assert value(m, "dvsan_pool_volumes", state=st, use=use) == len(want)
        assert value(m, "dvsan_units", state="online") == 1
        assert value(m, "dvsan_units", state="unreachable") == 0
        assert value(m, "dvsan_unit_state", unit="unit-z", state="online") == 1
        tasks = station.get("/api/v1/tasks").json()
        assert value(m, "dvsan_tasks", kind="assign", state="succeeded") == sum(
            t["kind"] == "assign" and t["state"] == "succeeded" for t in tasks) == 1
        proto = station.get("/api/v1/protocol/stats").json()
        assert value(m, "dvsan_protocol_events_total", event="received_startup") == proto["received_startup"]
        assert value(m, "dvsan_snmp_listening") == 0
        assert value(m, "dvsan_unit_memory_bytes", unit="unit-z", kind="total") == 4 << 30
        assert value(m, "dvsan_unit_network_bytes_total", unit="unit-z", nic="eth1", direction="tx") == 2000
        # the REST latency histogram counted the calls above, by route template
        assert value(m, "dvsan_http_request_duration_seconds_count", method="GET",
                     route="/api/v1/volumes", status="200") >= 1
        assert value(m, "dvsan_http_request_duration_seconds_count", method="POST",
                     route="/api/v1/assignments", status="201") == 1
        # the host writes on: the counters grow, the stats route shows rates
        with lio.io_lock:
            lio.io[a["device"]] = (3 * MiB, 69 * MiB, 1040)
        figures.now = SystemFigures(60.0, 200.0, 2, 4 << 30, 2 << 30, "eth1", 51000, 2000)
        wait_for(lambda: value(scrape(station), "dvsan_volume_write_bytes_total", **labels) == 69 * MiB)
        st = call(station, "GET", "/api/v1/units/unit-z/stats?minutes=5", station.token).json()
        (vol,) = st["volumes"]
        assert (vol["device"], vol["volume_id"]) == (a["device"], a["volume_id"])
        last = vol["samples"][-1]
        assert (last["write_bytes"], last["commands"]) == (69 * MiB, 1040)
        assert last["write_bytes_per_s"] > 0 and last["read_bytes_per_s"] == 0
        assert st["samples"][-1]["cpu_percent"] == 50.0     # (60-10) busy of (200-100) seconds
        assert st["samples"][-1]["net_rx_bytes_per_s"] > 0
        assert st["latest"]["mem_available"] == 2 << 30
        assert (st["samples"][-1]["mem_total"], st["samples"][-1]["mem_available"]) == (4 << 30, 2 << 30)
    finally:
        u.close()


def test_gp_a_unit_restart_resets_its_counters_and_the_station_sums_carry_on(station):
    u, lio, _figures, a = start(station)
    try:
        labels = {"unit": "unit-z", "device": a["device"]}
        with lio.io_lock:
            lio.io[a["device"]] = (0, 100 * MiB, 500)
        wait_for(lambda: value(scrape(station), "dvsan_volume_write_bytes_total", **labels) == 100 * MiB)
        # the backstore was made anew (or the unit rebooted): LIO counts from zero again
        with lio.io_lock:
            lio.io[a["device"]] = (0, 4 * MiB, 20)
        m = wait_for(lambda: (m := scrape(station)) and value(m, "dvsan_volume_write_bytes_total", **labels)
                     == 104 * MiB and m)
        assert value(m, "dvsan_volume_commands_total", **labels) == 520
        rates = [s["write_bytes_per_s"] for v in call(station, "GET", "/api/v1/units/unit-z/stats",
                                                      station.token).json()["volumes"] for s in v["samples"]]
        assert all(r is None or r >= 0 for r in rates)
    finally:
        u.close()


def test_ep_metrics_and_stats_need_a_credential_and_a_viewer_reads_them(station, tmp_path):
    u, _lio, _figures, _a = start(station)
    try:
        for path in ("/metrics", "/api/v1/units/unit-z/stats"):
            for token in (None, "dvsan_1_not-the-secret"):
                r = call(station, "GET", path, token)
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, token)
        viewer = user_token(station, "prom", "viewer")
        assert value(scrape(station, viewer), "dvsan_units", state="online") == 1
        assert call(station, "GET", "/api/v1/units/unit-z/stats", viewer).status_code == 200
        # an enrolled host's token is for its own storage only
        host = host_token(station, tmp_path, "host-b", "iqn.2026-11.org.dvsan.lab:host-b")
        for path in ("/metrics", "/api/v1/units/unit-z/stats"):
            r = call(station, "GET", path, host)
            assert r.status_code == 403 and "pool.read" in r.json()["detail"], path
        assert call(station, "GET", "/api/v1/units/unit-nope/stats", viewer).status_code == 404
        assert call(station, "GET", "/api/v1/units/unit-z/stats?minutes=0", viewer).status_code == 422
        assert call(station, "GET", "/api/v1/units/unit-z/stats?minutes=61", viewer).status_code == 422
    finally:
        u.close()


def _send(u: UnitHarness, station: Any, body: dict[str, Any]) -> dict[str, Any]:
    assert u.agent.endpoint is not None
    return u.call(u.agent.endpoint.send(("127.0.0.1", station.udp_port), MsgType.STATS, body, timeout=10))


def _counts(station: Any) -> dict[str, int]:
    return station.get("/api/v1/protocol/stats").json()


def test_ep_bad_and_forged_stats_are_refused_counted_and_never_stored(station):
    u = UnitHarness(station)
    try:
        u.start()
        vols = online(station, 3)
        now = int(__import__("time").time() * 1000)
        dev = vols[0]["device"]
        good_vol = {"device": dev, "read_bytes": 1, "write_bytes": 2, "commands": 3}
        base = {"unit": "unit-z", "t": now, "boot": 1, "part": 0, "parts": 1, "system": SYSTEM.to_wire(),
                "volumes": [good_vol]}
        whole = [  # (body, reason): the whole message is refused
            ({**base, "t": "now"}, "bad-field"),
            ({**base, "t": now - 3_600_000}, "bad-time"),
            ({**base, "system": {**SYSTEM.to_wire(), "net_rx_bytes": -1}}, "negative"),
            ({**base, "system": {**SYSTEM.to_wire(), "cpu_busy_s": float("nan")}}, "bad-field"),
            ({**base, "system": None}, "bad-field"),
            ({k: v for k, v in base.items() if k != "system"}, "bad-field"),
            ({**base, "volumes": "all"}, "bad-field"),
            ({**base, "volumes": [dict(good_vol, device=f"vdz{i}") for i in range(MAX_VOLUMES + 1)]}, "too-many"),
            ({**base, "part": 2, "parts": 2}, "bad-field"),
        ]
        for body, reason in whole:
            before = _counts(station).get(f"stats_refused_{reason}", 0)
            ack = _send(u, station, body)
            assert ack["status"] == "error" and f"({reason})" in ack["error"], (reason, ack)
            assert _counts(station)[f"stats_refused_{reason}"] == before + 1
        st = call(station, "GET", "/api/v1/units/unit-z/stats", station.token).json()
        assert st["samples"] == [] and st["volumes"] == []
        # entries: each bad one refused on its own, the good one taken
        ack = _send(u, station, {**base, "volumes": [
            good_vol, {**good_vol, "device": "vdz9"}, {**good_vol, "device": vols[1]["device"], "commands": -4},
            {**good_vol, "device": vols[2]["device"], "write_bytes": "2"}, {**good_vol, "device": "../sda"},
            good_vol]})
        assert ack["status"] == "ok" and ack["volumes_taken"] == 1, ack
        assert sorted(r["reason"] for r in ack["refused"]) == [
            "bad-field", "bad-field", "duplicate", "negative", "unknown-volume"]
        counts = _counts(station)
        assert counts["stats_refused_unknown-volume"] == 1 and counts["stats_accepted"] == 1
        st = call(station, "GET", "/api/v1/units/unit-z/stats", station.token).json()
        assert [v["device"] for v in st["volumes"]] == [dev]
        # an older sample than the one taken is refused
        ack = _send(u, station, {**base, "t": now - 1000, "volumes": []})
        assert ack["status"] == "error" and "(out-of-order)" in ack["error"]
        # forged: another unit's key speaking for unit-z; garbage datagrams
        other = UnitHarness(station, "unit-y")
        try:
            other.start()
            before = _counts(station)["handler_errors"]
            ack = _send(other, station, {**base, "t": now + 500})
            assert ack["status"] == "error" and "may not speak for unit unit-z" in ack["error"]
            assert _counts(station)["handler_errors"] == before + 1
        finally:
            other.close()
        dropped = _counts(station).get("dropped", 0)

        async def garbage() -> None:
            ep = await Endpoint.open(b"not-the-cluster-key-at-all", lambda *_: asyncio.sleep(0), "127.0.0.1", 0)
            for d in encode(b"not-the-cluster-key-at-all", MsgType.STATS, 1, base) + [b"DVSN\x01junk", b"\xff" * 50]:
                ep._sendto([d], ("127.0.0.1", station.udp_port))
            ep.close()
        asyncio.run(garbage())
        wait_for(lambda: _counts(station).get("dropped", 0) >= dropped + 3)
        st = call(station, "GET", "/api/v1/units/unit-z/stats", station.token).json()
        assert [len(v["samples"]) for v in st["volumes"]] == [1]
        assert st["volumes"][0]["samples"][0]["write_bytes"] == 2
        assert _counts(station)["stats_accepted"] == 1
    finally:
        u.close()


def test_gp_metrics_registries_are_per_app():
    """Two apps in one process: each its own histogram, nothing in the global default registry."""
    from prometheus_client import REGISTRY

    from station.services.metrics import Metrics

    a, b = Metrics(), Metrics()
    a.latency.labels("GET", "/x", "200").observe(0.1)
    assert b.registry.get_sample_value("dvsan_http_request_duration_seconds_count",
                                       {"method": "GET", "route": "/x", "status": "200"}) is None
    assert REGISTRY.get_sample_value("dvsan_http_request_duration_seconds_count",
                                     {"method": "GET", "route": "/x", "status": "200"}) is None
    assert httpx is not None


class SessionLio(IoLio):
    """Also says how many initiators are logged in to each export (the test sets it)."""

    def __init__(self) -> None:
        super().__init__()
        self.logged_in: dict[str, int] = {}

    def session_counts(self) -> dict[str, int]:
        with self.io_lock:
            return dict(self.logged_in)


def test_gp_an_assignment_shows_its_hosts_sessions_as_the_unit_reports_them(station):
    u = UnitHarness(station)
    lio = SessionLio()
    u.lio = lio
    u.agent.lio = lio
    try:
        u.start()
        online(station, 3)
        a = request(station, "1GiB").json()
        path = f"/api/v1/assignments/{a['id']}"
        assert station.get(path).json()["sessions"] is None        # no sample yet: unknown
        with lio.io_lock:
            lio.io[a["device"]] = (0, 0, 0)
            lio.logged_in[a["device"]] = 1
        asyncio.run_coroutine_threadsafe(u.agent.report_stats(0.2, sampler(u.agent.name, lio, None, Figures())), u.loop)
        wait_for(lambda: station.get(path).json()["sessions"] == 1)
        # the listing shows it too; and a logout shows as 0
        assert [x["sessions"] for x in station.get("/api/v1/assignments").json()] == [1]
        with lio.io_lock:
            lio.logged_in[a["device"]] = 0
        wait_for(lambda: station.get(path).json()["sessions"] == 0)
    finally:
        u.close()
