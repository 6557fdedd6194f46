"""The partitions a unit can offer, read from the kernel through sysfs and /proc."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dvsan.errors import AdapterError, DvsanError, InvalidInput
from dvsan.model import VALID_BLOCK_SIZES, Partition

log = logging.getLogger(__name__)

# Kernel name prefixes of block devices that are never storage a unit should re-export:
# virtual (loop, ram, zram, nbd, rbd), optical/floppy (sr, fd), stacked (dm, md, drbd) and zvols.
SKIP_PREFIXES: tuple[str, ...] = ("loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd", "rbd",
                                  "drbd", "zd")
# A disk holding any of these mount points (or active swap) is the system disk: never offered.
SYSTEM_MOUNTPOINTS: frozenset[str] = frozenset({"/", "/boot", "/boot/efi", "/efi", "/usr"})
# NOTE: the kernel shows an MBR extended partition as 1-2 sectors long (a guard against mkfs on
# it) while sfdisk reports its full span; anything this small is a container, not a volume.
MIN_PARTITION_BYTES = 1024 * 1024
SYSFS_SECTOR = 512  # sysfs start/size are always in 512-byte units, whatever the disk's block size


@dataclass(frozen=True, slots=True)
class Inventory:
    """What a scan found: partitions to offer, and every device left out with the reason why."""

    offered: list[Partition] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)


# Which unmounted partitions a unit offers (setting `offer`, docs/operations.md):
#   empty          only those blkid finds no signature on (no filesystem, LVM PV, md member, swap,
#                  partition table): the default, so a unit never offers somebody's data
#   marked         only those whose GPT partition name (or filesystem label) starts with the
#                  marker (setting `offer_mark`, "dvsan" by default), whatever they hold
#   all-unmounted  every unmounted, unused partition (a lab, or a disk given wholly to dvsan)
# Partitions in `keep` (those the unit exports or its pool already took) are offered under every
# policy: they hold the hosts' data, signatures included.
OFFER_POLICIES = ("empty", "marked", "all-unmounted")
MARK_PREFIX = "dvsan"
# What a signature blkid reports as TYPE is, for the operator (the rest: "a <TYPE> signature").
_SIGNATURES = {
    "LVM2_member": "an LVM physical volume (LVM2_member)",
    "linux_raid_member": "an md RAID member (linux_raid_member)",
    "swap": "swap space (swap)",
    "crypto_LUKS": "a LUKS encrypted volume (crypto_LUKS)",
    "zfs_member": "a ZFS pool member (zfs_member)",
    "ceph": "a Ceph OSD (ceph)",
}

Probe = Callable[[str], dict[str, str]]


def read_partitions(root: str = "/", include: list[str] | None = None) -> list[Partition]:
    """The partitions this unit may offer, sorted by disk and partition number.

    `root` is prepended to /sys and /proc (a test builds a fake tree there); `include`
    restricts the scan to these disk names (e.g. ["vda"]).
    """
    return scan(root, include).offered


def blkid_probe(device: str) -> dict[str, str]:
    """What libblkid's low-level probe (no cache) finds on /dev/<device>, as KEY: value.

    Sample `blkid -p -o export /dev/vda1` output (exit 0; exit 2 means nothing was found):
        DEVNAME=/dev/vda1
        UUID=0f3c...            TYPE=ext4 (only when a filesystem or other signature is there)
        PART_ENTRY_SCHEME=gpt
        PART_ENTRY_NAME=dvsan-data
        PART_ENTRY_UUID=4f1c2a9e-0d3b-4c55-9e1a-2b7d5c3e8f10
        PART_ENTRY_OFFSET=2048
        PART_ENTRY_SIZE=1048576
    """
    try:
        r = subprocess.run(["blkid", "-p", "-o", "export", f"/dev/{device}"], capture_output=True,
                           text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AdapterError(f"cannot run blkid on /dev/{device}: {e}") from e
    if r.returncode == 2:
        return {}
    if r.returncode != 0:
        raise AdapterError(f"blkid -p /dev/{device} failed (exit {r.returncode}): {r.stderr.strip()}")
    return parse_blkid_export(r.stdout)


def parse_blkid_export(text: str) -> dict[str, str]:
    """KEY=VALUE lines of `blkid -o export` (values may escape spaces with a backslash)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key and key.replace("_", "").isalnum() and key == key.upper():
            out[key] = value.replace("\\ ", " ").strip()
    return out


