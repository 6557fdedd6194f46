"""unit_agent.partition: the plan, the checks on fake sysfs trees, and the change on image files."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dvsan.errors import AdapterError, InvalidInput
from dvsan.model import Export
from dvsan.protocol import MsgType
from tests.unit.test_inventory import FakeSys
from unit_agent.inventory import DiskUse, disk_use
from unit_agent.partition import (
    Entry,
    Layout,
    NewPartition,
    Partitioner,
    PartitionOrder,
    Sfdisk,
    Table,
    blockers,
    free_regions,
    new_gpt,
    parse_sfdisk_json,
    partition_name,
    plan,
    script,
)

MiB = 1 << 20
SECTORS = 2 * 1024 * 2048           # a 2 GiB disk of 512-byte sectors

SAMPLE = """{
   "partitiontable": {
      "label": "gpt", "id": "2CCFDEF6-EB48-864F-B7A3-F479B2AEFFF7", "device": "/dev/vdb",
      "unit": "sectors", "firstlba": 2048, "lastlba": 4194270, "sectorsize": 512,
      "partitions": [
         {"node": "/dev/vdb1", "start": 2048, "size": 16384, "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
          "uuid": "D15B2175-6EC6-904F-90F5-739FE8581C97"},
         {"node": "/dev/vdb3", "start": 51200, "size": 32768, "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
          "uuid": "E7D5716E-387E-6946-BEB9-EBDC5F323A04", "name": "dvsan-3"}
      ]
   }
}"""


def test_gp_sfdisk_json_is_read_with_numbers_from_the_nodes() -> None:
    t = parse_sfdisk_json(SAMPLE)
    assert (t.label, t.sector_size, t.first_lba, t.last_lba) == ("gpt", 512, 2048, 4194270)
    assert [(p.number, p.start, p.size, p.name) for p in t.parts] == [(1, 2048, 16384, ""), (3, 51200, 32768, "dvsan-3")]


@pytest.mark.parametrize("text", ["", "{}", '{"partitiontable": {"label": "gpt", "partitions": [{"node": "x"}]}}'])
def test_ep_unreadable_sfdisk_output_is_an_adapter_error(text: str) -> None:
    with pytest.raises(AdapterError, match="sfdisk's JSON"):
        parse_sfdisk_json(text)


def test_gp_an_empty_disk_gets_a_label_and_four_aligned_partitions() -> None:
    layout = Layout("gpt", tuple(NewPartition(s) for s in (256 * MiB, 256 * MiB, 512 * MiB, 300 * MiB + 1)))
    t = plan(None, layout, SECTORS, 512)
    assert t.label == "gpt" and t.first_lba == 2048 and t.last_lba == SECTORS - 34
    assert [(p.number, p.start, p.size) for p in t.parts] == [
        (1, 2048, 524288), (2, 526336, 524288), (3, 1050624, 1048576), (4, 2099200, 616448)]
    assert all(p.start % 2048 == 0 and p.size % 2048 == 0 for p in t.parts), "1 MiB alignment"


def test_gp_a_new_partition_takes_the_first_gap_and_the_lowest_free_number() -> None:
    t = plan(parse_sfdisk_json(SAMPLE), Layout(create=(NewPartition(8 * MiB, "dvsan-x"),)), SECTORS, 512)
    assert [(p.number, p.start, p.size, p.name) for p in t.parts] == [
        (1, 2048, 16384, ""), (2, 18432, 16384, "dvsan-x"), (3, 51200, 32768, "dvsan-3")]


def test_gp_deleting_frees_the_space_for_a_bigger_partition() -> None:
    cur = parse_sfdisk_json(SAMPLE)
    t = plan(cur, Layout(delete=(1, 3), create=(NewPartition(40 * MiB),)), SECTORS, 512)
    assert [(p.number, p.start, p.size) for p in t.parts] == [(1, 2048, 81920)]


@pytest.mark.parametrize(("current", "layout", "match"), [
    (None, Layout(create=(NewPartition(MiB),)), "no partition table: initialise it first"),
    ("sample", Layout("gpt"), "a new label erases partition"),
    ("sample", Layout(delete=(2,)), r"partition\(s\) 2 do not exist"),
    (None, Layout("gpt", (NewPartition(3 << 30),)), "no free space of 3221225472 bytes"),
])
def test_ep_a_layout_that_does_not_fit_is_refused_with_why(current: str | None, layout: Layout, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        plan(parse_sfdisk_json(SAMPLE) if current else None, layout, SECTORS, 512)


def test_gp_free_regions_and_names() -> None:
    t = parse_sfdisk_json(SAMPLE)
    assert free_regions(t) == [(18432, 51199), (83968, 4194270)]
    assert [partition_name(d, 2) for d in ("vdb", "nvme0n1", "/dev/sdc")] == ["vdb2", "nvme0n1p2", "/dev/sdc2"]
    assert new_gpt(SECTORS, 4096).first_lba == 256


@pytest.mark.parametrize(("body", "match"), [
    ({}, "changes nothing"),
    ({"label": "dos"}, "'label' must be one of gpt"),
    ({"create": [{"size_bytes": 1000}]}, "at least 1 MiB"),
    ({"create": [{"size_bytes": True}]}, "at least 1 MiB"),
    ({"create": [{"size_bytes": MiB, "name": "a b"}]}, "partition 'name'"),
    ({"delete": [1, 1]}, "twice"),
    ({"delete": [0]}, "partition numbers 1-128"),
    ({"delete": [], "extra": 1}, "unknown field"),
    ("gpt", "must be an object"),
])
def test_ep_a_malformed_layout_is_refused(body: Any, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        Layout.from_wire(body)


def test_ep_a_malformed_order_is_refused() -> None:
    good = {"unit": "u", "device": "vdb", "layout": {"label": "gpt"}, "partition_id": "p1"}
    assert PartitionOrder.from_wire(good).layout == Layout("gpt")
    for bad, match in (({**good, "device": "../sda"}, "invalid block device"),
                       ({**good, "partition_id": "x y"}, "partition_id"),
                       ({**good, "assigned": "vdb1"}, "'assigned' must be a list"),
                       ({k: v for k, v in good.items() if k != "layout"}, "missing field 'layout'")):
        with pytest.raises(InvalidInput, match=match):
            PartitionOrder.from_wire(bad)


# ---- what is in the way, on fake sysfs trees ------------------------------------------------------

def two_disks(tmp_path: Path) -> FakeSys:
    """vda: the system disk (/ on vda1); vdb: vdb1 mounted on /mnt, vdb3 under LVM, vdb2 and vdb4 free."""
    fs = FakeSys(tmp_path)
    fs.disk("vda", "254:0")
    fs.part("vda", "vda1", 1, 2048, 1048576, "254:1")
    fs.disk("vdb", "254:16")
    (fs.root / "sys/block/vdb/serial").write_text("dvsanlab-unit-a-b\n")
    fs.part("vdb", "vdb1", 1, 2048, 16384, "254:17")
    fs.part("vdb", "vdb2", 2, 18432, 16384, "254:18")
    fs.part("vdb", "vdb3", 3, 34816, 16384, "254:19", holders=("dm-0",))
    fs.part("vdb", "vdb4", 4, 51200, 16384, "254:20")
    fs.disk("dm-0", "253:0", slaves=("vdb3",))
    (fs.root / "sys/block/dm-0/dm").mkdir()
    (fs.root / "sys/block/dm-0/dm/name").write_text("vg0-data\n")
    fs.mount("254:1", "/", "/dev/vda1")
    fs.mount("254:17", "/mnt", "/dev/vdb1")
    fs.write_proc()
    return fs


def order(layout: Layout, device: str = "vdb", assigned: frozenset[str] = frozenset()) -> PartitionOrder:
    return PartitionOrder("unit-a", device, layout, "p1", assigned)


def table4() -> Table:
    return Table("gpt", 512, 2048, SECTORS - 34, tuple(Entry(n, 2048 + (n - 1) * 16384, 16384) for n in range(1, 5)))


def test_gp_disk_use_names_what_holds_each_partition(tmp_path: Path) -> None:
    two_disks(tmp_path)
    use = disk_use(str(tmp_path), "vdb")
    assert use.system is None and use.whole == [] and use.serial == "dvsanlab-unit-a-b"
    assert use.parts == {"vdb1": ["mounted on /mnt"],
                         "vdb3": ["held by dm-0 (device-mapper vg0-data: LVM, crypt or multipath)"]}
    assert use.kernel_parts["vdb4"] == (4, 51200, 16384)
    assert disk_use(str(tmp_path), "vda").system == "holds /"


def test_ep_every_blocker_is_named_and_a_free_partition_is_not_blocked(tmp_path: Path) -> None:
    two_disks(tmp_path)
    use = disk_use(str(tmp_path), "vdb")
    exported = {"vdb4": "iqn.2026-11.org.dvsan:unit-a:vdb4"}
    why = blockers(order(Layout(delete=(1, 2, 3, 4)), assigned=frozenset({"vdb4"})), table4(), use, exported,
                   {"vdb4"})
    assert why == ["vdb1 is mounted on /mnt",
                   "vdb3 is held by dm-0 (device-mapper vg0-data: LVM, crypt or multipath)",
                   "vdb4 is exported by LIO as iqn.2026-11.org.dvsan:unit-a:vdb4", "vdb4 is assigned to a host",
                   "vdb4 is being wiped"]
    assert blockers(order(Layout(delete=(4,))), table4(), use, {}, set()) == []
    # creating beside mounted partitions is fine: nothing in use is touched
    assert blockers(order(Layout(create=(NewPartition(MiB),))), table4(), use, {}, set()) == []
    # a new label erases every partition: each in use is named
    assert len(blockers(order(Layout("gpt", delete=(1, 2, 3, 4))), table4(), use, {}, set())) == 2


def test_ep_active_swap_makes_a_disk_the_system_disk_as_the_inventory_says(tmp_path: Path) -> None:
    fs = two_disks(tmp_path)
    fs.swap("/dev/vdb2")
    fs.write_proc()
    use = disk_use(str(tmp_path), "vdb")
    assert use.system == "holds swap" and use.parts["vdb2"] == ["in use as swap"]
    assert blockers(order(Layout(delete=(4,))), table4(), use, {}, set()) == ["vdb is the system disk (holds swap)"]


def test_ep_the_system_disk_is_refused_whatever_the_layout(tmp_path: Path) -> None:
    two_disks(tmp_path)
    use = disk_use(str(tmp_path), "vda")
    assert blockers(order(Layout(create=(NewPartition(MiB),)), "vda"), None, use, {}, set()) == [
        "vda is the system disk (holds /)"]


def test_ep_a_system_disk_beneath_lvm_is_found(tmp_path: Path) -> None:
    fs = FakeSys(tmp_path)
    fs.disk("sda", "8:0")
    fs.part("sda", "sda1", 1, 2048, 1048576, "8:1", holders=("dm-0",))
    fs.disk("dm-0", "253:0", slaves=("sda1",))
    fs.mount("253:0", "/", "/dev/mapper/vg-root")
    fs.write_proc()
    assert disk_use(str(tmp_path), "sda").system == "holds /"


def test_ep_an_unreadable_mount_table_fails_closed(tmp_path: Path) -> None:
    fs = two_disks(tmp_path)
    (fs.root / "proc/self/mountinfo").unlink()
    with pytest.raises(AdapterError, match="mountinfo"):
        disk_use(str(tmp_path), "vdb")


# ---- the change, on image files -------------------------------------------------------------------

class Devices:
    def __init__(self) -> None:
        self.exported: list[Export] = []
        self.reports = 0

    def exports(self) -> list[Export]:
        return self.exported

    def wiping(self, device: str) -> bool:
        return False

    async def report_storage(self) -> None:
        self.reports += 1


def free_use(disk: str) -> DiskUse:
    return DiskUse(disk, 64 * MiB, 512, "", None, [], {})


def image(tmp_path: Path, script_text: str | None = None) -> Path:
    p = tmp_path / "vdz"
    with open(p, "wb") as f:
        f.truncate(64 * MiB)
    if script_text:
        subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(p)], input=script_text, text=True,
                       check=True, capture_output=True)
    return p


def partitioner(tmp_path: Path, tools: Sfdisk | None = None, use: Any = free_use) -> tuple[Partitioner, list[Any]]:
    sent: list[Any] = []

    async def sink(body: dict[str, Any], final: bool) -> None:
        sent.append((body["state"], body["step"], final, body))

    p = Partitioner("unit-z", Devices(), sink=sink, disks=lambda: ["vdz"], path_of=lambda d: str(tmp_path / d),
                    use_of=use, tools=tools)
    return p, sent


def run_order(p: Partitioner, layout: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    async def go() -> tuple[dict[str, Any], dict[str, Any] | None]:
        ack = await p.handle(MsgType.PARTITION, {"unit": "unit-z", "device": "vdz", "layout": layout,
                                                 "partition_id": "p1"})
        return ack, await p.wait("vdz")
    return asyncio.run(go())


def test_gp_an_empty_image_gets_four_partitions_with_progress(tmp_path: Path) -> None:
    img = image(tmp_path)
    p, sent = partitioner(tmp_path)
    ack, final = run_order(p, {"label": "gpt", "create": [{"size_bytes": 8 * MiB}] * 4})
    assert ack["status"] == "accepted"
    assert final is not None and final["state"] == "succeeded", final
    t = Sfdisk().read(str(img))
    assert t is not None and [(e.number, e.start, e.size) for e in t.parts] == [
        (1, 2048, 16384), (2, 18432, 16384), (3, 34816, 16384), (4, 51200, 16384)]
    assert [s[1] for s in sent if s[0] == "running"] == [1, 2, 3, 4, 5, 6, 7]
    assert sent[-1][:3] == ("succeeded", 7, True) and final["created"] == ["vdz1", "vdz2", "vdz3", "vdz4"]
    assert p.devices.reports == 1  # type: ignore[attr-defined]


def test_ep_a_refusal_leaves_the_image_byte_for_byte(tmp_path: Path) -> None:
    img = image(tmp_path, "label: gpt\nsize=8MiB\nsize=8MiB\n")
    before = hashlib.sha256(img.read_bytes()).hexdigest()

    def held(disk: str) -> DiskUse:
        return DiskUse(disk, 64 * MiB, 512, "", None, [], {"vdz1": ["mounted on /srv"]})
    p, _sent = partitioner(tmp_path, use=held)
    p.devices.exported = [Export("vdz2", "iqn.2026-11.org.dvsan:unit-z:vdz2")]  # type: ignore[attr-defined]
    _, final = run_order(p, {"delete": [1, 2]})
    assert final is not None and final["state"] == "refused"
    assert final["reason"] == ("vdz1 is mounted on /srv; vdz2 is exported by LIO as "
                               "iqn.2026-11.org.dvsan:unit-z:vdz2")
    assert hashlib.sha256(img.read_bytes()).hexdigest() == before


class FailingReread(Sfdisk):
    def __init__(self) -> None:
        super().__init__()
        self.rereads = 0

    def reread(self, path: str) -> None:
        self.rereads += 1
        if self.rereads == 1:
            raise AdapterError("partx --update: Device or resource busy")


def test_ep_a_failed_reread_puts_the_old_table_back(tmp_path: Path) -> None:
    img = image(tmp_path, "label: gpt\nsize=8MiB\nsize=8MiB\n")
    old = Sfdisk().read(str(img))
    tools = FailingReread()
    p, _ = partitioner(tmp_path, tools=tools)
    _, final = run_order(p, {"delete": [2], "create": [{"size_bytes": 20 * MiB}]})
    assert final is not None and final["state"] == "failed" and "Device or resource busy" in final["error"]
    assert Sfdisk().read(str(img)) == old and tools.rereads == 2


def test_ep_a_failed_first_label_is_erased_again(tmp_path: Path) -> None:
    img = image(tmp_path)
    p, _ = partitioner(tmp_path, tools=FailingReread())
    _, final = run_order(p, {"label": "gpt", "create": [{"size_bytes": 8 * MiB}]})
    assert final is not None and final["state"] == "failed"
    assert Sfdisk().read(str(img)) is None


def test_ep_a_second_order_while_one_runs_is_busy_and_a_repeat_is_not_run_twice(tmp_path: Path) -> None:
    image(tmp_path)
    p, _sent = partitioner(tmp_path)

    async def go() -> tuple[Any, ...]:
        body = {"unit": "unit-z", "device": "vdz", "layout": {"label": "gpt"}, "partition_id": "p1"}
        a1 = await p.handle(MsgType.PARTITION, body)
        a2 = await p.handle(MsgType.PARTITION, {**body, "partition_id": "p2"})
        a3 = await p.handle(MsgType.PARTITION, body)
        await p.wait("vdz")
        a4 = await p.handle(MsgType.PARTITION, body)
        await asyncio.sleep(0)
        return a1, a2, a3, a4
    a1, a2, a3, a4 = asyncio.run(go())
    assert (a1["status"], a2["status"], a3["status"], a4["status"]) == ("accepted", "busy", "running", "ended")
    assert "change p1 of vdz is running" in a2["reason"]


def test_ep_an_order_for_another_unit_or_disk_is_refused(tmp_path: Path) -> None:
    p, _ = partitioner(tmp_path)
    from dvsan.errors import Conflict
    with pytest.raises(Conflict):
        asyncio.run(p.handle(MsgType.PARTITION, {"unit": "unit-y", "device": "vdz", "layout": {"label": "gpt"},
                                                 "partition_id": "p1"}))
    ack = asyncio.run(p.handle(MsgType.PARTITION, {"unit": "unit-z", "device": "vda", "layout": {"label": "gpt"},
                                                   "partition_id": "p1"}))
    assert ack["status"] == "refused" and "not a disk this unit manages" in ack["reason"]


def test_gp_script_round_trips_through_sfdisk(tmp_path: Path) -> None:
    img = image(tmp_path, "label: gpt\nsize=8MiB\nsize=8MiB\n")
    t = Sfdisk().read(str(img))
    assert t is not None
    Sfdisk().write(str(img), script(t, str(img)))
    assert Sfdisk().read(str(img)) == t


class Recording(Sfdisk):
    """sfdisk for real on the image; the kernel steps recorded (the image stands for a block device)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def lock(self, path: str) -> int:
        self.calls.append("lock")
        return -1

    def unlock(self, fd: int) -> None:
        self.calls.append("unlock")

    def write(self, path: str, text: str) -> None:
        self.calls.append("write")
        super().write(path, text)

    def forget(self, path: str, number: int) -> None:
        self.calls.append(f"forget {number}")

    def reread(self, path: str) -> None:
        self.calls.append("reread")

    def settle(self) -> None:
        self.calls.append("settle")


