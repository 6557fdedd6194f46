"""The real station process over loopback: auto-configuration, allocation, release, bad input.

The unit side is the real UnitAgent protocol loop with an in-memory LIO stand-in; the real LIO
path is proven in tests/lab.
"""

import asyncio
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx

from dvsan.endpoint import Endpoint
from dvsan.identity import STATION, Signer, StationPin, load_or_create, load_public_key, seal
from dvsan.model import Export, Partition
from dvsan.protocol import MsgType, encode
from dvsan.reconcile import Action, CreateExport, DeleteExport, SetInitiators
from unit_agent.agent import UnitAgent

GiB = 1024**3
MiB = 1024**2


def part(dev: str, start: int, size: int, bs: int = 512) -> Partition:
    n = size // bs
    return Partition(device=dev, disk="vdz", number=int(dev[-1]), start_lba=start, length_blocks=n,
                     end_lba=start + n - 1, block_size=bs, size_bytes=size)


PARTS = [part("vdz1", 2048, 512 * MiB), part("vdz2", 2048 + 1048576, 1280 * MiB),
         part("vdz3", 2048 + 1048576 + 2621440, 2 * GiB)]


class MemoryLio:
    """In-memory stand-in for unit_agent.lio.Lio: applies reconcile actions to a dict.

    The agent applies from its own threads while a test reads: `exports` is a snapshot taken under
    a lock (iterating the live dict could meet it changing size mid-way).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._exports: dict[str, Export] = {}
        self.applied: list[Action] = []
        self.logged_in: dict[str, int] = {}     # target IQN -> initiators logged in

    @property
    def exports(self) -> dict[str, Export]:
        with self._lock:
            return dict(self._exports)

    def actual_exports(self) -> list[Export]:
        with self._lock:
            return list(self._exports.values())

    def sessions(self, target_iqn: str) -> int:
        with self._lock:
            return self.logged_in.get(target_iqn, 0) if target_iqn in self._exports else 0

    def apply(self, actions: Sequence[Action]) -> None:
        with self._lock:
            for a in actions:
                self.applied.append(a)
                if isinstance(a, DeleteExport):
                    del self._exports[a.export.target_iqn]
                elif isinstance(a, (CreateExport, SetInitiators)):
                    self._exports[a.export.target_iqn] = a.export


def wait_for(pred: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


class UnitHarness:
    """Runs a UnitAgent on its own asyncio loop in a thread so the test can use blocking httpx."""

    def __init__(self, station: Any, name: str = "unit-z", parts: list[Partition] | None = None,
                 signer: Signer | None = None):
        import threading

        self.lio = MemoryLio()
        self.parts = list(PARTS if parts is None else parts)
        self.loop = asyncio.new_event_loop()
        # the unit's own key lives beside the station's data directory, as on a real unit's disk:
        # the same name gets the same key again after a "reboot"
        key, _ = load_or_create(station.data_dir.parent / f"unit-{name}" / "unit.key")
        self.agent = UnitAgent(name, station.key, ("127.0.0.1", station.udp_port), "127.0.0.1", 3260,
                               self.lio, lambda: list(self.parts), signer=signer or Signer(name, key),
                               station_pin=StationPin(load_public_key(station.data_dir / "station_identity.pub")))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.agent.open("127.0.0.1", 0))

    def call(self, coro: Any, timeout: float = 40) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.call(self.agent.announce())

    def stop(self) -> bool:
        return bool(self.call(self.agent.shutdown()))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def volumes(station: Any) -> list[dict[str, Any]]:
    return station.get("/api/v1/volumes").json()


def request(station: Any, size: Any, host: str = "host-b", iqn: str = "iqn.2026-11.org.dvsan.lab:host-b"
            ) -> httpx.Response:
    return httpx.post(station.url + "/api/v1/assignments?wait=60", headers=station.auth, timeout=30, json={
        "host": host, "initiator_iqn": iqn, "host_address": "127.0.0.2", "size": size})


def online(station: Any, n: int) -> Any:
    return wait_for(lambda: (v := volumes(station)) and sum(x["state"] == "online" for x in v) == n and v)


def test_gp_startup_builds_pool_with_exact_lbas(station):
    u = UnitHarness(station)
    try:
        u.start()
        vols = online(station, 3)
        got = {v["device"]: (v["start_lba"], v["length_blocks"], v["end_lba"], v["size_bytes"]) for v in vols}
        assert got == {p.device: (p.start_lba, p.length_blocks, p.end_lba, p.size_bytes) for p in PARTS}
        units = station.get("/api/v1/units").json()
        assert [(x["name"], x["state"]) for x in units] == [("unit-z", "online")]
        # one volume by its id, as the listing shows it; an unknown id: 404
        assert station.get(f"/api/v1/volumes/{vols[0]['id']}").json() == vols[0]
        r = station.get("/api/v1/volumes/99999")
        assert r.status_code == 404 and r.json()["detail"] == "no volume with id 99999"
        # the station pushed the (empty) desired state after storage info
        wait_for(lambda: u.agent.exports_applied >= 1)
    finally:
        u.close()


def test_gp_best_fit_assignment_export_and_release(station):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        r = request(station, "1GiB")
        assert r.status_code == 201, r.text
        a = r.json()
        assert (a["device"], a["size_bytes"], a["unit"]) == ("vdz2", 1280 * MiB, "unit-z")
        assert (a["start_lba"], a["end_lba"]) == (PARTS[1].start_lba, PARTS[1].end_lba)
        assert a["target_iqn"] == "iqn.2026-11.org.dvsan:unit-z:vdz2"
        # the unit already holds the export when the host gets its answer
        assert u.lio.exports[a["target_iqn"]].initiators == ("iqn.2026-11.org.dvsan.lab:host-b",)
        # a second host gets a different volume
        r2 = request(station, "1GiB", "host-c", "iqn.2026-11.org.dvsan.lab:host-c")
        assert r2.status_code == 201 and r2.json()["device"] == "vdz3"
        assert len(u.lio.exports) == 2
        rel = httpx.delete(f"{station.url}/api/v1/assignments/{a['id']}?wait=60", headers=station.auth, timeout=30)
        assert rel.status_code == 200 and rel.json()["unit_confirmed"] is True
        assert a["target_iqn"] not in u.lio.exports and len(u.lio.exports) == 1
        free = [v for v in volumes(station) if v["assigned_to"] is None]
        assert {v["device"] for v in free} == {"vdz1", "vdz2"}
    finally:
        u.close()


def test_ep_too_large_request_names_largest_free_and_changes_nothing(station):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        before = volumes(station)
        r = request(station, "5GiB")
        assert r.status_code == 409
        assert "largest free volume is 2.0 GiB (unit-z:vdz3)" in r.json()["detail"]
        assert volumes(station) == before and u.lio.exports == {}
    finally:
        u.close()


def test_ep_bad_rest_bodies_are_422_and_change_nothing(station):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        before = volumes(station)
        bad = [
            {"host": "host-b", "initiator_iqn": "iqn.2026-11.org.dvsan.lab:host-b", "host_address": "127.0.0.2", "size": "lots"},
            {"host": "host-b", "initiator_iqn": "iqn.2026-11.org.dvsan.lab:host-b", "host_address": "127.0.0.2", "size": -5},
            {"host": "Host B", "initiator_iqn": "iqn.2026-11.org.dvsan.lab:host-b", "host_address": "127.0.0.2", "size": "1G"},
            {"host": "host-b", "initiator_iqn": "not-an-iqn", "host_address": "127.0.0.2", "size": "1G"},
            {"host": "host-b", "initiator_iqn": "iqn.2026-11.org.dvsan.lab:host-b", "host_address": "nowhere", "size": "1G"},
            {"host": "host-b", "initiator_iqn": "iqn.2026-11.org.dvsan.lab:host-b", "host_address": "127.0.0.2"},
            {"host": "host-b", "initiator_iqn": "iqn.2026-11.org.dvsan.lab:host-b", "host_address": "127.0.0.2", "size": "1G", "extra": 1},
        ]
        for body in bad:
            r = httpx.post(station.url + "/api/v1/assignments?wait=60", headers=station.auth, json=body, timeout=10)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["detail"], body
        r = httpx.post(station.url + "/api/v1/assignments?wait=60", content=b"{not json", timeout=10,
                       headers={**station.auth, "content-type": "application/json"})
        assert r.status_code == 422
        assert httpx.delete(station.url + "/api/v1/assignments/999", headers=station.auth, timeout=10).status_code == 404
        assert station.get("/api/v1/assignments/999").status_code == 404
        assert station.get("/api/v1/units/nope").status_code == 404
        assert volumes(station) == before and u.lio.exports == {}
    finally:
        u.close()


def test_ep_forged_malformed_and_replayed_datagrams_leave_pool_unchanged(station):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        before = volumes(station)
        stats0 = station.get("/api/v1/protocol/stats").json()
        target = ("127.0.0.1", station.udp_port)
        evil = Partition(device="vdz9", disk="vdz", number=9, start_lba=0, length_blocks=8, end_lba=7,
                         block_size=512, size_bytes=4096)
        # signed by the unit's own key, as the station requires (tests/component/test_enrolment.py)
        signed = seal(u.agent.signer, MsgType.STORAGE_INFO, 777, 0, STATION,
                      {"unit": "unit-z", "partitions": [evil.to_wire()]}, int(time.time() * 1000))
        good = encode(station.key, MsgType.STORAGE_INFO, 777, signed)[0]
        forged = encode(b"x" * 32, MsgType.STORAGE_INFO, 778, {"unit": "unit-z", "partitions": []})[0]
        tampered = bytearray(good)
        tampered[50] ^= 0xFF
        old = encode(station.key, MsgType.SHUTDOWN, 779, {"unit": "unit-z"},
                     now_ms=int(time.time() * 1000) - 3_600_000)[0]
        sent = [forged, bytes(tampered), good[:30], good[:-1], b"", os.urandom(200), b"A" * 9000, old]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            for d in sent:
                s.sendto(d, target)
            s.sendto(good, target)      # the one good datagram, now applied...
        wait_for(lambda: any(v["device"] == "vdz9" for v in volumes(station)))
        # every bad datagram was counted as dropped (a count, not a pause, says they all arrived)
        wait_for(lambda: station.get("/api/v1/protocol/stats").json().get("dropped", 0)
                 - stats0.get("dropped", 0) >= len(sent))
        # ...then replayed byte for byte: refused (and the pool does not go back and forth)
        u.parts = list(PARTS)
        u.call(u.agent.send_storage_info(("127.0.0.1", station.udp_port)))
        online(station, 3)
        replayed0 = station.get("/api/v1/protocol/stats").json().get("dropped_replayed", 0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(good, target)
        wait_for(lambda: station.get("/api/v1/protocol/stats").json().get("dropped_replayed", 0) > replayed0)
        stats = station.get("/api/v1/protocol/stats").json()
        dropped = stats.get("dropped", 0) - stats0.get("dropped", 0)
        assert dropped >= len(sent), stats
        assert stats.get("dropped_replayed", 0) >= 1 and stats.get("dropped_bad-signature", 0) >= 2
        assert stats.get("dropped_stale", 0) >= 1 and stats.get("dropped_truncated", 0) >= 2
        after = {v["device"]: v["state"] for v in volumes(station)}
        assert after == {"vdz1": "online", "vdz2": "online", "vdz3": "online", "vdz9": "missing"}
        assert [(v["device"], v["start_lba"]) for v in volumes(station) if v["state"] == "online"] == \
            [(v["device"], v["start_lba"]) for v in before]
        assert station.get("/healthz").status_code == 200
    finally:
        u.close()


def test_ep_inconsistent_storage_info_is_refused_whole(station):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        before = volumes(station)
        bad = dict(PARTS[0].to_wire(), end_lba=1)   # end does not follow from start + length

        async def send() -> dict[str, Any]:
            assert u.agent.endpoint is not None
            return await u.agent.endpoint.send(("127.0.0.1", station.udp_port), MsgType.STORAGE_INFO,
                                               {"unit": "unit-z", "partitions": [PARTS[1].to_wire(), bad]})

        ack = u.call(send())
        assert ack["status"] == "error" and "end LBA" in ack["error"]
        assert volumes(station) == before
    finally:
        u.close()


def test_gp_shutdown_marks_offline_and_restart_reexports(station):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        a = request(station, "1GiB").json()
        assert u.stop() is True
        vols = volumes(station)
        assert {v["state"] for v in vols} == {"offline"}
        assert station.get("/api/v1/units/unit-z").json()["state"] == "offline"
        # an offline pool gives nothing out
        r = request(station, "100M", "host-c", "iqn.2026-11.org.dvsan.lab:host-c")
        assert r.status_code == 409
        assert station.get(f"/api/v1/assignments/{a['id']}").json()["volume_state"] == "offline"
    finally:
        u.close()
    # the unit comes back with an empty LIO (e.g. after a reboot): the assignment is re-exported
    u2 = UnitHarness(station)
    try:
        u2.start()
        online(station, 3)
        wait_for(lambda: a["target_iqn"] in u2.lio.exports)
        assert u2.lio.exports[a["target_iqn"]].initiators == ("iqn.2026-11.org.dvsan.lab:host-b",)
    finally:
        u2.close()


def test_ep_unit_that_does_not_confirm_gets_volume_back(station):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        # the agent dies without a word: its socket is gone, the station still thinks it is online
        u.agent.endpoint.close()  # type: ignore[union-attr]
        t0 = time.monotonic()
        # NOTE: the answer comes after two export timeouts (15 s each: the push, then the undo's
        # push): the client waits longer than that, the bound allows for a loaded machine
        r = httpx.post(station.url + "/api/v1/assignments?wait=60", headers=station.auth, timeout=90, json={
            "host": "host-b", "initiator_iqn": "iqn.2026-11.org.dvsan.lab:host-b",
            "host_address": "127.0.0.2", "size": "1GiB"})
        assert r.status_code == 503, r.text
        assert "returned to the pool" in r.json()["detail"]
        assert time.monotonic() - t0 < 60
        assert station.get("/api/v1/assignments").json() == []
        assert all(v["assigned_to"] is None for v in volumes(station))
    finally:
        u.close()


def test_gp_pool_survives_station_restart(station):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        a = request(station, "1GiB").json()
    finally:
        u.close()
    station.stop()
    station.start()
    assert station.get(f"/api/v1/assignments/{a['id']}").json()["target_iqn"] == a["target_iqn"]
    assert len(volumes(station)) == 3


def test_ep_message_types_a_station_does_not_take(station):
    signer = Signer("unit-z", load_or_create(station.data_dir.parent / "unit-unit-z" / "unit.key")[0])

    async def go() -> dict[str, Any]:
        ep = await Endpoint.open(station.key, lambda m, p: asyncio.sleep(0), "127.0.0.1", 0,
                                 signer=signer, recipient=lambda _body: STATION)
        try:
            return await ep.send(("127.0.0.1", station.udp_port), MsgType.EXPORTS,
                                 {"unit": "unit-z", "exports": []}, timeout=5)
        finally:
            ep.close()

    ack = asyncio.run(go())
    assert ack["status"] == "error" and "does not take EXPORTS" in ack["error"]
    assert volumes(station) == []