def scan(root: str = "/", include: list[str] | None = None, *, probe: Probe | None = None,
         offer: str = "empty", keep: frozenset[str] = frozenset(), mark: str = MARK_PREFIX) -> Inventory:
    """Scan every block disk under `root`/sys/block; see `read_partitions` for the arguments.

    With `probe` (the unit agent passes `blkid_probe`), each candidate partition is probed for
    its partition-entry identity (Partition.uid) and for signatures, and `offer` decides which
    are offered (`mark`: the name prefix of policy "marked"); `keep` names devices (or partition
    uids) offered whatever they hold: those the unit exports or its pool took. Without
    `probe` (tests on a fake tree), nothing is probed and `offer` is not applied.
    """
    if offer not in OFFER_POLICIES:
        raise InvalidInput(f"offer policy {offer!r} is not one of {', '.join(OFFER_POLICIES)}")
    if offer == "marked" and not mark.strip():
        raise InvalidInput("offer policy 'marked' needs a non-empty marker (offer_mark)")
    base = Path(root)
    sys_block = base / "sys" / "block"
    try:
        disk_names = sorted(os.listdir(sys_block))
    except OSError as e:
        raise AdapterError(f"cannot list block devices in {sys_block}: {e}") from e

    # Every block device (disk or partition) by kernel name, its sysfs dir, and its parent disk.
    devdirs: dict[str, Path] = {}
    parent: dict[str, str] = {}
    parts_of: dict[str, list[str]] = {}
    for disk in disk_names:
        ddir = sys_block / disk
        devdirs[disk] = ddir
        parts_of[disk] = []
        try:
            children = sorted(os.listdir(ddir))
        except OSError:
            continue
        for child in children:
            if (ddir / child / "partition").is_file():
                devdirs[child] = ddir / child
                parent[child] = disk
                parts_of[disk].append(child)
    by_devnum = {num: name for name, d in devdirs.items() if (num := _read(d / "dev"))}

    mounts = _mounted_devices(base, by_devnum, devdirs)
    swaps = _swap_devices(base, devdirs)
    # A disk is the system disk if anything on it (directly, or beneath dm/md) is a system mount.
    roles: dict[str, set[str]] = {}
    for dev, mountpoints in mounts.items():
        for mp in mountpoints & SYSTEM_MOUNTPOINTS:
            for under in _underlying(dev, devdirs):
                roles.setdefault(parent.get(under, under), set()).add(mp)
    for dev in swaps:
        for under in _underlying(dev, devdirs):
            roles.setdefault(parent.get(under, under), set()).add("swap")
    system_disks = {d: "system disk: holds " + ", ".join(sorted(r)) for d, r in roles.items()}

    inv = Inventory()
    wanted = set(include) if include is not None else None
    for missing in sorted((wanted or set()) - set(disk_names)):
        inv.excluded[missing] = "no such disk"
    for disk in disk_names:
        if wanted is not None and disk not in wanted:
            continue
        reason = _disk_exclusion(disk, devdirs[disk], parts_of[disk], mounts, swaps, system_disks)
        if reason is not None:
            inv.excluded[disk] = reason
            for part in parts_of[disk]:
                inv.excluded[part] = f"on excluded disk {disk} ({reason})"
            continue
        block_size = _read_int(devdirs[disk] / "queue" / "logical_block_size")
        for part in sorted(parts_of[disk], key=lambda p: _read_int(devdirs[p] / "partition") or 0):
            preason = _partition_exclusion(part, devdirs[part], mounts, swaps)
            if preason is None:
                p_or_reason = _partition(part, disk, devdirs[part], block_size)
                if isinstance(p_or_reason, Partition) and probe is not None:
                    p_or_reason = _probed(p_or_reason, devdirs[part], probe, offer, keep, mark)
                if isinstance(p_or_reason, Partition):
                    inv.offered.append(p_or_reason)
                    continue
                preason = p_or_reason
            inv.excluded[part] = preason
    for dev, why in inv.excluded.items():
        log.debug("inventory: not offering %s: %s", dev, why)
    return inv


