"""Partitioning a unit's disk on the station's order (issue 7): checks, sfdisk, kernel re-read, report.

The station sends PARTITION (docs/protocol.md, "Partitioning a disk") with a layout: write a new
empty GPT label, delete partitions by number, create partitions by size. The unit answers the ACK
at once (`accepted`, or `busy` while another change of the same disk runs) and carries the order
out step by step, reporting each step in PARTITION_STATUS and the end (succeeded, refused with
what is in the way, or failed with the old table restored), retried until the station hears it.

Safety is checked here, on the unit, at the moment of the change, not from the station's view:
never the system disk; never delete a partition that is mounted, swap, held (dm, md, LVM),
exported by LIO, assigned (the station names them in the order) or being wiped. The refusal names
every blocker, the way Cockpit lists what is in the way.

All or nothing: the table is saved (`sfdisk --dump`) before the new one is written in one sfdisk
run; if the write, the kernel's re-read or the check that the kernel and the disk show the planned
table fails, the saved table is written back (a disk that had none gets its new label erased).

The pure part (parse, plan, script, blockers) is tested on its own; `Sfdisk` runs the tools;
`Partitioner` is the agent's message handler. For tests, `path_of` may point a disk at a plain
image file: sfdisk works on files, the kernel steps (partx, udevadm) are then skipped.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import secrets
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from dvsan.errors import AdapterError, Conflict, DvsanError, InvalidInput, Unavailable
from dvsan.model import Export
from dvsan.naming import check_device
from dvsan.protocol import MsgType
from unit_agent.inventory import SYSFS_SECTOR, DiskUse, disk_use, managed_disks, parse_blkid_export

if TYPE_CHECKING:
    from unit_agent.agent import UnitAgent

log = logging.getLogger(__name__)

MiB = 1 << 20
GPT_ENTRIES_BYTES = 128 * 128        # the GPT partition entry array: 128 entries of 128 bytes
MAX_PARTITIONS = 128                 # GPT's usual entry count
LINUX_FS_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
LABELS = ("gpt",)
STATES = ("running", "succeeded", "refused", "failed")
STEPS = ("checking what is in the way", "saving the partition table", "writing the new table",
         "making the kernel re-read the table", "waiting for udev", "checking the new table",
         "reporting the new storage to the station")
_ID_RE = re.compile(r"^[0-9A-Za-z._:-]{1,64}$")
_NAME_RE = re.compile(r"^[0-9A-Za-z._-]{0,36}$")
TOOL_TIMEOUT = 60.0
FINAL_RETRY_MAX = 30.0


# ---- the order ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NewPartition:
    size_bytes: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class Layout:
    """The change asked: a new empty label first (`label`), then `delete`, then `create`."""

    label: str | None = None
    create: tuple[NewPartition, ...] = ()
    delete: tuple[int, ...] = ()

    @classmethod
    def from_wire(cls, raw: Any) -> Layout:
        if not isinstance(raw, dict):
            raise InvalidInput("field 'layout' must be an object")
        unknown = set(raw) - {"label", "create", "delete"}
        if unknown:
            raise InvalidInput(f"layout has unknown field(s) {', '.join(sorted(unknown))}")
        label = raw.get("label")
        if label is not None and label not in LABELS:
            raise InvalidInput(f"layout 'label' must be one of {', '.join(LABELS)} or absent")
        create, delete = raw.get("create", []), raw.get("delete", [])
        if not isinstance(create, list) or len(create) > MAX_PARTITIONS:
            raise InvalidInput(f"layout 'create' must be a list of at most {MAX_PARTITIONS} partitions")
        if not isinstance(delete, list) or len(delete) > MAX_PARTITIONS:
            raise InvalidInput(f"layout 'delete' must be a list of at most {MAX_PARTITIONS} numbers")
        news = []
        for c in create:
            size = c.get("size_bytes") if isinstance(c, dict) else None
            name = c.get("name", "") if isinstance(c, dict) else ""
            if not isinstance(size, int) or isinstance(size, bool) or not MiB <= size <= 2**63:
                raise InvalidInput("each partition to create needs 'size_bytes': an integer of at least 1 MiB")
            if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
                raise InvalidInput("a partition 'name' is 0-36 of [0-9A-Za-z._-]")
            news.append(NewPartition(size, name))
        for n in delete:
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_PARTITIONS:
                raise InvalidInput(f"layout 'delete' holds partition numbers 1-{MAX_PARTITIONS}")
        if len(set(delete)) != len(delete):
            raise InvalidInput("layout 'delete' names a partition twice")
        if label is None and not news and not delete:
            raise InvalidInput("the layout changes nothing: give 'label', 'create' or 'delete'")
        return cls(label, tuple(news), tuple(delete))

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"create": [{"size_bytes": c.size_bytes, **({"name": c.name} if c.name else {})}
                                          for c in self.create], "delete": list(self.delete)}
        if self.label:
            out["label"] = self.label
        return out


@dataclass(frozen=True, slots=True)
class PartitionOrder:
    """A PARTITION message: change `device`'s table as `layout` says."""

    unit: str
    device: str
    layout: Layout
    partition_id: str
    assigned: frozenset[str] = frozenset()     # partitions the station has given to hosts
    pool_id: str = ""

    @classmethod
    def from_wire(cls, body: Any) -> PartitionOrder:
        if not isinstance(body, dict):
            raise InvalidInput("a PARTITION body must be an object")
        for name in ("unit", "device", "layout", "partition_id"):
            if name not in body:
                raise InvalidInput(f"PARTITION is missing field {name!r}")
        pid = body["partition_id"]
        if not isinstance(pid, str) or not _ID_RE.fullmatch(pid):
            raise InvalidInput("field 'partition_id' must be 1 to 64 of [0-9A-Za-z._:-]")
        assigned = body.get("assigned", [])
        if not isinstance(assigned, list):
            raise InvalidInput("field 'assigned' must be a list of device names")
        pool_id = body.get("pool_id", "")
        if not isinstance(pool_id, str) or len(pool_id) > 64:
            raise InvalidInput("field 'pool_id' must be a string of at most 64 characters")
        return cls(str(body["unit"]), check_device(body["device"]), Layout.from_wire(body["layout"]), pid,
                   frozenset(check_device(a) for a in assigned), pool_id)


