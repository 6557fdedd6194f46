"""unit_agent.inventory on fake sysfs and /proc trees: what is offered, what is left out and why."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvsan.errors import AdapterError, InvalidInput
from unit_agent.inventory import read_partitions, scan

MOUNTINFO_HEAD = (
    "22 1 0:21 / / ro,relatime - 9p /dev/root ro,trans=virtio\n"
    "23 22 0:20 / /proc rw,nosuid - proc proc rw\n"
)
SWAPS_HEAD = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"


@dataclass
class FakeSys:
    """Builds root/sys/block/... and root/proc/{self/mountinfo,swaps} as the kernel has them."""

    root: Path
    mountinfo: list[str] = field(default_factory=list)
    swaps: list[str] = field(default_factory=list)
    _next_mount_id: int = 100

    def _w(self, path: Path, value: object) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")

    def disk(self, name: str, devnum: str, *, lbs: int = 512, removable: int = 0, ro: int = 0,
             holders: tuple[str, ...] = (), slaves: tuple[str, ...] = (), hidden: int | None = None,
             size: int = 8388608) -> Path:
        d = self.root / "sys" / "block" / name
        self._w(d / "dev", devnum)
        self._w(d / "size", size)
        self._w(d / "removable", removable)
        self._w(d / "ro", ro)
        self._w(d / "queue" / "logical_block_size", lbs)
        if hidden is not None:
            self._w(d / "hidden", hidden)
        for sub, names in (("holders", holders), ("slaves", slaves)):
            (d / sub).mkdir(parents=True, exist_ok=True)
            for n in names:
                (d / sub / n).mkdir()
        return d

    def part(self, disk: str, name: str, number: int, start: int, size: int, devnum: str, *,
             ro: int = 0, holders: tuple[str, ...] = ()) -> Path:
        p = self.root / "sys" / "block" / disk / name
        self._w(p / "partition", number)
        self._w(p / "start", start)
        self._w(p / "size", size)
        self._w(p / "dev", devnum)
        self._w(p / "ro", ro)
        (p / "holders").mkdir(parents=True, exist_ok=True)
        for n in holders:
            (p / "holders" / n).mkdir()
        return p

    def mount(self, devnum: str, mountpoint: str, source: str, fstype: str = "ext4") -> None:
        self._next_mount_id += 1
        self.mountinfo.append(f"{self._next_mount_id} 22 {devnum} / {mountpoint} rw,relatime "
                              f"shared:1 - {fstype} {source} rw")

    def swap(self, path: str) -> None:
        self.swaps.append(f"{path}                               partition\t1048572\t\t0\t\t-2")

    def write_proc(self) -> None:
        self._w(self.root / "proc" / "self" / "mountinfo",
                MOUNTINFO_HEAD + "\n".join(self.mountinfo))
        self._w(self.root / "proc" / "swaps", SWAPS_HEAD + "\n".join(self.swaps))


# The lab's unit disk as `sfdisk --json /dev/vda` printed it (sector size 512).
SFDISK_VDA: list[tuple[str, int, int]] = [   # (node, start, size)
    ("/dev/vda1", 2048, 1048576),
    ("/dev/vda2", 1050624, 2621440),
    ("/dev/vda3", 3672064, 4194304),
]


def base_tree(fs: FakeSys) -> None:
    """A data disk vda like the lab's, a system disk sda (/boot and /), a loop device, a cdrom."""
    fs.disk("vda", "254:0")
    for i, (_node, start, size) in enumerate(SFDISK_VDA, 1):
        fs.part("vda", f"vda{i}", i, start, size, f"254:{i}")
    fs.disk("sda", "8:0")
    fs.part("sda", "sda1", 1, 2048, 1048576, "8:1")
    fs.part("sda", "sda2", 2, 1050624, 20000000, "8:2")
    fs.mount("8:1", "/boot", "/dev/sda1")
    fs.mount("8:2", "/", "/dev/sda2")
    fs.disk("loop0", "7:0")
    fs.disk("sr0", "11:0", removable=1)