def _disk_exclusion(disk: str, ddir: Path, parts: list[str], mounts: dict[str, set[str]],
                    swaps: set[str], system_disks: dict[str, str]) -> str | None:
    """Why a whole disk is never offered, or None."""
    if disk.startswith(SKIP_PREFIXES):
        return "virtual, optical or stacked device type"
    if disk in system_disks:
        return system_disks[disk]
    if _read(ddir / "removable") == "1":
        return "removable device"
    if _read(ddir / "ro") == "1":
        return "read-only device"
    if _read(ddir / "hidden") == "1":
        # NOTE: hidden disks are e.g. the per-path nodes of NVMe multipath: not usable directly.
        return "hidden device"
    if disk in mounts:
        return f"mounted whole disk ({', '.join(sorted(mounts[disk]))})"
    if disk in swaps:
        return "whole disk used as swap"
    holders = _list(ddir / "holders")
    if holders:
        return f"in use by {', '.join(holders)} (holders: dm, md or LVM)"
    if _read_int(ddir / "queue" / "logical_block_size") not in VALID_BLOCK_SIZES:
        return "unsupported or unreadable logical block size"
    if not parts:
        return "no partitions"
    return None


def _partition_exclusion(part: str, pdir: Path, mounts: dict[str, set[str]],
                         swaps: set[str]) -> str | None:
    """Why one partition of an acceptable disk is not offered, or None."""
    if part in mounts:
        return f"mounted on {', '.join(sorted(mounts[part]))}"
    if part in swaps:
        return "used as swap"
    holders = _list(pdir / "holders")
    if holders:
        return f"in use by {', '.join(holders)} (holders: dm, md or LVM)"
    if _read(pdir / "ro") == "1":
        return "read-only partition"
    return None


def _partition(part: str, disk: str, pdir: Path, block_size: int | None) -> Partition | str:
    """The Partition for a sysfs partition dir, or the reason it cannot be offered."""
    number = _read_int(pdir / "partition")
    start = _read_int(pdir / "start")
    size = _read_int(pdir / "size")
    if number is None or start is None or size is None or block_size is None:
        return "unreadable partition, start or size in sysfs"
    if size * SYSFS_SECTOR < MIN_PARTITION_BYTES:
        return f"smaller than {MIN_PARTITION_BYTES} bytes (an extended partition container?)"
    per_block = block_size // SYSFS_SECTOR
    if start % per_block or size % per_block:
        return f"not aligned to the {block_size}-byte logical block size"
    start_lba, length = start // per_block, size // per_block
    try:
        return Partition(device=part, disk=disk, number=number, start_lba=start_lba,
                         length_blocks=length, end_lba=start_lba + length - 1,
                         block_size=block_size, size_bytes=length * block_size)
    except DvsanError as e:
        return f"not representable: {e}"


def _probed(p: Partition, pdir: Path, probe: Probe, offer: str, keep: frozenset[str],
            mark: str) -> Partition | str:
    """`p` with its identity from the probe, or why the offer policy (or the probe) leaves it out."""
    try:
        info = probe(p.device)
    except DvsanError as e:
        return f"cannot probe for signatures ({e}): not offered"
    uid = info.get("PART_ENTRY_UUID", "")
    try:
        p = dataclasses.replace(p, uid=uid)
    except DvsanError:
        return f"unusable partition identity {uid!r}"
    offset, size = info.get("PART_ENTRY_OFFSET"), info.get("PART_ENTRY_SIZE")
    if offset is not None and size is not None and (offset, size) != (_read(pdir / "start"), _read(pdir / "size")):
        return (f"the partition table says start {offset} size {size} (512-byte sectors) but the kernel "
                f"uses start {_read(pdir / 'start')} size {_read(pdir / 'size')}: re-read it (partx -u) first")
    if p.device in keep or (uid and uid in keep) or offer == "all-unmounted":
        return p
    if offer == "marked":
        name, label = info.get("PART_ENTRY_NAME", ""), info.get("LABEL", "")
        if name.startswith(mark) or label.startswith(mark):
            return p
        return (f"not marked for dvsan (offer policy 'marked': neither the GPT partition name {name!r} "
                f"nor the label {label!r} starts with {mark!r})")
    what = _signature(info)
    if what:
        return (f"holds {what} (offer policy 'empty'): wipe it (wipefs -a) if it is unused, or mark "
                f"it (GPT partition name {mark}...) and use offer policy 'marked'")
    return p