# ---- the table -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Entry:
    """One partition of a table, in sectors of the disk's sector size."""

    number: int
    start: int
    size: int
    type: str = LINUX_FS_TYPE
    uuid: str = ""
    name: str = ""

    @property
    def end(self) -> int:
        return self.start + self.size - 1


@dataclass(frozen=True, slots=True)
class Table:
    """A partition table as sfdisk shows it (`sfdisk --json`); id "" for one not yet written."""

    label: str
    sector_size: int
    first_lba: int
    last_lba: int
    parts: tuple[Entry, ...] = ()
    id: str = ""

    def extents(self) -> set[tuple[int, int, int]]:
        return {(p.number, p.start, p.size) for p in self.parts}


def parse_sfdisk_json(text: str) -> Table:
    """The table of `sfdisk --json /dev/DISK` output.

    Sample (abridged):
        {"partitiontable": {"label": "gpt", "id": "2CCF...", "device": "/dev/vdb", "unit": "sectors",
          "firstlba": 2048, "lastlba": 4194270, "sectorsize": 512,
          "partitions": [{"node": "/dev/vdb1", "start": 2048, "size": 16384,
                          "type": "0FC63DAF-...", "uuid": "D15B...", "name": "dvsan-1"}]}}
    """
    try:
        t = json.loads(text)["partitiontable"]
        parts = []
        for p in t.get("partitions", []):
            m = re.search(r"(\d+)$", p["node"])
            if m is None:
                raise ValueError(f"no partition number in node {p['node']!r}")
            parts.append(Entry(int(m.group(1)), int(p["start"]), int(p["size"]), str(p.get("type", "")),
                               str(p.get("uuid", "")), str(p.get("name", ""))))
        return Table(str(t["label"]), int(t.get("sectorsize", 512)), int(t.get("firstlba", 0)),
                     int(t.get("lastlba", 0)), tuple(sorted(parts, key=lambda e: e.number)), str(t.get("id", "")))
    except (ValueError, KeyError, TypeError) as e:
        raise AdapterError(f"cannot read sfdisk's JSON: {e}") from e