def build(tmp_path: Path, change: Callable[[FakeSys], None] | None = None) -> Path:
    fs = FakeSys(tmp_path)
    base_tree(fs)
    if change:
        change(fs)
    fs.write_proc()
    return tmp_path


def test_gp_partitions_equal_what_sfdisk_reports(tmp_path: Path) -> None:
    parts = read_partitions(str(build(tmp_path)))
    assert [p.device for p in parts] == ["vda1", "vda2", "vda3"]
    for p, (node, start, size) in zip(parts, SFDISK_VDA, strict=True):
        assert f"/dev/{p.device}" == node
        assert (p.start_lba, p.length_blocks, p.end_lba) == (start, size, start + size - 1)
        assert (p.disk, p.block_size, p.size_bytes) == ("vda", 512, size * 512)
    assert [p.number for p in parts] == [1, 2, 3]
    assert [p.size_bytes // 2**20 for p in parts] == [512, 1280, 2048]


def test_gp_4k_logical_blocks_are_converted_from_512_byte_sysfs_sectors(tmp_path: Path) -> None:
    def change(fs: FakeSys) -> None:
        fs.disk("nvme0n1", "259:0", lbs=4096)
        # sysfs says start 2048, size 1048576 in 512-byte units; sfdisk says 256 and 131072.
        fs.part("nvme0n1", "nvme0n1p1", 1, 2048, 1048576, "259:1")

    parts = read_partitions(str(build(tmp_path, change)), include=["nvme0n1"])
    assert len(parts) == 1
    p = parts[0]
    assert (p.start_lba, p.length_blocks, p.end_lba, p.block_size) == (256, 131072, 131327, 4096)
    assert p.size_bytes == 512 * 2**20


def _mount_vda1_on_srv(fs: FakeSys) -> None:
    fs.mount("254:1", "/srv", "/dev/vda1")


def _mount_with_space(fs: FakeSys) -> None:
    fs.mount("254:2", "/srv/my\\040data", "/dev/vda2")


def _swap_on_vda3(fs: FakeSys) -> None:
    fs.swap("/dev/vda3")


def _dm_on_vda2(fs: FakeSys) -> None:
    fs.part("vda", "vda2", 2, 1050624, 2621440, "254:2", holders=("dm-0",))
    fs.disk("dm-0", "253:0", slaves=("vda2",))


def _whole_disk_pv(fs: FakeSys) -> None:
    fs.disk("vda", "254:0", holders=("dm-3",))


def _root_on_lvm_over_vda2(fs: FakeSys) -> None:
    _dm_on_vda2(fs)
    fs.mount("253:0", "/usr", "/dev/mapper/vg-usr")


def _btrfs_root_subvolume(fs: FakeSys) -> None:
    # NOTE: btrfs shows an anonymous 0:N device number; only the source names the partition.
    fs.mount("0:45", "/", "/dev/vda3", fstype="btrfs")


def _swap_via_mapper_link(fs: FakeSys) -> None:
    fs.disk("vdb", "254:16")
    fs.part("vdb", "vdb1", 1, 2048, 1048576, "254:17", holders=("dm-1",))
    fs.disk("dm-1", "253:1", slaves=("vdb1",))
    (fs.root / "dev" / "mapper").mkdir(parents=True)
    os.symlink("../dm-1", fs.root / "dev" / "mapper" / "vg-swap")
    fs.swap("/dev/mapper/vg-swap")


def _removable(fs: FakeSys) -> None:
    fs.disk("vda", "254:0", removable=1)


def _read_only_disk(fs: FakeSys) -> None:
    fs.disk("vda", "254:0", ro=1)


def _read_only_partition(fs: FakeSys) -> None:
    fs.part("vda", "vda1", 1, 2048, 1048576, "254:1", ro=1)


def _hidden(fs: FakeSys) -> None:
    fs.disk("vda", "254:0", hidden=1)


def _extended_container(fs: FakeSys) -> None:
    fs.disk("sdb", "8:16")
    fs.part("sdb", "sdb1", 1, 2048, 1048576, "8:17")
    fs.part("sdb", "sdb2", 2, 1050624, 2, "8:18")   # the kernel's view of an MBR extended partition
    fs.part("sdb", "sdb5", 5, 1052672, 1048576, "8:21")


def _unaligned_on_4k(fs: FakeSys) -> None:
    fs.disk("sdc", "8:32", lbs=4096)
    fs.part("sdc", "sdc1", 1, 2049, 1048576, "8:33")


def _no_partitions(fs: FakeSys) -> None:
    fs.disk("vdc", "254:32")


def _stacked_and_virtual(fs: FakeSys) -> None:
    for name, num in (("zram0", "252:0"), ("md0", "9:0"), ("dm-7", "253:7"), ("ram0", "1:0"),
                      ("nbd0", "43:0")):
        fs.disk(name, num)
        fs.part(name, f"{name}p1", 1, 2048, 1048576, num.split(":")[0] + ":99")


def _bad_block_size(fs: FakeSys) -> None:
    fs.disk("vda", "254:0", lbs=520)


EXCLUSIONS = [
    # (case, change, offered, {device: fragment of reason})
    ("mounted partition", _mount_vda1_on_srv, ["vda2", "vda3"], {"vda1": "mounted on /srv"}),
    ("mount point with escaped space", _mount_with_space, ["vda1", "vda3"],
     {"vda2": "mounted on /srv/my data"}),
    ("swap partition makes a system disk", _swap_on_vda3, [],
     {"vda": "system disk: holds swap", "vda1": "on excluded disk vda", "vda3": "excluded disk"}),
    ("partition with holders (dm)", _dm_on_vda2, ["vda1", "vda3"], {"vda2": "in use by dm-0"}),
    ("whole disk with holders (LVM PV)", _whole_disk_pv, [], {"vda": "in use by dm-3"}),
    ("/usr on LVM over vda2", _root_on_lvm_over_vda2, [], {"vda": "system disk: holds /usr"}),
    ("btrfs / named only by source", _btrfs_root_subvolume, [], {"vda": "system disk: holds /"}),
    ("swap through /dev/mapper link", _swap_via_mapper_link, ["vda1", "vda2", "vda3"],
     {"vdb": "system disk: holds swap", "dm-1": "virtual, optical or stacked"}),
    ("removable disk", _removable, [], {"vda": "removable"}),
    ("read-only disk", _read_only_disk, [], {"vda": "read-only device"}),
    ("read-only partition", _read_only_partition, ["vda2", "vda3"],
     {"vda1": "read-only partition"}),
    ("hidden disk", _hidden, [], {"vda": "hidden"}),
    ("MBR extended container", _extended_container, ["sdb1", "sdb5", "vda1", "vda2", "vda3"],
     {"sdb2": "extended partition"}),
    ("partition not aligned to 4K blocks", _unaligned_on_4k, ["vda1", "vda2", "vda3"],
     {"sdc1": "not aligned"}),
    ("disk without partitions", _no_partitions, ["vda1", "vda2", "vda3"], {"vdc": "no partitions"}),
    ("virtual and stacked devices", _stacked_and_virtual, ["vda1", "vda2", "vda3"],
     {"zram0": "virtual", "md0": "stacked", "dm-7": "stacked", "ram0": "virtual",
      "nbd0p1": "excluded disk"}),
    ("unsupported block size", _bad_block_size, [], {"vda": "block size"}),
]


@pytest.mark.parametrize(("case", "change", "offered", "reasons"), EXCLUSIONS,
                         ids=[c[0] for c in EXCLUSIONS])
def test_ep_exclusions(tmp_path: Path, case: str, change: Callable[[FakeSys], None],
                       offered: list[str], reasons: dict[str, str]) -> None:
    inv = scan(str(build(tmp_path, change)))
    assert [p.device for p in inv.offered] == offered, case
    for dev, fragment in reasons.items():
        assert fragment in inv.excluded.get(dev, ""), (case, dev, inv.excluded)
    assert not set(inv.excluded) & {p.device for p in inv.offered}


def test_ep_system_disk_loop_and_cdrom_are_always_excluded(tmp_path: Path) -> None:
    inv = scan(str(build(tmp_path)))
    assert inv.excluded["sda"] == "system disk: holds /, /boot"
    assert inv.excluded["sda1"].startswith("on excluded disk sda")
    assert "virtual" in inv.excluded["loop0"]
    assert "optical" in inv.excluded["sr0"]


def test_gp_include_restricts_to_named_disks(tmp_path: Path) -> None:
    def change(fs: FakeSys) -> None:
        fs.disk("vdb", "254:16")
        fs.part("vdb", "vdb1", 1, 2048, 1048576, "254:17")

    root = str(build(tmp_path, change))
    assert [p.device for p in read_partitions(root)] == ["vda1", "vda2", "vda3", "vdb1"]
    assert [p.device for p in read_partitions(root, include=["vdb"])] == ["vdb1"]
    inv = scan(root, include=["vdb", "nope"])
    assert inv.excluded == {"nope": "no such disk"}
    assert scan(root, include=[]).offered == []


def test_gp_partitions_sorted_by_number_not_name(tmp_path: Path) -> None:
    def change(fs: FakeSys) -> None:
        fs.disk("vdb", "254:16")
        for n in (10, 2, 1):
            fs.part("vdb", f"vdb{n}", n, 2048 * n * 1024, 1048576, f"254:{16 + n}")

    parts = read_partitions(str(build(tmp_path, change)), include=["vdb"])
    assert [p.number for p in parts] == [1, 2, 10]


def test_ep_unreadable_partition_files_are_excluded_not_a_crash(tmp_path: Path) -> None:
    def change(fs: FakeSys) -> None:
        (fs.root / "sys" / "block" / "vda" / "vda2" / "start").write_text("garbage\n")
        (fs.root / "sys" / "block" / "vda" / "vda3" / "size").unlink()
        (fs.root / "sys" / "block" / "vda" / "vda1" / "partition").write_text("x\n")

    inv = scan(str(build(tmp_path, change)))
    # vda1's number is unreadable, but the `partition` file exists: still a partition.
    assert inv.offered == []
    for dev in ("vda1", "vda2", "vda3"):
        assert "unreadable" in inv.excluded[dev]


@pytest.mark.parametrize("missing", ["proc/self/mountinfo", "proc/swaps"])
def test_ep_unreadable_mount_or_swap_table_fails_closed(tmp_path: Path, missing: str) -> None:
    """Issue 15 item 12: without the mount or swap table nothing is offered (never "nothing mounted")."""
    root = build(tmp_path)
    (root / missing).unlink()
    with pytest.raises(AdapterError, match=f"cannot read .*{missing.split('/')[-1]}.*not offering anything"):
        scan(str(root))


def test_gp_readable_tables_with_nothing_mounted_offer_the_disk(tmp_path: Path) -> None:
    fs = FakeSys(tmp_path)
    fs.disk("vda", "254:0")
    fs.part("vda", "vda1", 1, 2048, 1048576, "254:1")
    fs.write_proc()
    assert [p.device for p in read_partitions(str(tmp_path))] == ["vda1"]


# ---- signatures and identity (blkid -p), and the offer policy ------------------------------

def _probe(found: dict[str, dict[str, str]]) -> Callable[[str], dict[str, str]]:
    def probe(device: str) -> dict[str, str]:
        info = found.get(device, {})
        if info == {"fail": "1"}:
            raise AdapterError("blkid -p /dev/x failed (exit 4): boom")
        return info
    return probe


ENTRY = {f"vda{i}": {"PART_ENTRY_UUID": f"4f1c2a9e-0d3b-4c55-9e1a-2b7d5c3e8f1{i}",
                     "PART_ENTRY_OFFSET": str(start), "PART_ENTRY_SIZE": str(size),
                     "PART_ENTRY_NAME": "dvsan-data" if i == 3 else "data"}
         for i, (_n, start, size) in enumerate(SFDISK_VDA, 1)}


def test_gp_probe_gives_each_partition_its_entry_uuid(tmp_path: Path) -> None:
    inv = scan(str(build(tmp_path)), probe=_probe(ENTRY))
    assert {p.device: p.uid for p in inv.offered} == {d: e["PART_ENTRY_UUID"] for d, e in ENTRY.items()}


def test_ep_empty_policy_leaves_out_partitions_holding_a_signature(tmp_path: Path) -> None:
    found = {**ENTRY, "vda1": {**ENTRY["vda1"], "TYPE": "ext4", "USAGE": "filesystem"},
             "vda2": {**ENTRY["vda2"], "TYPE": "LVM2_member", "USAGE": "raid"}}
    inv = scan(str(build(tmp_path)), probe=_probe(found))
    assert [p.device for p in inv.offered] == ["vda3"]
    assert inv.excluded["vda1"].startswith("holds an ext4 filesystem (offer policy 'empty'): wipe it")
    assert inv.excluded["vda2"].startswith("holds an LVM physical volume (LVM2_member)")


@pytest.mark.parametrize(("info", "words"), [
    ({"TYPE": "linux_raid_member", "USAGE": "raid"}, "holds an md RAID member (linux_raid_member)"),
    ({"TYPE": "swap", "USAGE": "other"}, "holds swap space (swap)"),
    ({"TYPE": "btrfs", "USAGE": "filesystem"}, "holds a btrfs filesystem"),
    ({"TYPE": "bcache", "USAGE": "other"}, "holds a bcache signature"),
    ({"PTTYPE": "dos"}, "holds a dos partition table"),
], ids=["md", "swap", "btrfs", "other", "nested table"])
def test_ep_every_kind_of_signature_is_named(tmp_path: Path, info: dict[str, str], words: str) -> None:
    inv = scan(str(build(tmp_path)), probe=_probe({**ENTRY, "vda1": {**ENTRY["vda1"], **info}}))
    assert [p.device for p in inv.offered] == ["vda2", "vda3"]
    assert inv.excluded["vda1"].startswith(words), inv.excluded["vda1"]


def test_gp_kept_partitions_are_offered_whatever_they_hold(tmp_path: Path) -> None:
    """A partition the unit exports, or its pool took, holds the host's data: still offered."""
    found = {**ENTRY, "vda1": {**ENTRY["vda1"], "TYPE": "ext4"},
             "vda2": {**ENTRY["vda2"], "TYPE": "xfs"}}
    keep = frozenset({"vda1", ENTRY["vda2"]["PART_ENTRY_UUID"]})
    inv = scan(str(build(tmp_path)), probe=_probe(found), keep=keep)
    assert [p.device for p in inv.offered] == ["vda1", "vda2", "vda3"]


def test_gp_marked_policy_offers_only_partitions_named_for_dvsan(tmp_path: Path) -> None:
    found = {**ENTRY, "vda3": {**ENTRY["vda3"], "TYPE": "ext4"}}
    inv = scan(str(build(tmp_path)), probe=_probe(found), offer="marked")
    assert [p.device for p in inv.offered] == ["vda3"]
    assert "not marked for dvsan" in inv.excluded["vda1"]


def test_gp_marked_policy_takes_a_configured_marker_by_name_or_label(tmp_path: Path) -> None:
    found = {**ENTRY, "vda1": {**ENTRY["vda1"], "LABEL": "san-pool-1", "TYPE": "xfs"}}
    inv = scan(str(build(tmp_path)), probe=_probe(found), offer="marked", mark="san-")
    assert [p.device for p in inv.offered] == ["vda1"]
    assert "starts with 'san-'" in inv.excluded["vda3"]      # named dvsan-data: not this site's marker


def test_ep_marked_policy_without_a_marker_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="needs a non-empty marker"):
        scan(str(build(tmp_path)), probe=_probe(ENTRY), offer="marked", mark=" ")