def _signature(info: dict[str, str]) -> str | None:
    """What blkid found on a partition, in words ("an ext4 filesystem"), or None if nothing."""
    kind = info.get("TYPE")
    if kind:
        if kind in _SIGNATURES:
            return _SIGNATURES[kind]
        if info.get("USAGE") == "filesystem":
            return f"{_article(kind)} {kind} filesystem"
        return f"{_article(kind)} {kind} signature"
    if info.get("PTTYPE"):
        return f"{_article(info['PTTYPE'])} {info['PTTYPE']} partition table"
    return None


def _article(word: str) -> str:
    # NOTE: by the sound of the first letter's name: "an ext4", "an xfs", "an ntfs", "a vfat".
    return "an" if word[:1].lower() in "aefhilmnorsx" else "a"


def _mounted_devices(base: Path, by_devnum: dict[str, str],
                     devdirs: dict[str, Path]) -> dict[str, set[str]]:
    """Block device name -> its mount points, from /proc/self/mountinfo.

    Sample line (id parent major:minor root mountpoint options [optional] - fstype source super):
        36 25 254:1 / /boot rw,relatime shared:12 - ext4 /dev/vda1 rw
    """
    out: dict[str, set[str]] = {}
    text = _read_or_raise(base / "proc" / "self" / "mountinfo")
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        mountpoint = _unescape(fields[4])
        names = set()
        if fields[2] in by_devnum:
            names.add(by_devnum[fields[2]])
        # NOTE: btrfs subvolumes report an anonymous 0:N device number; the source names the device.
        if "-" in fields[6:]:
            after = fields[fields.index("-", 6) + 1:]
            if len(after) >= 2:
                src = _device_name(base, _unescape(after[1]), devdirs)
                if src:
                    names.add(src)
        for name in names:
            out.setdefault(name, set()).add(mountpoint)
    return out


def _swap_devices(base: Path, devdirs: dict[str, Path]) -> set[str]:
    """Block devices in use as swap, from /proc/swaps.

    Sample:
        Filename              Type            Size            Used            Priority
        /dev/vda3             partition       1048572         0               -2
    """
    out: set[str] = set()
    text = _read_or_raise(base / "proc" / "swaps")
    for line in text.splitlines()[1:]:
        fields = line.split()
        if fields:
            name = _device_name(base, _unescape(fields[0]), devdirs)
            if name:
                out.add(name)
    return out


def _device_name(base: Path, path: str, devdirs: dict[str, Path]) -> str | None:
    """The kernel name of a /dev path (following /dev/mapper and by-* links), if a known one."""
    if not path.startswith("/dev/"):
        return None
    name = os.path.basename(path)
    if name in devdirs:
        return name
    try:
        real = os.path.basename(os.path.realpath(base / path.lstrip("/")))
    except OSError:
        return None
    return real if real in devdirs else None


def _underlying(dev: str, devdirs: dict[str, Path], depth: int = 0) -> set[str]:
    """The bottom devices beneath a stacked device (dm, md), following sysfs `slaves/`."""
    if dev not in devdirs or depth > 16:
        return {dev}
    slaves = _list(devdirs[dev] / "slaves")
    if not slaves:
        return {dev}
    out: set[str] = set()
    for s in slaves:
        out |= _underlying(s, devdirs, depth + 1)
    return out


def _unescape(s: str) -> str:
    """Undo the kernel's octal escapes (\\040 for a space) in mountinfo and /proc/swaps."""
    if "\\" not in s:
        return s
    try:
        return s.encode("latin-1").decode("unicode_escape")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return s


def _read_or_raise(p: Path) -> str:
    """A file the scan cannot do without. NOTE: fail closed: unreadable mount or swap tables
    must never read as "nothing is mounted", or a mounted partition would be offered."""
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise AdapterError(f"cannot read {p}: {e}; not offering anything without it") from e


def _read(p: Path) -> str | None:
    try:
        return p.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(p: Path) -> int | None:
    v = _read(p)
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _list(p: Path) -> list[str]:
    try:
        return sorted(os.listdir(p))
    except OSError:
        return []


