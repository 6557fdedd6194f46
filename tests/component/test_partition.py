"""Partitioning a unit's disk through the REST API: the real station process on loopback with its
SQLite file, the real UnitAgent protocol loop and its real Partitioner running sfdisk on an image
file that stands in for the disk (the lab does it on a real disk under a real kernel: tests/lab).
"""

import asyncio
import hashlib
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from dvsan.model import Partition
from dvsan.protocol import MsgType
from tests.component.conftest import StationProc, free_port
from tests.component.test_station_autoconf import MiB, UnitHarness, request, volumes, wait_for
from tests.component.test_tasks_api import user_token
from unit_agent.inventory import DiskUse
from unit_agent.partition import Partitioner, Sfdisk, _AgentDevices, _AgentSink

DISK_BYTES = 64 * MiB
FOUR = {"label": "gpt", "create": [{"size_bytes": 8 * MiB}, {"size_bytes": 8 * MiB},
                                   {"size_bytes": 12 * MiB}, {"size_bytes": 16 * MiB, "name": "dvsan-4"}]}


def image_parts(img: Path) -> list[Partition]:
    """What the unit offers: every partition of the image's table (as its inventory would)."""
    t = Sfdisk().read(str(img))
    if t is None:
        return []
    return [Partition(device=f"vdz{p.number}", disk="vdz", number=p.number, start_lba=p.start,
                      length_blocks=p.size, end_lba=p.end, block_size=t.sector_size,
                      size_bytes=p.size * t.sector_size, uid=p.uuid.lower()) for p in t.parts]


def unit_with_disk(station: Any, root: Path, name: str = "unit-z") -> tuple[UnitHarness, Path]:
    """A unit whose one disk `vdz` is an empty image file; what holds it comes from its LIO only."""
    root.mkdir(exist_ok=True)
    img = root / "vdz"
    with open(img, "wb") as f:
        f.truncate(DISK_BYTES)
    u = UnitHarness(station, name, parts=[])
    agent = u.agent
    agent.inventory = lambda: image_parts(img)   # type: ignore[method-assign]
    agent.partitioner = Partitioner(agent.name, _AgentDevices(agent), sink=_AgentSink(agent),
                                    disks=lambda: ["vdz"], path_of=lambda d: str(root / d),
                                    use_of=lambda d: DiskUse(d, DISK_BYTES, 512, "img-serial-1", None, [], {}),
                                    pool=lambda: agent.pin.pool_id)
    return u, img


def layout(station: Any, body: Any, headers: dict[str, str] | None = None, wait: float | None = 60,
           disk: str = "vdz", unit: str = "unit-z") -> httpx.Response:
    q = f"?wait={wait}" if wait else ""
    return httpx.post(f"{station.url}/api/v1/units/{unit}/disks/{disk}/layout{q}", json=body,
                      headers=headers or station.auth, timeout=60)


