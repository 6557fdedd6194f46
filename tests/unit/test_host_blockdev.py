"""host_agent.blockdev: what holds a device (mounts, holders, swap, open handles) on fake /sys and
/proc trees, failing closed when /proc cannot be read; flush and SCSI delete."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host_agent.blockdev import (
    BlockDeviceError,
    BlockDevices,
    DeviceInUse,
    Mount,
    parse_mountinfo,
    parse_swaps,
)

MOUNTINFO_BASE = ("22 27 0:21 / /proc rw,relatime - proc proc rw\n"
                  "27 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n")
SWAPS_HEADER = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"


class Tree:
    """A fake /sys, /proc and /dev under tmp_path: sdb (8:16) with partitions sdb1, sdb2."""

    def __init__(self, root: Path) -> None:
        self.sys, self.proc, self.dev = root / "sys", root / "proc", root / "dev"
        self.dev.mkdir(parents=True)
        self.disk("sdb", "8:16")
        self.part("sdb", "sdb1", "8:17")
        self.part("sdb", "sdb2", "8:18")
        self.disk("sdc", "8:32")
        (self.proc / "self").mkdir(parents=True)
        self.mountinfo(MOUNTINFO_BASE)
        self.swaps(SWAPS_HEADER)

    def disk(self, name: str, num: str) -> Path:
        d = self.sys / "class" / "block" / name
        (d / "holders").mkdir(parents=True)
        (d / "dev").write_text(num + "\n")
        return d

    def part(self, disk: str, name: str, num: str) -> None:
        (self.sys / "class" / "block" / disk / name).mkdir()
        (self.sys / "class" / "block" / disk / name / "partition").write_text("1\n")
        self.disk(name, num)
        (self.sys / "class" / "block" / name / "partition").write_text("1\n")

    def holder(self, below: str, name: str, num: str, dm_name: str | None = None, md: bool = False) -> None:
        (self.sys / "class" / "block" / below / "holders" / name).mkdir()
        d = self.disk(name, num)
        if dm_name:
            (d / "dm").mkdir()
            (d / "dm" / "name").write_text(dm_name + "\n")
        if md:
            (d / "md").mkdir()

    def mountinfo(self, text: str) -> None:
        (self.proc / "self" / "mountinfo").write_text(text)

    def swaps(self, text: str) -> None:
        (self.proc / "swaps").write_text(text)

    def process(self, pid: int, comm: str, *targets: str) -> None:
        fd = self.proc / str(pid) / "fd"
        fd.mkdir(parents=True)
        (self.proc / str(pid) / "comm").write_text(comm + "\n")
        for i, t in enumerate(targets):
            os.symlink(t, fd / str(i))

    def block(self, **kw: object) -> BlockDevices:
        return BlockDevices(str(self.sys), str(self.proc), str(self.dev), **kw)  # type: ignore[arg-type]


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


# ---- parsers -----------------------------------------------------------------------------------

def test_gp_parse_mountinfo_with_escaped_paths() -> None:
    text = MOUNTINFO_BASE + "97 27 8:17 / /mnt/my\\040data rw,relatime shared:45 - ext4 /dev/sdb1 rw\n"
    assert parse_mountinfo(text)[-1] == Mount("8:17", "/mnt/my data")
    assert len(parse_mountinfo(text)) == 3


@pytest.mark.parametrize("text", ["garbage", "22 27 0:21 / /proc rw,relatime", "22 27 x / /p rw - a b c"])
def test_ep_parse_mountinfo_malformed_fails_closed(text: str) -> None:
    with pytest.raises(BlockDeviceError, match="cannot parse mountinfo"):
        parse_mountinfo(text)


def test_gp_parse_swaps() -> None:
    assert parse_swaps(SWAPS_HEADER) == [] and parse_swaps("") == []
    assert parse_swaps(SWAPS_HEADER + "/dev/sdb2    partition\t1048572\t0\t-2\n"
                       "/swap\\040file  file\t1024\t0\t-3\n") == ["/dev/sdb2", "/swap file"]


@pytest.mark.parametrize("text", ["/dev/sdb2 partition 1 0 -2\n", SWAPS_HEADER + "x\n"])
def test_ep_parse_swaps_malformed_fails_closed(text: str) -> None:
    with pytest.raises(BlockDeviceError, match="/proc/swaps"):
        parse_swaps(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_ep_parsers_never_crash_on_garbage(text: str) -> None:
    """Anything /proc could hold is parsed or refused with BlockDeviceError: never an IndexError
    that a caller might mistake for "not in use"."""
    for parser in (parse_mountinfo, parse_swaps):
        try:
            parser(text)
        except BlockDeviceError:
            pass


# ---- users -----------------------------------------------------------------------------------

def test_gp_unused_device_has_no_users(tree: Tree) -> None:
    tree.mountinfo(MOUNTINFO_BASE + "98 27 8:33 / /srv/other rw - ext4 /dev/sdc1 rw\n")
    tree.process(4242, "dd", str(tree.dev / "sdc"))   # another disk's user
    b = tree.block(open_exclusive=lambda p: None)
    assert b.stack("sdb") == ["sdb", "sdb1", "sdb2"]
    assert b.users("sdb") == []
    b.check_unused("sdb")


def test_ep_mounted_partition_is_named_with_its_mount_point(tree: Tree) -> None:
    tree.mountinfo(MOUNTINFO_BASE + "97 27 8:17 / /mnt/my\\040data rw - ext4 /dev/sdb1 rw\n")
    b = tree.block(open_exclusive=lambda p: None)
    assert b.users("sdb") == ["sdb1 is mounted at /mnt/my data"]
    with pytest.raises(DeviceInUse, match="/dev/sdb is in use: sdb1 is mounted at /mnt/my data"):
        b.check_unused("sdb")


def test_ep_lvm_on_a_partition_is_named_and_its_mount_too(tree: Tree) -> None:
    tree.holder("sdb1", "dm-0", "254:0", dm_name="vg0-data")
    tree.mountinfo(MOUNTINFO_BASE + "97 27 254:0 / /srv rw - xfs /dev/mapper/vg0-data rw\n")
    users = tree.block(open_exclusive=lambda p: None).users("sdb")
    assert users == ["dm-0 is mounted at /srv", "held by dm-0 (vg0-data)"]


def test_ep_md_holder_is_named_even_when_not_mounted(tree: Tree) -> None:
    tree.holder("sdb", "md0", "9:0", md=True)
    assert tree.block(open_exclusive=lambda p: None).users("sdb") == ["held by md0 (md array)"]


def test_ep_swap_on_a_partition_is_named(tree: Tree) -> None:
    tree.swaps(SWAPS_HEADER + "/dev/sdb2    partition\t1048572\t0\t-2\n")
    assert tree.block(open_exclusive=lambda p: None).users("sdb") == ["sdb2 is swap (/dev/sdb2)"]


def test_ep_process_with_the_device_open_is_named(tree: Tree) -> None:
    tree.process(4242, "dd", "/etc/passwd", str(tree.dev / "sdb"))
    assert tree.block(open_exclusive=lambda p: None).users("sdb") == ["sdb is open by process 4242 (dd)"]


def test_ep_ebusy_on_an_exclusive_open_counts_as_in_use(tree: Tree) -> None:
    opened: list[str] = []

    def busy(path: str) -> None:
        opened.append(path)
        raise OSError(errno.EBUSY, "Device or resource busy")

    assert tree.block(open_exclusive=busy).users("sdb") == [
        "sdb is held open exclusively by someone (EBUSY on an O_EXCL open)"]
    assert opened == [str(tree.dev / "sdb")]


def test_ep_other_exclusive_open_errors_fail_closed(tree: Tree) -> None:
    def denied(path: str) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(BlockDeviceError, match="cannot tell whether .*sdb is open: Permission denied"):
        tree.block(open_exclusive=denied).users("sdb")


def test_gp_an_offline_device_says_nothing_by_its_open_but_a_process_on_it_is_still_named(tree: Tree) -> None:
    """Seen in the lab: a mirror member whose unit died is offline (ENXIO on every open); the
    release of its mirror was refused for ever ("cannot tell whether it is open")."""
    def offline(path: str) -> None:
        raise OSError(errno.ENXIO, "No such device or address")

    assert tree.block(open_exclusive=offline).users("sdb") == []
    tree.process(4242, "dd", str(tree.dev / "sdb"))
    assert tree.block(open_exclusive=offline).users("sdb") == ["sdb is open by process 4242 (dd)"]


def test_gp_missing_device_node_is_not_in_use(tree: Tree) -> None:
    # the real O_EXCL open of a node that is not there (the SCSI device is gone already)
    assert tree.block().users("sdb") == []


@pytest.mark.parametrize("missing", ["self/mountinfo", "swaps"])
def test_ep_unreadable_mountinfo_or_swaps_fails_closed(tree: Tree, missing: str) -> None:
    (tree.proc / missing).unlink()
    with pytest.raises(BlockDeviceError, match=f"cannot read {tree.proc / missing}"):
        tree.block(open_exclusive=lambda p: None).users("sdb")


# ---- flush and delete ------------------------------------------------------------------------

def test_gp_flush_runs_blockdev_flushbufs(tree: Tree) -> None:
    calls: list[list[str]] = []

    def run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    tree.block(runner=run).flush("sdb")
    assert calls == [["blockdev", "--flushbufs", str(tree.dev / "sdb")]]


@pytest.mark.parametrize("answer", [(1, "blockdev: cannot open /dev/sdb: No such device"),
                                    FileNotFoundError("blockdev")])
def test_ep_flush_failure_is_an_error(tree: Tree, answer: object) -> None:
    def run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, tuple)
        return subprocess.CompletedProcess(argv, answer[0], "", answer[1])

    with pytest.raises(BlockDeviceError, match="blockdev --flushbufs"):
        tree.block(runner=run).flush("sdb")


def test_gp_delete_scsi_device_writes_1_and_a_gone_one_is_fine(tree: Tree) -> None:
    d = tree.sys / "block" / "sdb" / "device"
    d.mkdir(parents=True)
    tree.block().delete_scsi_device("sdb")
    assert (d / "delete").read_text() == "1"
    tree.block().delete_scsi_device("sdx")   # no such device: nothing to do


def test_ep_delete_scsi_device_failure_is_an_error(tree: Tree) -> None:
    (tree.sys / "block" / "sdb").mkdir(parents=True)   # no device/ below it: the write fails
    with pytest.raises(BlockDeviceError, match="cannot delete SCSI device sdb"):
        tree.block().delete_scsi_device("sdb")