@dataclass(frozen=True, slots=True)
class DiskUse:
    """What holds a disk and each of its partitions now, in words, as the kernel shows it.

    `system` names what makes it the system disk (None if it is not); `whole` what holds the disk
    itself (mounted, swap, holders); `parts` each partition's blockers, by kernel name. A
    partition missing from `parts` holds nothing the kernel knows of.
    """

    disk: str
    size_bytes: int
    sector_size: int
    serial: str
    system: str | None
    whole: list[str]
    parts: dict[str, list[str]]
    # partition kernel name -> (number, start, size) in 512-byte sysfs sectors
    kernel_parts: dict[str, tuple[int, int, int]] = field(default_factory=dict)


def disk_use(root: str, disk: str) -> DiskUse:
    """What is in the way of a change to `disk`'s partition table (sysfs and /proc under `root`).

    Fails closed: unreadable mount or swap tables raise AdapterError (nothing reads as unused).
    """
    base = Path(root)
    sys_block = base / "sys" / "block"
    ddir = sys_block / disk
    if not ddir.is_dir():
        raise AdapterError(f"disk {disk} is not in {sys_block}")
    devdirs: dict[str, Path] = {}
    parent: dict[str, str] = {}
    for d in _list(sys_block):
        devdirs[d] = sys_block / d
        for child in _list(sys_block / d):
            if (sys_block / d / child / "partition").is_file():
                devdirs[child] = sys_block / d / child
                parent[child] = d
    by_devnum = {num: name for name, d in devdirs.items() if (num := _read(d / "dev"))}
    mounts = _mounted_devices(base, by_devnum, devdirs)
    swaps = _swap_devices(base, devdirs)
    roles: set[str] = set()
    for dev, mountpoints in mounts.items():
        for mp in mountpoints & SYSTEM_MOUNTPOINTS:
            if any(parent.get(u, u) == disk for u in _underlying(dev, devdirs)):
                roles.add(mp)
    for dev in swaps:
        if any(parent.get(u, u) == disk for u in _underlying(dev, devdirs)):
            roles.add("swap")

    def blockers(dev: str) -> list[str]:
        out = []
        if dev in mounts:
            out.append(f"mounted on {', '.join(sorted(mounts[dev]))}")
        if dev in swaps:
            out.append("in use as swap")
        for h in _list(devdirs[dev] / "holders"):
            out.append(f"held by {h} ({_holder_kind(sys_block / h)})")
        return out

    parts: dict[str, list[str]] = {}
    kernel: dict[str, tuple[int, int, int]] = {}
    for name, p in devdirs.items():
        if parent.get(name) != disk:
            continue
        b = blockers(name)
        if b:
            parts[name] = b
        number, start, size = (_read_int(p / k) for k in ("partition", "start", "size"))
        if number is not None and start is not None and size is not None:
            kernel[name] = (number, start, size)
    serial = (_read(ddir / "wwid") or _read(ddir / "device" / "wwid") or _read(ddir / "serial")
              or _read(ddir / "device" / "serial") or "")
    return DiskUse(disk=disk, size_bytes=(_read_int(ddir / "size") or 0) * SYSFS_SECTOR,
                   sector_size=_read_int(ddir / "queue" / "logical_block_size") or SYSFS_SECTOR,
                   serial=serial, system=("holds " + ", ".join(sorted(roles))) if roles else None,
                   whole=blockers(disk), parts=parts, kernel_parts=kernel)


def _holder_kind(hdir: Path) -> str:
    """What a holder is, for the operator: `dm` (with its name: an LVM volume, crypt...) or md."""
    dm_name = _read(hdir / "dm" / "name")
    if dm_name is not None:
        return f"device-mapper {dm_name}: LVM, crypt or multipath"
    if hdir.name.startswith("md"):
        return "md RAID"
    return "a stacked device"


def managed_disks(root: str = "/", include: list[str] | None = None) -> list[str]:
    """The disks a unit reports and may partition: `include`, or every disk that is not virtual,
    optical, stacked, removable or read-only."""
    names = _list(Path(root) / "sys" / "block")
    if include:
        return [d for d in names if d in include]
    out = []
    for d in names:
        ddir = Path(root) / "sys" / "block" / d
        if d.startswith(SKIP_PREFIXES) or _read(ddir / "removable") == "1" or _read(ddir / "ro") == "1":
            continue
        out.append(d)
    return out