def disks(station: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(f"{station.url}/api/v1/units/unit-z/disks", headers=headers or station.auth, timeout=10)


def reported(station: Any) -> dict[str, Any]:
    return wait_for(lambda: (d := disks(station).json()) and d[0])  # type: ignore[no-any-return]


def tasks(station: Any) -> list[dict[str, Any]]:
    return station.get("/api/v1/tasks?kind=partition").json()  # type: ignore[no-any-return]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_gp_an_empty_disk_gets_four_partitions_and_the_pool_follows(station, tmp_path):
    u, img = unit_with_disk(station, tmp_path / "disks")
    try:
        u.start()
        d = reported(station)
        assert (d["name"], d["id"], d["label"], d["partitions"], d["size_bytes"]) == (
            "vdz", "img-serial-1", None, [], DISK_BYTES)
        r = layout(station, FOUR, wait=None)
        assert r.status_code == 202 and r.headers["Location"].startswith("/api/v1/tasks/"), r.text
        t = httpx.get(f"{station.url}{r.headers['Location']}?wait=60", headers=station.auth, timeout=70).json()
        assert t["state"] == "succeeded", t
        assert (t["kind"], t["object"], t["step"], t["total_steps"]) == ("partition", "/units/unit-z/disks/vdz", 7, 7)
        assert t["result"]["created"] == ["vdz1", "vdz2", "vdz3", "vdz4"]
        table = Sfdisk().read(str(img))
        assert table is not None
        want = {f"vdz{p.number}": (p.start, p.end, p.size * 512) for p in table.parts}
        d = disks(station).json()[0]
        assert {p["device"]: (p["start_lba"], p["end_lba"], p["size_bytes"]) for p in d["partitions"]} == want
        assert d["label"] == "gpt" and d["partitions"][3]["name"] == "dvsan-4"
        # the unit reported its storage before the task ended: the pool has the four already
        vols = {v["device"]: (v["start_lba"], v["end_lba"], v["size_bytes"]) for v in volumes(station)}
        assert vols == want
    finally:
        u.close()


@pytest.mark.parametrize(("body", "where"), [
    ({}, "changes nothing"),
    ({"label": "dos"}, "label"),
    ({"create": [{"size_bytes": 1000}]}, "size_bytes"),
    ({"create": [{"size_bytes": "1G"}]}, "size_bytes"),
    ({"create": [{"size_bytes": MiB, "colour": "red"}]}, "colour"),
    ({"delete": [1, 1]}, "twice"),
    ({"delete": [0]}, "delete"),
    ({"delete": [True]}, "delete"),
    ([1], ""),
])
def test_ep_a_bad_layout_is_a_clear_422_and_starts_nothing(station, tmp_path, body, where):
    u, img = unit_with_disk(station, tmp_path / "disks")
    try:
        u.start()
        reported(station)
        before = sha(img)
        r = layout(station, body)
        assert r.status_code == 422, r.text
        assert where in r.text
        assert tasks(station) == [] and sha(img) == before
    finally:
        u.close()


def test_ep_a_viewer_reads_disks_but_gets_403_on_a_layout(station, tmp_path):
    u, img = unit_with_disk(station, tmp_path / "disks")
    try:
        u.start()
        reported(station)
        viewer = user_token(station, tmp_path, "vera", "viewer")
        assert disks(station, viewer).status_code == 200
        r = layout(station, FOUR, viewer)
        assert r.status_code == 403 and "disks.write" in r.text, r.text
        assert tasks(station) == [] and Sfdisk().read(str(img)) is None
        # an operator by grant on this one disk may; on another disk not
        op = user_token(station, tmp_path, "otto", "viewer")
        g = httpx.post(station.url + "/api/v1/grants", headers=station.auth, timeout=10,
                       json={"user": "otto", "role": "operator", "object": "/units/unit-z/disks/vdz"})
        assert g.status_code == 201, g.text
        assert layout(station, {"label": "gpt"}, op, disk="vdy").status_code == 403
        assert layout(station, {"label": "gpt"}, op).status_code == 200
    finally:
        u.close()


def test_ep_an_offline_unit_is_503_and_an_unknown_disk_404(station, tmp_path):
    u, img = unit_with_disk(station, tmp_path / "disks")
    try:
        u.start()
        reported(station)
        r = layout(station, FOUR, disk="vdq")
        assert r.status_code == 404 and "reported no disk vdq" in r.text
        assert u.stop()
        r = layout(station, FOUR)
        assert r.status_code == 503 and "unit unit-z is offline" in r.json()["detail"], r.text
        assert tasks(station) == [] and Sfdisk().read(str(img)) is None
    finally:
        u.close()


def test_ep_a_partition_exported_to_a_host_is_refused_naming_it_and_the_table_is_kept(station, tmp_path):
    u, img = unit_with_disk(station, tmp_path / "disks")
    try:
        u.start()
        reported(station)
        assert layout(station, FOUR).status_code == 200
        a = request(station, 14 * MiB)
        assert a.status_code == 201, a.text
        dev = a.json()["device"]
        assert dev == "vdz4"
        wait_for(lambda: dev in {e.device for e in u.lio.actual_exports()})
        before = sha(img)
        r = layout(station, {"delete": [2, 4]})
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert f"vdz4 is exported by LIO as {a.json()['target_iqn']}" in detail, detail
        assert "vdz4 is assigned to a host" in detail and "vdz2" not in detail.split("refused")[1]
        assert "the table is unchanged" in detail
        assert sha(img) == before
        d = disks(station).json()[0]
        p4 = next(p for p in d["partitions"] if p["device"] == "vdz4")
        assert p4["assigned_to"] == "host-b" and any("exported by LIO" in w for w in p4["in_use"])
        t = tasks(station)[0]
        assert (t["state"], t["error_kind"]) == ("failed", "Conflict")
    finally:
        u.close()


@pytest.fixture
def quick_station(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A station that waits 2 s (not 15) for a unit to take an order."""
    monkeypatch.setenv("DVSAN_EXPORT_TIMEOUT", "2")
    st = StationProc(tmp_path / "station", free_port(), free_port(socket.SOCK_DGRAM))
    st.data_dir.mkdir()
    st.start()
    yield st
    st.stop()


def test_ep_a_unit_that_never_answers_fails_the_task_and_a_second_change_meanwhile_is_409(quick_station, tmp_path):
    station = quick_station
    u, img = unit_with_disk(station, tmp_path / "disks")
    try:
        u.start()
        reported(station)
        hung = asyncio.Event()

        async def never(mtype: MsgType, body: dict[str, Any]) -> dict[str, Any]:
            hung.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")
        assert u.agent.partitioner is not None
        u.agent.partitioner.handle = never  # type: ignore[method-assign]
        r = layout(station, FOUR, wait=None)
        assert r.status_code == 202
        first = r.json()["id"]
        busy = layout(station, {"label": "gpt"}, wait=None)
        assert busy.status_code == 409 and f"task {first} (partition)" in busy.text, busy.text
        t = httpx.get(f"{station.url}/api/v1/tasks/{first}?wait=30", headers=station.auth, timeout=40).json()
        assert t["state"] == "failed" and t["error_kind"] == "Unavailable", t
        assert "did not take the partitioning of vdz within 2 s" in t["error"] and "nothing was changed" in t["error"]
        assert Sfdisk().read(str(img)) is None
    finally:
        u.close()


def test_ep_an_old_unit_without_disks_is_taken_and_cannot_be_partitioned(station, tmp_path):
    u = UnitHarness(station)
    try:
        u.start()
        wait_for(lambda: len(volumes(station)) == 3)
        assert disks(station).json() == []
        r = layout(station, FOUR)
        assert r.status_code == 409 and "does not report its disks" in r.text
    finally:
        u.close()


@pytest.mark.parametrize("bad", ["vdz", [{"name": "../x", "size_bytes": 1, "sector_size": 512}],
                                 [{"name": "vdz", "size_bytes": 1, "sector_size": 7}]])
def test_ep_a_malformed_disks_report_gets_an_error_and_changes_nothing(station, tmp_path, bad):
    u, _ = unit_with_disk(station, tmp_path / "disks")
    try:
        u.start()
        reported(station)

        async def send() -> dict[str, Any]:
            assert u.agent.endpoint is not None
            return await u.agent.endpoint.send(u.agent.station, MsgType.STORAGE_INFO,
                                               {"unit": "unit-z", "partitions": [], "disks": bad}, timeout=10)
        ack = u.call(send())
        assert ack["status"] == "error" and "disks" in ack["error"], ack
        assert disks(station).json()[0]["name"] == "vdz"
    finally:
        u.close()