def test_gp_all_unmounted_policy_offers_signatures_too(tmp_path: Path) -> None:
    found = {**ENTRY, "vda1": {**ENTRY["vda1"], "TYPE": "ext4"}}
    inv = scan(str(build(tmp_path)), probe=_probe(found), offer="all-unmounted")
    assert [p.device for p in inv.offered] == ["vda1", "vda2", "vda3"]


def test_ep_a_probe_failure_or_a_stale_kernel_view_leaves_the_partition_out(tmp_path: Path) -> None:
    found = {**ENTRY, "vda1": {"fail": "1"}, "vda2": {**ENTRY["vda2"], "PART_ENTRY_OFFSET": "4096"}}
    inv = scan(str(build(tmp_path)), probe=_probe(found))
    assert [p.device for p in inv.offered] == ["vda3"]
    assert inv.excluded["vda1"].startswith("cannot probe")
    assert "re-read it (partx -u)" in inv.excluded["vda2"]


def test_ep_unknown_offer_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="offer policy 'everything'"):
        scan(str(build(tmp_path)), probe=_probe(ENTRY), offer="everything")


def test_gp_blkid_export_output_is_parsed() -> None:
    from unit_agent.inventory import parse_blkid_export
    out = parse_blkid_export("DEVNAME=/dev/vda1\nUUID=0f3c\nTYPE=ext4\nPART_ENTRY_NAME=my\\ data\n"
                             "PART_ENTRY_UUID=4f1c-01\nnot a line\n=x\n")
    assert out == {"DEVNAME": "/dev/vda1", "UUID": "0f3c", "TYPE": "ext4", "PART_ENTRY_NAME": "my data",
                   "PART_ENTRY_UUID": "4f1c-01"}