def test_gp_the_kernel_drops_what_changes_before_it_adds_all_under_the_disk_lock(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    img = image(tmp_path, "label: gpt\nsize=8MiB\nsize=8MiB\nsize=8MiB\nsize=8MiB\n")
    old = Sfdisk().read(str(img))
    assert old is not None
    # what the kernel holds: the old table, then (for the check) whatever is on the image now
    state = {"kernel": {f"vdz{p.number}": (p.number, p.start, p.size) for p in old.parts}}

    def use(disk: str) -> DiskUse:
        return DiskUse(disk, 64 * MiB, 512, "", None, [], {}, dict(state["kernel"]))
    tools = Recording()
    p, _ = partitioner(tmp_path, tools=tools, use=use)
    monkeypatch.setattr("unit_agent.partition.is_block", lambda path: True)

    def reread(path: str) -> None:
        tools.calls.append("reread")
        t = Sfdisk().read(path)
        assert t is not None
        state["kernel"] = {f"vdz{e.number}": (e.number, e.start, e.size) for e in t.parts}
    tools.reread = reread  # type: ignore[method-assign]
    _, final = run_order(p, {"delete": [3, 4], "create": [{"size_bytes": 20 * MiB}]})
    assert final is not None and final["state"] == "succeeded", final
    # 3 grows into 4's space: both leave the kernel first, 1 and 2 are never touched
    assert tools.calls == ["settle", "lock", "write", "forget 3", "forget 4", "reread", "unlock", "settle"]


def test_ep_an_order_from_another_pool_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    img = image(tmp_path)
    p, _ = partitioner(tmp_path)
    p.pool = lambda: "pool-a"
    ack = asyncio.run(p.handle(MsgType.PARTITION, {"unit": "unit-z", "pool_id": "pool-b", "device": "vdz",
                                                   "layout": {"label": "gpt"}, "partition_id": "p1"}))
    assert ack["status"] == "refused" and "belongs to pool pool-a, not pool-b" in ack["reason"]
    assert Sfdisk().read(str(img)) is None


def test_ep_a_blank_disk_holding_a_filesystem_is_not_labelled_over_it(tmp_path: Path) -> None:
    img = image(tmp_path)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
    before = hashlib.sha256(img.read_bytes()).hexdigest()
    p, _ = partitioner(tmp_path)
    _, final = run_order(p, {"label": "gpt", "create": [{"size_bytes": 8 * MiB}]})
    assert final is not None and final["state"] == "refused"
    assert final["reason"] == ("vdz has no partition table but the whole disk holds a signature (ext4): "
                               "wipefs it first if it is unused")
    assert hashlib.sha256(img.read_bytes()).hexdigest() == before
