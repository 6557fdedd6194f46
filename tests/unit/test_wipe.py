"""unit_agent.wipe on real files: zeroing (O_DIRECT and buffered), progress, cancel, the refusals
side by side with the good path, one wipe per device, devices at once (issue 6)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dvsan.errors import Conflict, InvalidInput, Unavailable
from dvsan.model import Export, Partition
from dvsan.naming import target_iqn
from dvsan.protocol import Message, MsgType
from tests.unit.test_inventory import FakeSys
from unit_agent import wipe as wipe_mod
from unit_agent.agent import UnitAgent
from unit_agent.inventory import Inventory
from unit_agent.wipe import WipeOrder, Wiper, WipeStatus, _AgentDevices, _Job

UNIT = "unit-a"
POOL = "5b0e7c1a-1111-4222-8333-944455556666"
MiB = 1 << 20
# A real filesystem (O_DIRECT works on ext4/xfs); tmpfs for the page-cache path.
REAL_FS = Path("/var/tmp")
TMPFS = Path("/dev/shm")


def part(device: str, number: int = 1, start: int = 2048, size: int = 8 * MiB, uid: str = "") -> Partition:
    n = size // 512
    return Partition(device, "vdb", number, start, n, start + n - 1, 512, size,
                     uid or f"0c1d2e3f-0000-4000-8000-00000000000{number}")


@dataclass
class FakeDevices:
    """The DevicePort: what the inventory and LIO say, set by each test."""

    offered: list[Partition] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    held: list[Export] = field(default_factory=list)
    logged_in: dict[str, int] = field(default_factory=dict)

    def inventory(self) -> Inventory:
        return Inventory(list(self.offered), dict(self.excluded))

    def exports(self) -> list[Export]:
        return list(self.held)

    def sessions(self, target: str) -> int:
        return self.logged_in.get(target, 0)


class Sink:
    """Records every WIPE_STATUS; fails the first `fail_final` final ones (no ACK)."""

    def __init__(self, fail_final: int = 0):
        self.sent: list[tuple[WipeStatus, bool]] = []
        self.fail_final = fail_final

    async def __call__(self, status: WipeStatus, final: bool) -> None:
        self.sent.append((status, final))
        if final and self.fail_final > 0:
            self.fail_final -= 1
            raise Unavailable("no acknowledgement of WIPE_STATUS")

    def finals(self) -> list[WipeStatus]:
        return [s for s, f in self.sent if f]


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="dvsan-wipe-test-", dir=REAL_FS))
    yield d
    shutil.rmtree(d)


def volume(d: Path, p: Partition, fill: bytes = b"\xa5") -> Path:
    """A file standing for the device, full of data."""
    f = d / p.device
    f.write_bytes(fill * p.size_bytes)
    return f


def make(d: Path, *parts: Partition, sink: Sink | None = None, **kw: Any) -> tuple[Wiper, FakeDevices, Sink]:
    devices = FakeDevices(offered=list(parts))
    sink = sink or Sink()
    w = Wiper(UNIT, devices, sink=sink, pool=lambda: POOL, path_of=lambda dev: str(d / dev), **kw)
    w.report_interval = 0.02
    w.final_retry_first = 0.01
    return w, devices, sink


def order(p: Partition, wipe_id: str = "w-1", **over: Any) -> dict[str, Any]:
    return {"unit": UNIT, "pool_id": POOL, "device": p.device, "extent": p.extent.to_wire(),
            "wipe_id": wipe_id, **over}


def is_zero(f: Path) -> bool:
    data = f.read_bytes()
    return data.count(0) == len(data)


class Gate:
    """Wraps os.pwrite: writes of the gated paths wait until `open` (the wipe stays running)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, barrier: int = 0):
        self.opened = threading.Event()
        self.calls = 0
        self.barrier = threading.Barrier(barrier) if barrier else None
        real = os.pwrite

        def pwrite(fd: int, data: Any, offset: int) -> int:
            self.calls += 1
            if self.barrier is not None and offset == 0:
                self.barrier.wait(10)       # broken (raises) unless both wipes write at once
            if not self.opened.wait(10):
                raise OSError(errno.EIO, "gate never opened")
            return real(fd, data, offset)

        monkeypatch.setattr(wipe_mod.os, "pwrite", pwrite)