def new_gpt(total_sectors: int, sector_size: int) -> Table:
    """An empty GPT as sfdisk lays it out: usable from 1 MiB to before the backup entries and header."""
    entries = -(-GPT_ENTRIES_BYTES // sector_size)
    return Table("gpt", sector_size, MiB // sector_size, total_sectors - 2 - entries)


def partition_name(disk: str, number: int) -> str:
    """The kernel's name of partition `number` of `disk`: vdb1, nvme0n1p1, mmcblk0p1."""
    return f"{disk}{'p' if disk[-1:].isdigit() else ''}{number}"


def free_regions(t: Table) -> list[tuple[int, int]]:
    """The gaps of a table as (first, last) sectors, aligned starts (1 MiB), at least 1 MiB long."""
    grain = max(1, MiB // t.sector_size)
    out = []
    cursor = t.first_lba
    for p in sorted(t.parts, key=lambda e: e.start):
        if p.start > cursor:
            out.append((cursor, p.start - 1))
        cursor = max(cursor, p.end + 1)
    if cursor <= t.last_lba:
        out.append((cursor, t.last_lba))
    aligned = []
    for first, last in out:
        start = -(-first // grain) * grain
        if last - start + 1 >= grain:
            aligned.append((start, last))
    return aligned


def plan(current: Table | None, layout: Layout, total_sectors: int, sector_size: int) -> Table:
    """The table after `layout`: `label` starts from an empty one, deleted numbers go, new
    partitions take the lowest free numbers and the first gap they fit (1 MiB aligned, sizes
    rounded up to whole MiB). Raises InvalidInput when the layout does not fit the table."""
    if layout.label:
        base = new_gpt(total_sectors, sector_size)
        left = () if current is None else tuple(p for p in current.parts if p.number not in layout.delete)
        if left:
            raise InvalidInput(f"a new label erases partition(s) {', '.join(str(p.number) for p in left)}: "
                               "list them in 'delete' too")
    elif current is None:
        raise InvalidInput("the disk has no partition table: initialise it first (label: gpt)")
    else:
        missing = sorted(set(layout.delete) - {p.number for p in current.parts})
        if missing:
            raise InvalidInput(f"partition(s) {', '.join(map(str, missing))} do not exist on this disk")
        base = replace(current, parts=tuple(p for p in current.parts if p.number not in layout.delete))
    grain = max(1, MiB // sector_size)
    table = base
    for c in layout.create:
        used = {p.number for p in table.parts}
        number = next((n for n in range(1, MAX_PARTITIONS + 1) if n not in used), None)
        if number is None:
            raise InvalidInput(f"the table holds {MAX_PARTITIONS} partitions already")
        size = -(-c.size_bytes // (grain * sector_size)) * grain
        gap = next(((first, last) for first, last in free_regions(table) if last - first + 1 >= size), None)
        if gap is None:
            biggest = max((last - first + 1 for first, last in free_regions(table)), default=0)
            raise InvalidInput(f"no free space of {size * sector_size} bytes for a new partition (the "
                               f"largest free region holds {biggest * sector_size} bytes)")
        table = replace(table, parts=tuple(sorted((*table.parts, Entry(number, gap[0], size, name=c.name)),
                                                  key=lambda e: e.number)))
    return table


def script(t: Table, path: str) -> str:
    """The sfdisk input that writes exactly table `t` (starts and sizes in sectors) to `path`."""
    lines = [f"label: {t.label}"]
    if t.id:
        lines.append(f"label-id: {t.id}")
    lines.append(f"sector-size: {t.sector_size}")
    for p in t.parts:
        fields = [f"start={p.start}", f"size={p.size}", f"type={p.type or LINUX_FS_TYPE}"]
        if p.uuid:
            fields.append(f"uuid={p.uuid}")
        if p.name:
            fields.append(f'name="{p.name}"')
        lines.append(f"{partition_name(path, p.number)} : {', '.join(fields)}")
    return "\n".join(lines) + "\n"


def blockers(order: PartitionOrder, current: Table | None, use: DiskUse, exported: dict[str, str],
             wiping: set[str]) -> list[str]:
    """What stands in the way of the order, one phrase each ("vdb1 is mounted on /mnt"); [] if nothing.

    `exported`: device -> the LIO target that exports it; `wiping`: devices being zeroed.
    """
    disk = order.device
    if use.system is not None:
        return [f"{disk} is the system disk ({use.system})"]
    out = [f"{disk} itself is {b}" for b in use.whole]
    doomed = set(order.layout.delete)
    if order.layout.label and current is not None:
        doomed |= {p.number for p in current.parts}
    for n in sorted(doomed):
        dev = partition_name(disk, n)
        out += [f"{dev} is {b}" for b in use.parts.get(dev, [])]
        if dev in exported:
            out.append(f"{dev} is exported by LIO as {exported[dev]}")
        if dev in order.assigned:
            out.append(f"{dev} is assigned to a host")
        if dev in wiping:
            out.append(f"{dev} is being wiped")
    return out


def disk_report(use: DiskUse, table: Table | None, exported: dict[str, str]) -> dict[str, Any]:
    """One disk as STORAGE_INFO's `disks` carries it (docs/protocol.md)."""
    parts = []
    for p in table.parts if table else ():
        dev = partition_name(use.disk, p.number)
        in_use = list(use.parts.get(dev, []))
        if dev in exported:
            in_use.append(f"exported by LIO as {exported[dev]}")
        parts.append({"number": p.number, "device": dev, "start_lba": p.start, "end_lba": p.end,
                      "size_bytes": p.size * table.sector_size if table else 0, "type": p.type,
                      "uuid": p.uuid, "name": p.name, "in_use": in_use})
    free = [{"start_lba": a, "end_lba": b, "size_bytes": (b - a + 1) * table.sector_size}
            for a, b in free_regions(table)] if table else []
    return {"name": use.disk, "id": use.serial, "size_bytes": use.size_bytes,
            "sector_size": table.sector_size if table else use.sector_size,
            "label": table.label if table else None, "label_id": table.id if table else None,
            "system": use.system is not None, "system_detail": use.system, "in_use": list(use.whole),
            "partitions": parts, "free": free}


# ---- the tools -------------------------------------------------------------------------------------

class Sfdisk:
    """sfdisk, partx, blockdev, udevadm and wipefs on one path (a block device, or an image file)."""

    def __init__(self, timeout: float = TOOL_TIMEOUT):
        self.timeout = timeout

    def _run(self, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=self.timeout,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise AdapterError(f"cannot run {argv[0]}: {e}") from e

    def _ok(self, argv: list[str], input: str | None = None) -> str:
        r = self._run(argv, input)
        if r.returncode != 0:
            raise AdapterError(f"{' '.join(argv)} failed (exit {r.returncode}): {r.stderr.strip()[:300]}")
        return r.stdout

    def read(self, path: str) -> Table | None:
        """The table on `path`, or None if it has none (sfdisk exits 1 and says so)."""
        r = self._run(["sfdisk", "--json", path])
        if r.returncode != 0:
            if "does not contain a recognized partition table" in r.stderr:
                return None
            raise AdapterError(f"sfdisk --json {path} failed (exit {r.returncode}): {r.stderr.strip()[:300]}")
        return parse_sfdisk_json(r.stdout)

    def dump(self, path: str) -> str:
        return self._ok(["sfdisk", "--dump", path])

    def write(self, path: str, text: str) -> None:
        # NOTE: --no-reread/--no-tell-kernel: sfdisk refuses a disk with a partition in use unless
        # told not to re-read; the kernel learns of the change from partx, which adds, removes and
        # resizes partitions one by one and refuses (EBUSY) to drop one that is in use.
        self._ok(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "never",
                  "--wipe-partitions", "never", path], text)

    def erase_label(self, path: str) -> None:
        """Undo a new label on a disk that had none (only partition-table signatures go)."""
        self._ok(["wipefs", "--quiet", "--all", "--force", "--types", "gpt,PMBR", path])

    def lock(self, path: str) -> int:
        """Take an exclusive BSD lock on the whole disk while its table and the kernel change;
        returns the descriptor to give to `unlock`.

        NOTE: udev probes a disk's partitions again (blkid opens each) when a writer closes the
        disk, as sfdisk does; the kernel refuses (EBUSY) to drop a partition held open that moment.
        systemd-udevd leaves a disk alone while someone holds this lock ("Locking Block Device
        Access"), and sfdisk does not take one unless told (--lock), so ours does not block it.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise AdapterError(f"cannot open {path}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            os.close(fd)
            raise AdapterError(f"cannot lock {path}: {e}") from e
        return fd

    def unlock(self, fd: int) -> None:
        os.close(fd)

    def signature(self, path: str) -> str | None:
        """The TYPE blkid's low-level probe finds on a disk without a partition table (ext4,
        LVM2_member, linux_raid_member...), or None (exit 2: nothing)."""
        r = self._run(["blkid", "-p", "-o", "export", path])
        if r.returncode == 2:
            return None
        if r.returncode != 0:
            raise AdapterError(f"blkid -p {path} failed (exit {r.returncode}): {r.stderr.strip()[:300]}")
        info = parse_blkid_export(r.stdout)
        return info.get("TYPE") or info.get("PTTYPE") or None

    def forget(self, path: str, number: int) -> None:
        """Make the kernel drop partition `number` (it refuses, EBUSY, one in use)."""
        self._ok(["partx", "--delete", "--nr", str(number), path])

    def reread(self, path: str) -> None:
        """Make the kernel's partitions follow the disk's table (block devices only)."""
        if not is_block(path):
            return
        self._ok(["partx", "--update", path])

    def settle(self) -> None:
        r = self._run(["udevadm", "settle", f"--timeout={int(self.timeout)}"])
        if r.returncode != 0:
            log.warning("udevadm settle: exit %d: %s", r.returncode, r.stderr.strip())


def is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def disk_sectors(path: str, sector_size: int) -> int:
    """How many sectors `path` holds (block device or file)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END) // sector_size
    finally:
        os.close(fd)


# ---- the agent's side ------------------------------------------------------------------------------

class StatusSink(Protocol):
    """Sends one PARTITION_STATUS; raises Unavailable when the station does not acknowledge it."""

    def __call__(self, body: dict[str, Any], final: bool) -> Awaitable[None]: ...


class DevicePort(Protocol):
    """What the partitioner asks the rest of the unit: LIO's exports and the wiper's work."""

    def exports(self) -> list[Export]: ...
    def wiping(self, device: str) -> bool: ...
    def report_storage(self) -> Awaitable[None]: ...


@dataclass(eq=False)
class _Job:
    order: PartitionOrder
    started: float = field(default_factory=time.monotonic)
    step: int = 0


class _Refused(Exception):
    """The order may not be carried out; the message names what is in the way."""


class Partitioner:
    """The partition-table changes of one unit: one at a time per disk."""

    def __init__(self, unit: str, devices: DevicePort, *, sink: StatusSink | None = None,
                 disks: Callable[[], list[str]] = list, sysfs_root: str = "/",
                 path_of: Callable[[str], str] = lambda disk: f"/dev/{disk}",
                 use_of: Callable[[str], DiskUse] | None = None, tools: Sfdisk | None = None,
                 pool: Callable[[], str | None] = lambda: None):
        """`disks`: the disks this unit manages; `use_of(disk)`: what holds it now (by default
        read from sysfs under `sysfs_root`); `path_of`: where a disk is (tests: image files)."""
        self.unit, self.devices, self.sink = unit, devices, sink
        self.disks, self.path_of, self.pool = disks, path_of, pool
        self.use_of = use_of or (lambda disk: disk_use(sysfs_root, disk))
        self.tools = tools or Sfdisk()
        self.final_retry_first = 1.0
        self.final_retry_max = FINAL_RETRY_MAX
        self._jobs: dict[str, _Job] = {}
        self._last: dict[str, dict[str, Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    @classmethod
    def of_agent(cls, agent: UnitAgent, include: list[str] | None = None, sysfs_root: str = "/") -> Partitioner:
        return cls(agent.name, _AgentDevices(agent), sink=_AgentSink(agent), sysfs_root=sysfs_root,
                   disks=lambda: managed_disks(sysfs_root, include), pool=lambda: agent.pin.pool_id)

    # ---- the report -------------------------------------------------------------------------

    def report(self) -> list[dict[str, Any]]:
        """Every managed disk with its table and what holds each partition (STORAGE_INFO `disks`).
        A disk that cannot be read is reported with the reason, not left out."""
        exported = self._exported()
        out = []
        for disk in self.disks():
            try:
                use = self.use_of(disk)
                out.append(disk_report(use, self.tools.read(self.path_of(disk)), exported))
            except DvsanError as e:
                log.warning("disk %s left out of the report: %s", disk, e)
        return out

    def _exported(self) -> dict[str, str]:
        try:
            return {e.device: e.target_iqn for e in self.devices.exports()}
        except DvsanError as e:
            raise AdapterError(f"cannot ask LIO what it exports: {e}") from e

    # ---- messages ---------------------------------------------------------------------------

    async def handle(self, mtype: MsgType, body: dict[str, Any]) -> dict[str, Any]:
        if mtype != MsgType.PARTITION:
            raise InvalidInput(f"the partitioner does not take {mtype.name} messages")
        o = PartitionOrder.from_wire(body)
        if o.unit != self.unit:
            raise Conflict(f"PARTITION for unit {o.unit!r} sent to unit {self.unit!r}")
        if o.device not in self.disks():
            return {"status": "refused", "partition_id": o.partition_id,
                    "reason": f"{o.device} is not a disk this unit manages"}
        job = self._jobs.get(o.device)
        if job is not None:
            if job.order.partition_id == o.partition_id:
                return {"status": "running", "partition_id": o.partition_id, "step": job.step}
            return {"status": "busy", "partition_id": o.partition_id,
                    "reason": f"change {job.order.partition_id} of {o.device} is running: one at a time"}
        last = self._last.get(o.device)
        if last is not None and last["partition_id"] == o.partition_id:
            # a retransmitted order whose change ended: its end again, never a second change
            self._spawn(self._report_final(last))
            return {"status": "ended", "partition_id": o.partition_id, "state": last["state"]}
        if self._stopping:
            return {"status": "refused", "partition_id": o.partition_id, "reason": "this unit is shutting down"}
        pinned = self.pool()
        if pinned is not None and o.pool_id != pinned:
            return {"status": "refused", "partition_id": o.partition_id,
                    "reason": f"this unit belongs to pool {pinned}, not {o.pool_id or 'none'} (a second station?)"}
        job = _Job(o)
        self._jobs[o.device] = job
        self._spawn(self._run(job))
        return {"status": "accepted", "partition_id": o.partition_id, "total_steps": len(STEPS)}

    def running(self, disk: str) -> bool:
        return disk in self._jobs

    async def wait(self, disk: str, timeout: float = 60) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while disk in self._jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self._last.get(disk)

    def stop(self) -> None:
        self._stopping = True
        for t in list(self._tasks):
            t.cancel()

    # ---- the change ---------------------------------------------------------------------------

    def _status(self, job: _Job, state: str, message: str, **extra: Any) -> dict[str, Any]:
        o = job.order
        return {"unit": self.unit, "device": o.device, "partition_id": o.partition_id, "state": state,
                "step": job.step, "total_steps": len(STEPS), "message": message[:255],
                "elapsed_s": round(time.monotonic() - job.started, 3), **extra}

    async def _progress(self, job: _Job, step: int) -> None:
        job.step = step
        if self.sink is None:
            return
        try:
            await self.sink(self._status(job, "running", STEPS[step - 1]), False)
        except DvsanError as e:
            log.warning("partitioning %s: progress not acknowledged: %s", job.order.device, e)

    async def _run(self, job: _Job) -> None:
        o = job.order
        try:
            try:
                final = await self._change(job)
            except _Refused as e:
                final = self._status(job, "refused", f"refused: {e}", reason=str(e))
                # the station's view of the disk was stale: refresh it before it hears the refusal
                await self.devices.report_storage()
            except DvsanError as e:
                final = self._status(job, "failed", f"failed: {e}", error=str(e))
            except Exception as e:  # a bug must end the change as failed, never leave it running
                log.exception("partitioning %s crashed", o.device)
                final = self._status(job, "failed", f"internal error: {type(e).__name__}",
                                     error=f"internal error: {type(e).__name__}: {e}")
        finally:
            if self._jobs.get(o.device) is job:
                del self._jobs[o.device]
        self._last[o.device] = final
        level = logging.INFO if final["state"] == "succeeded" else logging.WARNING
        log.log(level, "partitioning %s (%s): %s", o.device, o.partition_id, final["message"])
        await self._report_final(final)

    async def _change(self, job: _Job) -> dict[str, Any]:
        o, tools = job.order, self.tools
        path = self.path_of(o.device)
        await self._progress(job, 1)
        current = await asyncio.to_thread(tools.read, path)
        use = await asyncio.to_thread(self.use_of, o.device)
        exported = await asyncio.to_thread(self._exported)
        wiping = {partition_name(o.device, p.number) for p in (current.parts if current else ())
                  if self.devices.wiping(partition_name(o.device, p.number))}
        blocked = blockers(o, current, use, exported, wiping)
        if current is None and not blocked:
            # NOTE: a disk without a table may still hold data on the whole disk (a filesystem,
            # an LVM PV): a new label would overwrite it. Cockpit asks; a unit refuses.
            found = await asyncio.to_thread(tools.signature, path)
            if found:
                blocked = [(f"{o.device} has no partition table but the whole disk holds a signature "
                            f"({found}): wipefs it first if it is unused")]
        if blocked:
            raise _Refused("; ".join(blocked))
        sector = current.sector_size if current else use.sector_size
        try:
            wanted = plan(current, o.layout, await asyncio.to_thread(disk_sectors, path, sector), sector)
        except InvalidInput as e:
            raise _Refused(str(e)) from e
        if o.layout.label:
            # NOTE: a fresh label gets a fresh disk identifier (sfdisk would pick one too; we must
            # know it to check the result).
            wanted = replace(wanted, id=_new_uuid())
        await self._progress(job, 2)
        backup = await asyncio.to_thread(tools.dump, path) if current is not None else None
        if is_block(path):
            await asyncio.to_thread(tools.settle)      # udev done with earlier events of this disk
        try:
            fd = await asyncio.to_thread(tools.lock, path)
            try:
                await self._progress(job, 3)
                await asyncio.to_thread(tools.write, path, script(wanted, path))
                await self._progress(job, 4)
                await asyncio.to_thread(self._sync_kernel, o.device, path, wanted)
            finally:
                tools.unlock(fd)
            await self._progress(job, 5)
            if is_block(path):
                await asyncio.to_thread(tools.settle)
            await self._progress(job, 6)
            await asyncio.to_thread(self._verify, o.device, path, wanted)
        except DvsanError as e:
            await asyncio.to_thread(self._restore, o.device, path, backup, e)
            raise
        await self._progress(job, 7)
        await self.devices.report_storage()
        after = await asyncio.to_thread(tools.read, path)
        created = sorted({p.number for p in wanted.parts} - {p.number for p in (current.parts if current else ())})
        return self._status(job, "succeeded", f"{o.device}: {len(wanted.parts)} partition(s) now",
                            table=disk_report(use, after, exported)["partitions"],
                            created=[partition_name(o.device, n) for n in created],
                            deleted=[partition_name(o.device, n) for n in sorted(o.layout.delete)])

    def _verify(self, disk: str, path: str, wanted: Table) -> None:
        """The disk and (for a block device) the kernel must show exactly the planned table."""
        got = self.tools.read(path)
        if got is None or got.extents() != wanted.extents():
            raise AdapterError(f"the table on {disk} is not the one written: got "
                               f"{sorted(got.extents()) if got else 'none'}, wanted {sorted(wanted.extents())}")
        if not is_block(path):
            return
        per = wanted.sector_size // SYSFS_SECTOR
        kernel = {(n, s // per, z // per) for n, s, z in self.use_of(disk).kernel_parts.values()}
        if kernel != wanted.extents():
            raise AdapterError(f"the kernel's partitions of {disk} do not follow the new table (a partition "
                               f"in use?): kernel {sorted(kernel)}, table {sorted(wanted.extents())}")

    def _sync_kernel(self, disk: str, path: str, table: Table | None) -> None:
        """Make the kernel's partitions those of `table` (None: none).

        NOTE: `partx --update` alone walks partition numbers in order: a partition that grows into
        the space of a higher-numbered one still in the kernel fails to be resized or added (seen
        in the lab: delete 3 and 4, create a larger 3). So every kernel partition that is not in
        the new table as it is goes first (partx --delete, which refuses one in use), then
        `partx --update` adds the new ones.
        """
        if is_block(path):
            per = (table.sector_size if table else SYSFS_SECTOR) // SYSFS_SECTOR
            want = table.extents() if table else set()
            for n, start, size in sorted(self.use_of(disk).kernel_parts.values()):
                if (n, start // per, size // per) not in want:
                    self.tools.forget(path, n)
        self.tools.reread(path)

    def _restore(self, disk: str, path: str, backup: str | None, cause: DvsanError) -> None:
        """Put the old table back after a failed change; a failed restore is added to the error."""
        log.error("partitioning %s failed (%s): restoring the old table", path, cause)
        try:
            fd = self.tools.lock(path)
            try:
                if backup is None:
                    self.tools.erase_label(path)
                else:
                    self.tools.write(path, backup)
                self._sync_kernel(disk, path, self.tools.read(path))
            finally:
                self.tools.unlock(fd)
        except DvsanError as e:
            raise AdapterError(f"{cause}; and restoring the old table failed too: {e}") from cause

    # ---- reports ------------------------------------------------------------------------------

    async def _report_final(self, body: dict[str, Any]) -> None:
        delay = self.final_retry_first
        while self.sink is not None and not self._stopping:
            try:
                await self.sink(body, True)
                return
            except DvsanError as e:
                log.warning("partitioning %s: final status (%s) not acknowledged (%s); again in %.0f s",
                            body["device"], body["state"], e, delay)
            await asyncio.sleep(delay)
            delay = min(self.final_retry_max, delay * 2)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _new_uuid() -> str:
    h = secrets.token_hex(16).upper()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89AB'[int(h[16], 16) % 4]}{h[17:20]}-{h[20:]}"


class _AgentDevices:
    """The DevicePort of a unit agent: its LIO, its wiper, its storage report."""

    def __init__(self, agent: UnitAgent):
        self.agent = agent

    def exports(self) -> list[Export]:
        return self.agent.lio.actual_exports()

    def wiping(self, device: str) -> bool:
        return self.agent.wiper.running(device)

    async def report_storage(self) -> None:
        await self.agent.send_storage_info(self.agent.station)


class _AgentSink:
    """Sends PARTITION_STATUS to the agent's station."""

    def __init__(self, agent: UnitAgent):
        self.agent = agent

    async def __call__(self, body: dict[str, Any], final: bool) -> None:
        endpoint = self.agent.endpoint
        if endpoint is None:
            raise Unavailable("the unit's endpoint is not open")
        await endpoint.send(self.agent.station, MsgType.PARTITION_STATUS, body,
                            timeout=10.0 if final else 2.0, max_rto=2.0 if final else 0.5)