def test_ep_no_sysfs_is_an_adapter_error(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="cannot list block devices"):
        scan(str(tmp_path))


def test_ep_garbage_mountinfo_lines_are_skipped(tmp_path: Path) -> None:
    def change(fs: FakeSys) -> None:
        fs.mountinfo += ["", "garbage", "1 2 254:1", "1 2 254:2 / /srv rw - ext4"]

    inv = scan(str(build(tmp_path, change)))
    # The last line is short of a source but has a device number and a mount point: it counts.
    assert [p.device for p in inv.offered] == ["vda1", "vda3"]
    assert inv.excluded["vda2"] == "mounted on /srv"


@settings(deadline=None, max_examples=50)
@given(st.lists(st.tuples(st.integers(1, 4096), st.integers(0, 64)), min_size=1, max_size=6),
       st.sampled_from([512, 4096]))
def test_gp_any_layout_converts_to_consistent_partitions(
        tmp_path_factory: pytest.TempPathFactory, layout: list[tuple[int, int]], lbs: int) -> None:
    root = tmp_path_factory.mktemp("sys")
    fs = FakeSys(root)
    fs.disk("vdq", "254:64", lbs=lbs)
    per = lbs // 512
    start = 2048
    for n, (mib, gap_mib) in enumerate(layout, 1):
        start += gap_mib * 2048
        fs.part("vdq", f"vdq{n}", n, start, mib * 2048, f"254:{64 + n}")
        start += mib * 2048
    fs.write_proc()
    parts = read_partitions(str(root))
    assert [p.device for p in parts] == [f"vdq{n}" for n in range(1, len(layout) + 1)]
    for p in parts:
        sysfs_start = int((root / "sys/block/vdq" / p.device / "start").read_text())
        sysfs_size = int((root / "sys/block/vdq" / p.device / "size").read_text())
        assert p.start_lba == sysfs_start // per and p.length_blocks == sysfs_size // per
        assert p.size_bytes == sysfs_size * 512
        assert p.end_lba == p.start_lba + p.length_blocks - 1