# ---- the good path ------------------------------------------------------------------------

def test_gp_wipe_zeroes_with_o_direct_and_reports_rising_progress(workdir: Path) -> None:
    p = part("vdb1", size=24 * MiB)
    f = volume(workdir, p)
    w, _dev, sink = make(workdir, p)
    w.chunk = 1 * MiB
    seen: list[int] = []

    async def scenario() -> tuple[dict[str, Any], WipeStatus | None]:
        ack = await w.order(order(p))
        while w.running(p.device):
            s = w.status(p.device)
            if s is not None:
                seen.append(s.done_bytes)
            await asyncio.sleep(0)
        return ack, await w.wait(p.device)

    ack, final = asyncio.run(scenario())
    assert ack == {"status": "accepted", "wipe_id": "w-1", "done_bytes": 0,
                   "total_bytes": p.size_bytes, "method": "direct"}
    assert final is not None and final.state == "succeeded" and final.error is None
    assert final.done_bytes == final.total_bytes == p.size_bytes
    assert is_zero(f) and f.stat().st_size == p.size_bytes
    assert seen == sorted(seen) and all(0 <= b <= p.size_bytes for b in seen)
    # every report rises, and exactly one final report ends them, with everything done
    reported = [s.done_bytes for s, _ in sink.sent]
    assert reported == sorted(reported)
    assert [fin for _, fin in sink.sent].count(True) == 1 and sink.sent[-1][1]
    assert sink.finals()[0].to_wire() == {
        "unit": UNIT, "device": "vdb1", "wipe_id": "w-1", "state": "succeeded",
        "done_bytes": p.size_bytes, "total_bytes": p.size_bytes, "method": "direct",
        "elapsed_s": round(final.elapsed_s, 3)}


def test_gp_running_reports_come_while_the_wipe_runs(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = part("vdb1", size=4 * MiB)
    volume(workdir, p)
    w, _dev, sink = make(workdir, p)
    gate = Gate(monkeypatch)

    async def scenario() -> None:
        assert (await w.order(order(p)))["status"] == "accepted"
        await asyncio.sleep(0.15)           # the loop keeps running while the thread is stuck
        running = [s for s, fin in sink.sent if not fin]
        assert len(running) >= 3 and {s.state for s in running} == {"running"}
        gate.opened.set()
        await w.wait(p.device)

    asyncio.run(scenario())
    assert sink.finals()[0].state == "succeeded"


def test_gp_buffered_fallback_where_o_direct_is_refused(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    # NOTE: old kernels' tmpfs refuses O_DIRECT at open with EINVAL; this kernel's may take it,
    # so the refusal is made here, and the real tmpfs is wiped in the next test either way.
    p = part("vdb1", size=3 * MiB)
    f = volume(workdir, p)
    w, _dev, _sink = make(workdir, p)
    real_open = os.open

    def no_direct(path: Any, flags: int, *a: Any) -> int:
        if flags & os.O_DIRECT and str(path) == str(f):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a)

    monkeypatch.setattr(wipe_mod.os, "open", no_direct)

    async def scenario() -> tuple[dict[str, Any], WipeStatus | None]:
        return await w.order(order(p)), await w.wait(p.device)

    with caplog.at_level(logging.WARNING, logger="unit_agent.wipe"):
        ack, final = asyncio.run(scenario())
    assert ack["method"] == "buffered"
    assert final is not None and final.state == "succeeded" and final.method == "buffered"
    assert is_zero(f)
    assert "does not take O_DIRECT" in caplog.text and "page cache" in caplog.text


def test_gp_wipe_on_tmpfs(monkeypatch: pytest.MonkeyPatch) -> None:
    if not TMPFS.is_dir():
        pytest.skip("no tmpfs at /dev/shm")
    d = TMPFS / f"dvsan-wipe-test-{os.getpid()}"
    d.mkdir()
    try:
        p = part("vdb1", size=2 * MiB)
        f = volume(d, p)
        w, _dev, _sink = make(d, p)

        async def scenario() -> WipeStatus | None:
            assert (await w.order(order(p)))["status"] == "accepted"
            return await w.wait(p.device)

        final = asyncio.run(scenario())
        assert final is not None and final.state == "succeeded" and final.method in ("direct", "buffered")
        assert is_zero(f)
    finally:
        for x in d.iterdir():
            x.unlink()
        d.rmdir()


def test_gp_direct_write_refused_midway_goes_on_buffered(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = part("vdb1", size=4 * MiB)
    f = volume(workdir, p)
    w, _dev, _sink = make(workdir, p)
    w.chunk = 1 * MiB
    real = os.pwrite
    refused = []

    def pwrite(fd: int, data: Any, offset: int) -> int:
        import fcntl
        if offset == 2 * MiB and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(wipe_mod.os, "pwrite", pwrite)

    async def scenario() -> WipeStatus | None:
        assert (await w.order(order(p)))["method"] == "direct"
        return await w.wait(p.device)

    final = asyncio.run(scenario())
    assert refused == [2 * MiB]
    assert final is not None and final.state == "succeeded" and final.method == "buffered"
    assert is_zero(f)


def test_gp_zeroout_refused_by_the_device_falls_back_to_writing(workdir: Path) -> None:
    # A regular file answers BLKZEROOUT with ENOTTY, as a device without it answers EOPNOTSUPP.
    p = part("vdb1", size=2 * MiB)
    f = volume(workdir, p)
    w, _dev, _sink = make(workdir, p)

    async def scenario() -> _Job:
        job = _Job(WipeOrder.from_wire(order(p)), asyncio.get_running_loop().create_future())
        job.method = "zeroout"
        fd = os.open(f, os.O_WRONLY | os.O_DIRECT)
        await asyncio.to_thread(w._zero, job, fd, str(f))
        return job

    job = asyncio.run(scenario())
    assert job.state == "succeeded" and job.method == "direct" and job.done_bytes == p.size_bytes
    assert is_zero(f)


def test_gp_a_restarted_unit_wipes_again_on_the_same_order(workdir: Path) -> None:
    p = part("vdb1", size=2 * MiB)
    f = volume(workdir, p)
    async def scenario(w: Wiper) -> tuple[dict[str, Any], WipeStatus | None]:
        return await w.order(order(p, "w-restart")), await w.wait(p.device)

    for _attempt in range(2):                  # a fresh Wiper: a unit agent after a restart
        f.write_bytes(b"\x01" * p.size_bytes)
        w, _dev, _sink = make(workdir, p)
        ack, final = asyncio.run(scenario(w))
        assert ack["status"] == "accepted" and final is not None and final.state == "succeeded"
        assert is_zero(f)

    async def again() -> dict[str, Any]:         # and the same Wiper, once the wipe has ended
        await w.wait(p.device)
        return await w.order(order(p, "w-restart"))

    f.write_bytes(b"\x02" * p.size_bytes)
    assert asyncio.run(again())["status"] == "accepted"


def test_gp_final_status_is_retried_until_acknowledged(workdir: Path) -> None:
    p = part("vdb1", size=1 * MiB)
    volume(workdir, p)
    w, _dev, sink = make(workdir, p, sink=Sink(fail_final=3))

    async def scenario() -> None:
        await w.order(order(p))
        await w.wait(p.device)
        for _ in range(200):
            if len(sink.finals()) == 4:
                break
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    finals = sink.finals()
    assert len(finals) == 4 and {s.state for s in finals} == {"succeeded"}
    assert sink.fail_final == 0


# ---- cancel -------------------------------------------------------------------------------

def test_gp_cancel_stops_between_chunks(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = part("vdb1", size=8 * MiB)
    f = volume(workdir, p)
    w, _dev, sink = make(workdir, p)
    w.chunk = 1 * MiB
    gate = Gate(monkeypatch)
    cancel = {"unit": UNIT, "device": p.device, "wipe_id": "w-1"}

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], WipeStatus | None]:
        await w.order(order(p))
        while gate.calls == 0:                                  # the first write is in flight
            await asyncio.sleep(0.001)
        other = w.cancel({**cancel, "wipe_id": "w-other"})      # not the running wipe: no effect
        ack = w.cancel(cancel)
        gate.opened.set()                                       # the write in flight completes
        final = await w.wait(p.device)
        return other, ack, w.cancel(cancel), final

    other, ack, after, final = asyncio.run(scenario())
    assert other["status"] == "not-running" and "w-1" in other["reason"]
    assert ack == {"status": "cancelling", "wipe_id": "w-1", "done_bytes": 0, "total_bytes": p.size_bytes}
    assert final is not None and final.state == "cancelled"
    assert final.done_bytes == 1 * MiB < p.size_bytes           # one chunk, then it stopped
    assert sink.finals()[-1].state == "cancelled"
    assert after["status"] == "not-running" and after["state"] == "cancelled"
    assert f.read_bytes()[1 * MiB:] == b"\xa5" * (p.size_bytes - 1 * MiB)


def test_ep_cancel_malformed_or_misaddressed(workdir: Path) -> None:
    w, _dev, _sink = make(workdir)
    with pytest.raises(Conflict):
        w.cancel({"unit": "unit-b", "device": "vdb1", "wipe_id": "w-1"})
    with pytest.raises(InvalidInput):
        w.cancel({"unit": UNIT, "device": "../sda", "wipe_id": "w-1"})
    with pytest.raises(InvalidInput):
        w.cancel({"unit": UNIT, "device": "vdb1"})
    assert w.cancel({"unit": UNIT, "device": "vdb1", "wipe_id": "w-1"})["status"] == "not-running"


# ---- one at a time per device; devices at once --------------------------------------------

def test_gp_one_wipe_per_device(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = part("vdb1", size=4 * MiB)
    f = volume(workdir, p)
    w, _dev, _sink = make(workdir, p)
    w.chunk = 1 * MiB
    gate = Gate(monkeypatch)

    async def scenario() -> list[dict[str, Any]]:
        # two copies of the order at once (a station retrying), then one under another id
        first, twin = await asyncio.gather(w.order(order(p)), w.order(order(p)))
        other = await w.order(order(p, "w-2"))
        gate.opened.set()
        await w.wait(p.device)
        return [first, twin, other]

    first, twin, other = asyncio.run(scenario())
    assert first["status"] == "accepted"
    assert twin["status"] == "running" and twin["wipe_id"] == "w-1" and "reason" not in twin
    assert other["status"] == "running" and other["wipe_id"] == "w-1"
    assert "w-1" in other["reason"] and "one at a time" in other["reason"]
    assert gate.calls == 4                       # 4 chunks of 1 MiB: written once, not twice
    assert is_zero(f)


def test_gp_two_devices_wipe_at_once(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p1, p2 = part("vdb1", 1, 2048, 4 * MiB), part("vdb2", 2, 10240, 6 * MiB)
    f1, f2 = volume(workdir, p1), volume(workdir, p2)
    w, _dev, sink = make(workdir, p1, p2)
    gate = Gate(monkeypatch, barrier=2)          # each first write waits for the other's
    gate.opened.set()

    async def scenario() -> list[WipeStatus | None]:
        acks = await asyncio.gather(w.order(order(p1, "w-a")), w.order(order(p2, "w-b")))
        assert [a["status"] for a in acks] == ["accepted", "accepted"]
        assert w.running("vdb1") and w.running("vdb2")
        return list(await asyncio.gather(w.wait("vdb1"), w.wait("vdb2")))

    finals = asyncio.run(scenario())
    assert [s.state for s in finals if s] == ["succeeded", "succeeded"]
    assert gate.barrier is not None and not gate.barrier.broken
    assert is_zero(f1) and is_zero(f2)
    assert {(s.device, s.wipe_id) for s in sink.finals()} == {("vdb1", "w-a"), ("vdb2", "w-b")}


# ---- refusals, side by side with the good path ----------------------------------------------

Setup = Callable[[FakeDevices, Partition, Path, dict[str, Any]], None]


def _nothing(d: FakeDevices, p: Partition, f: Path, o: dict[str, Any]) -> None:
    pass


def _not_offered(d: FakeDevices, p: Partition, f: Path, o: dict[str, Any]) -> None:
    d.offered.clear()


def _excluded(why: str) -> Setup:
    def setup(d: FakeDevices, p: Partition, f: Path, o: dict[str, Any]) -> None:
        d.offered.clear()
        d.excluded[p.device] = why
    return setup


def _exported(d: FakeDevices, p: Partition, f: Path, o: dict[str, Any]) -> None:
    d.held.append(Export(p.device, target_iqn(UNIT, p.device)))


def _sessions(d: FakeDevices, p: Partition, f: Path, o: dict[str, Any]) -> None:
    d.logged_in[target_iqn(UNIT, p.device)] = 2


def _extent(**change: Any) -> Setup:
    def setup(d: FakeDevices, p: Partition, f: Path, o: dict[str, Any]) -> None:
        o["extent"] = {**o["extent"], **change}
    return setup


def _device_uid(uid: str) -> Setup:
    def setup(d: FakeDevices, p: Partition, f: Path, o: dict[str, Any]) -> None:
        d.offered[0] = part(p.device, size=p.size_bytes, uid=uid) if uid else Partition(
            p.device, p.disk, p.number, p.start_lba, p.length_blocks, p.end_lba, 512, p.size_bytes, "")
    return setup


def _file_size(d: FakeDevices, p: Partition, f: Path, o: dict[str, Any]) -> None:
    f.write_bytes(b"\xa5" * (p.size_bytes + 4096))


def _no_file(d: FakeDevices, p: Partition, f: Path, o: dict[str, Any]) -> None:
    f.unlink()


def _other_pool(d: FakeDevices, p: Partition, f: Path, o: dict[str, Any]) -> None:
    o["pool_id"] = "another-pool"


REFUSALS: list[tuple[str, Setup, str | None]] = [
    ("good", _nothing, None),
    ("not-offered", _not_offered, "device vdb1 is not offered by this unit"),
    ("mounted", _excluded("mounted on /srv/data"), "in use or not this unit's to wipe: mounted on /srv/data"),
    ("holders", _excluded("in use by dm-0 (holders: dm, md or LVM)"), "in use by dm-0 (holders"),
    ("swap", _excluded("used as swap"), "not this unit's to wipe: used as swap"),
    ("system-disk", _excluded("on excluded disk vda (system disk: holds /)"), "system disk"),
    ("exported", _exported, "still exported in LIO as iqn.2026-11.org.dvsan:unit-a:vdb1: the station must drop"),
    ("sessions", _sessions, "has 2 live iSCSI session(s) on target iqn.2026-11.org.dvsan:unit-a:vdb1"),
    ("start", _extent(start_lba=4096), "extent changed: expected start 4096"),
    ("length", _extent(length_blocks=1024), "extent changed: expected start 2048 length 1024"),
    ("block-size", _extent(block_size=4096), "x 4096 B"),
    ("uid", _extent(uid="11111111-2222-4333-8444-555555555555"), "partition identity changed"),
    ("uid-empty-order", _extent(uid=""), "partition identity changed: expected none"),
    ("uid-empty-device", _device_uid(""), "the disk now has none"),
    ("size", _file_size, f"holds {8 * MiB + 4096} bytes but the extent to wipe is {8 * MiB} bytes"),
    ("missing", _no_file, "cannot find"),
    ("pool", _other_pool, f"this unit belongs to pool {POOL}, not another-pool"),
]


@pytest.mark.parametrize("setup,why", [(s, w) for _n, s, w in REFUSALS], ids=[n for n, _s, _w in REFUSALS])
def test_refusals_side_by_side(workdir: Path, setup: Setup, why: str | None) -> None:
    p = part("vdb1")
    f = volume(workdir, p)
    w, devices, sink = make(workdir, p)
    o = order(p)
    setup(devices, p, f, o)
    before = f.read_bytes() if f.exists() else None

    async def scenario() -> tuple[dict[str, Any], WipeStatus | None]:
        ack = await w.order(o)
        return ack, await w.wait(p.device)

    ack, final = asyncio.run(scenario())
    if why is None:
        assert ack["status"] == "accepted"
        assert final is not None and final.state == "succeeded" and is_zero(f)
        return
    assert ack["status"] == "refused", ack
    assert why in ack["reason"], ack["reason"]
    assert ack["wipe_id"] == "w-1" and ack["done_bytes"] == 0
    assert final is None and not w.running(p.device) and sink.sent == []
    assert (f.read_bytes() if f.exists() else None) == before      # nothing lost


def test_gp_after_a_refusal_the_same_order_goes_through_once_fixed(workdir: Path) -> None:
    p = part("vdb1")
    f = volume(workdir, p)
    w, devices, _sink = make(workdir, p)
    _exported(devices, p, f, {})

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], WipeStatus | None]:
        refused = await w.order(order(p))
        devices.held.clear()                       # the station dropped the export
        accepted = await w.order(order(p))
        return refused, accepted, await w.wait(p.device)

    refused, accepted, final = asyncio.run(scenario())
    assert refused["status"] == "refused" and accepted["status"] == "accepted"
    assert final is not None and final.state == "succeeded" and is_zero(f)


@pytest.mark.parametrize("change,why", [
    ({"wipe_id": ""}, "wipe_id"),
    ({"wipe_id": "a b"}, "wipe_id"),
    ({"wipe_id": 7}, "wipe_id"),
    ({"wipe_id": "x" * 65}, "wipe_id"),
    ({"device": "../sda"}, "device"),
    ({"extent": {"start_lba": 1, "length_blocks": 0, "block_size": 512}}, "empty"),
    ({"extent": {"start_lba": 1, "block_size": 512}}, "length_blocks"),
    ({"extent": {"start_lba": -1, "length_blocks": 8, "block_size": 512}}, "start"),
    ({"extent": {"start_lba": 1, "length_blocks": 8, "block_size": 520}}, "block size"),
    ({"pool_id": ""}, "pool_id"),
    ({"pool_id": None}, "pool_id"),
])
def test_ep_malformed_orders_raise_and_touch_nothing(workdir: Path, change: dict[str, Any], why: str) -> None:
    p = part("vdb1")
    f = volume(workdir, p)
    w, _dev, _sink = make(workdir, p)
    with pytest.raises(InvalidInput, match=why):
        asyncio.run(w.order({**order(p), **change}))
    for missing in ("unit", "pool_id", "device", "extent", "wipe_id"):
        o = order(p)
        del o[missing]
        with pytest.raises(InvalidInput, match=missing):
            asyncio.run(w.order(o))
    with pytest.raises(Conflict, match="unit-b"):
        asyncio.run(w.order(order(p, unit="unit-b")))
    assert not w.running(p.device) and f.read_bytes() == b"\xa5" * p.size_bytes


def test_gp_an_unpinned_unit_takes_any_pool(workdir: Path) -> None:
    p = part("vdb1", size=1 * MiB)
    f = volume(workdir, p)
    w, _dev, _sink = make(workdir, p)
    w.pool = lambda: None

    async def scenario() -> WipeStatus | None:
        assert (await w.order(order(p, pool_id="any-pool")))["status"] == "accepted"
        return await w.wait(p.device)

    final = asyncio.run(scenario())
    assert final is not None and final.state == "succeeded" and is_zero(f)


def test_ep_a_write_error_fails_the_wipe_saying_where(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = part("vdb1", size=4 * MiB)
    volume(workdir, p)
    w, _dev, sink = make(workdir, p)
    w.chunk = 1 * MiB
    real = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if offset >= 2 * MiB:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, data, offset)

    monkeypatch.setattr(wipe_mod.os, "pwrite", pwrite)

    async def scenario() -> WipeStatus | None:
        await w.order(order(p))
        return await w.wait(p.device)

    final = asyncio.run(scenario())
    assert final is not None and final.state == "failed" and final.done_bytes == 2 * MiB
    assert final.error is not None and f"at byte {2 * MiB}" in final.error and "Input/output" in final.error
    assert sink.finals()[-1].to_wire()["error"] == final.error


def test_ep_data_left_behind_fails_the_read_back(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = part("vdb1", size=2 * MiB)
    volume(workdir, p)
    w, _dev, _sink = make(workdir, p)
    real = os.pwrite

    def lying(fd: int, data: Any, offset: int) -> int:      # a disk that acknowledges, writes nothing
        return len(data)

    monkeypatch.setattr(wipe_mod.os, "pwrite", lying)

    async def scenario() -> WipeStatus | None:
        await w.order(order(p))
        return await w.wait(p.device)

    final = asyncio.run(scenario())
    monkeypatch.setattr(wipe_mod.os, "pwrite", real)
    assert final is not None and final.state == "failed"
    assert final.error is not None and "is not zeros after the wipe" in final.error


# ---- through the unit agent -----------------------------------------------------------------

class AgentLio:
    def __init__(self) -> None:
        self.exports: list[Export] = []

    def actual_exports(self) -> list[Export]:
        return list(self.exports)

    def sessions(self, target: str) -> int:
        return 0

    def apply(self, actions: Any) -> None:
        raise AssertionError("a wipe never changes LIO")


def test_agent_dispatches_wipe_and_cancel(workdir: Path) -> None:
    p = part("vdb1", size=2 * MiB)
    f = volume(workdir, p)
    lio = AgentLio()
    lio.exports.append(Export(p.device, target_iqn(UNIT, p.device)))
    agent = UnitAgent(UNIT, b"k" * 32, ("127.0.0.1", 9), "127.0.0.1", 3260, lio, lambda: [p])
    agent.wiper.path_of = lambda dev: str(workdir / dev)
    agent.wiper.devices.sysfs_root = str(workdir / "nosys")      # type: ignore[attr-defined]
    fs = FakeSys(workdir / "nosys")
    fs.disk("vda", "254:0")
    fs.write_proc()

    def msg(t: MsgType, body: dict[str, Any]) -> Message:
        return Message(t, 1, 0, body, True)

    async def scenario() -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None,
                                  WipeStatus | None]:
        refused = await agent.handle(msg(MsgType.WIPE, order(p)), ("127.0.0.1", 9))
        lio.exports.clear()
        accepted = await agent.handle(msg(MsgType.WIPE, order(p)), ("127.0.0.1", 9))
        final = await agent.wiper.wait(p.device)
        cancel = await agent.handle(msg(MsgType.WIPE_CANCEL, {"unit": UNIT, "device": "vdb1",
                                                              "wipe_id": "w-1"}), ("127.0.0.1", 9))
        agent.wiper.stop()                # no endpoint: the final status would be retried forever
        return refused, accepted, cancel, final

    refused, accepted, cancel, final = asyncio.run(scenario())
    assert refused is not None and refused["status"] == "refused" and "still exported" in refused["reason"]
    assert accepted is not None and accepted["status"] == "accepted"
    assert final is not None and final.state == "succeeded" and is_zero(f)
    assert cancel is not None and cancel["status"] == "not-running" and cancel["state"] == "succeeded"


def test_agent_devices_give_the_inventory_in_use_reasons(tmp_path: Path) -> None:
    """The agent's port takes the in-use reasons from a real scan of (here a fake) sysfs."""
    fs = FakeSys(tmp_path)
    fs.disk("vdb", "254:16")
    fs.part("vdb", "vdb1", 1, 2048, 16384, "254:17")
    fs.disk("vdc", "254:32")
    fs.part("vdc", "vdc1", 1, 2048, 16384, "254:33")
    fs.part("vdb", "vdb3", 3, 34816, 16384, "254:19", holders=("dm-0",))
    fs.part("vdb", "vdb4", 4, 51200, 16384, "254:20")
    fs.mount("254:17", "/srv/data", "/dev/vdb1")
    fs.swap("/dev/vdc1")
    fs.write_proc()
    agent = UnitAgent(UNIT, b"k" * 32, ("127.0.0.1", 9), "127.0.0.1", 3260, AgentLio(), list)
    excluded = _AgentDevices(agent, str(tmp_path)).inventory().excluded
    assert excluded["vdb1"] == "mounted on /srv/data"
    assert excluded["vdc1"] == "on excluded disk vdc (system disk: holds swap)"
    assert excluded["vdb3"].startswith("in use by dm-0")
    assert "vdb4" not in excluded


def test_gp_over_the_wire_wipe_ack_and_statuses_reach_a_station(workdir: Path) -> None:
    """A real unit agent on loopback: WIPE in, its ACK and the WIPE_STATUS messages out, the final
    one retried until the station answers it."""
    from dvsan.endpoint import Endpoint

    p = part("vdb1", size=2 * MiB)
    f = volume(workdir, p)
    key = b"k" * 32
    statuses: list[dict[str, Any]] = []
    ignore_finals = [2]                            # the station misses the first two finals

    async def station_handler(msg: Message, peer: Any) -> dict[str, Any] | None:
        assert msg.type == MsgType.WIPE_STATUS
        if msg.body["state"] != "running" and ignore_finals[0] > 0:
            ignore_finals[0] -= 1
            await asyncio.sleep(30)                 # never answered in time: the unit retries
        statuses.append(msg.body)
        return {}

    async def scenario() -> dict[str, Any]:
        station = await Endpoint.open(key, station_handler, "127.0.0.1", 0, name="station")
        agent = UnitAgent(UNIT, key, station.address, "127.0.0.1", 3260, AgentLio(), lambda: [p])
        agent.wiper.path_of = lambda dev: str(workdir / dev)
        agent.wiper.final_retry_first = 0.05
        agent.wiper.sink.final_timeout = 0.5       # type: ignore[union-attr]
        await agent.open("127.0.0.1", 0)
        try:
            ack = await station.send(agent.endpoint.address, MsgType.WIPE, order(p), timeout=10)  # type: ignore[union-attr]
            for _ in range(600):
                if any(s["state"] != "running" for s in statuses):
                    break
                await asyncio.sleep(0.05)
            return ack
        finally:
            agent.wiper.stop()
            assert agent.endpoint is not None
            agent.endpoint.close()
            station.close()

    ack = asyncio.run(scenario())
    assert ack == {"status": "accepted", "wipe_id": "w-1", "done_bytes": 0, "total_bytes": p.size_bytes,
                   "method": "direct"}
    final = [s for s in statuses if s["state"] != "running"]
    assert len(final) == 1 and final[0]["state"] == "succeeded"
    assert final[0]["done_bytes"] == final[0]["total_bytes"] == p.size_bytes
    assert {k for k in final[0]} == {"unit", "device", "wipe_id", "state", "done_bytes", "total_bytes",
                                     "method", "elapsed_s"}
    assert is_zero(f)
