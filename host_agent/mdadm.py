"""md RAID1 arrays through mdadm and sysfs: the one module on a host that runs mdadm.

A dvsan mirror is a RAID1 of two iSCSI volumes on two units. Its array is named `dvsan-<id>`
(`/dev/md/dvsan-<id>`), made with a version-1.2 superblock and an internal write-intent bitmap
(a member that comes back resyncs only what changed while it was away). Parsers are pure
functions with a sample of what they parse; `Mdadm` runs every command through one runner.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dvsan.errors import AdapterError

log = logging.getLogger(__name__)

NAME_PREFIX = "dvsan-"
# NOTE: `--homehost=any` at create stores "any" as the home host in the superblock, so the array
# is no "foreign" array on any host (a spare host that takes over assembles it under its own
# name, not as dvsan-5_0); at assemble it makes mdadm ignore the recorded home host.
HOMEHOST = "any"
MDADM_ERR = 1          # mdadm's exit code for nearly every failure (the message tells which)
RC_TIMEOUT = -1        # our own: mdadm did not finish in time
RC_NOT_INSTALLED = 127  # our own, like the shell's


class MdadmError(AdapterError):
    """mdadm failed (`rc` its exit code), or it or sysfs said what we cannot parse."""

    def __init__(self, message: str, rc: int | None = None) -> None:
        self.rc = rc
        super().__init__(message)


class MdadmParseError(MdadmError, ValueError):
    """mdadm's output or an md sysfs attribute did not have the expected shape."""


def array_name(mirror_id: int) -> str:
    """The name given to mdadm --create: 'dvsan-5'."""
    return f"{NAME_PREFIX}{int(mirror_id)}"


def md_path(mirror_id: int) -> str:
    """The array's stable device path: '/dev/md/dvsan-5' (mdadm makes the link, udev or not)."""
    return f"/dev/md/{array_name(mirror_id)}"


# ---- a device's superblock -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Superblock:
    """An md superblock found on a device by `mdadm --examine --export`."""

    uuid: str                 # MD_UUID, the array's (not the member's) UUID
    name: str | None          # MD_NAME: 'any:dvsan-5' or 'host-b:dvsan-5' (v1 only)
    level: str                # MD_LEVEL: 'raid1'
    devices: int              # MD_DEVICES: the array's raid disks
    events: int | None = None  # MD_EVENTS

    @property
    def short_name(self) -> str | None:
        """The name without the home host mdadm prefixes to it: 'host-b:dvsan-5' -> 'dvsan-5'."""
        return self.name.rsplit(":", 1)[-1] if self.name else None

    def is_mirror(self, mirror_id: int, uuid: str | None = None) -> bool:
        """Whether this is mirror `mirror_id`'s array: the UUID recorded at create when known,
        else the name (whatever home host mdadm put in front of it)."""
        if uuid:
            return self.uuid == uuid
        return self.short_name == array_name(mirror_id)


@dataclass(frozen=True, slots=True)
class OtherSignature:
    """Not an md superblock but something else mdadm recognised (an MBR or GPT partition table)."""

    what: str


_UUID_RE = re.compile(r"^[0-9a-f]{8}(:[0-9a-f]{8}){3}$")


def parse_examine_export(stdout: str) -> Superblock | OtherSignature:
    """Parse `mdadm --examine --export DEVICE` output (exit 0) for a version-1 or 0.90 superblock.

    Sample (mdadm 4.2, super1.c export_examine_super1):
        MD_LEVEL=raid1
        MD_DEVICES=2
        MD_NAME=any:dvsan-5
        MD_ARRAY_SIZE=1071.64MB
        MD_UUID=3d0b6b0c:1f8e2a7b:9c4d5e6f:01234567
        MD_UPDATE_TIME=1765130000
        MD_DEV_UUID=aa0b6b0c:1f8e2a7b:9c4d5e6f:01234567
        MD_EVENTS=18
    A partition table instead prints mdadm's human form ('/dev/sdb:', '   MBR Magic : aa55', or
    'GPT'): that is an OtherSignature. Anything else is an MdadmParseError.
    """
    keys: dict[str, str] = {}
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    if lines and not lines[0].startswith("MD_"):
        text = " ".join(lines)
        for marker, what in (("MBR Magic", "an MBR partition table"), ("GPT", "a GPT partition table")):
            if marker in text:
                return OtherSignature(what)
        raise MdadmParseError(f"mdadm --examine --export printed no MD_ keys: {lines[0]!r}")
    for line in lines:
        k, sep, v = line.partition("=")
        if not sep or not re.fullmatch(r"MD_[A-Z_]+", k):
            raise MdadmParseError(f"mdadm --examine --export: expected KEY=VALUE, got {line!r}")
        keys[k] = v
    missing = [k for k in ("MD_UUID", "MD_LEVEL", "MD_DEVICES") if k not in keys]
    if missing:
        raise MdadmParseError(f"mdadm --examine --export gave no {', '.join(missing)}: {sorted(keys)}")
    if not _UUID_RE.match(keys["MD_UUID"]):
        raise MdadmParseError(f"mdadm --examine --export: bad MD_UUID {keys['MD_UUID']!r}")
    try:
        devices = int(keys["MD_DEVICES"])
        events = int(keys["MD_EVENTS"]) if "MD_EVENTS" in keys else None
    except ValueError as e:
        raise MdadmParseError(f"mdadm --examine --export: not a number in {keys}") from e
    return Superblock(keys["MD_UUID"], keys.get("MD_NAME") or None, keys["MD_LEVEL"], devices, events)


# ---- a running array, from sysfs -----------------------------------------------------------

ARRAY_STATES = {"clear", "inactive", "suspended", "readonly", "read-auto", "clean", "active",
                "write-pending", "active-idle", "broken"}
SYNC_ACTIONS = {"idle", "resync", "recover", "check", "repair", "reshape", "frozen"}
RUNNING = {"clean", "active", "write-pending", "active-idle", "read-auto", "readonly"}


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a running array (/sys/block/mdX/md/dev-sdb/)."""

    device: str               # 'sdb'
    flags: frozenset[str]     # dev-sdb/state: 'in_sync', 'faulty', 'spare', 'write_mostly', ...
    slot: int | None          # dev-sdb/slot: its raid disk, None for 'none' (a spare)

    def state(self, sync_action: str) -> str:
        """The member's health as the station records it: active, resyncing, faulty or spare."""
        if "faulty" in self.flags:
            return "faulty"
        if "in_sync" in self.flags:
            return "active"
        # NOTE: md shows a member being rebuilt as 'spare' with a slot; a true spare has none.
        if self.slot is not None and sync_action in ("recover", "resync"):
            return "resyncing"
        return "spare"


@dataclass(frozen=True, slots=True)
class ArrayView:
    """What sysfs says of one md array (/sys/block/md127/md/)."""

    name: str                 # kernel name, 'md127'
    array_state: str          # md/array_state
    raid_disks: int           # md/raid_disks
    degraded: int             # md/degraded: missing or failed raid disks
    sync_action: str          # md/sync_action
    sync_percent: float | None  # from md/sync_completed ('none' -> None)
    members: tuple[Member, ...] = field(default_factory=tuple)

    @property
    def running(self) -> bool:
        return self.array_state in RUNNING

    def member(self, device: str) -> Member | None:
        return next((m for m in self.members if m.device == device), None)

    def active(self) -> list[str]:
        return [m.device for m in self.members if "in_sync" in m.flags and "faulty" not in m.flags]

    def health(self) -> str:
        """The mirror's state as the station records it: clean, degraded, resyncing or failed."""
        if not self.running or not self.active():
            return "failed"
        if self.sync_action in ("resync", "recover"):
            return "resyncing"
        return "degraded" if self.degraded else "clean"


def parse_sync_completed(text: str) -> float | None:
    """md/sync_completed: 'none' when idle, else 'DONE / TOTAL' in sectors -> a percentage.

    Sample: '1048576 / 2097152' -> 50.0; 'none' -> None; 'delayed' (waiting its turn) -> 0.0.
    """
    t = text.strip()
    if t in ("none", ""):
        return None
    if t == "delayed":
        return 0.0
    m = re.fullmatch(r"([0-9]+) / ([0-9]+)", t)
    if not m or int(m.group(2)) == 0:
        raise MdadmParseError(f"md sync_completed: expected 'DONE / TOTAL' or 'none', got {t!r}")
    return round(min(100.0, 100.0 * int(m.group(1)) / int(m.group(2))), 1)


def parse_member_state(text: str) -> frozenset[str]:
    """md/dev-X/state: comma-separated flags, e.g. 'in_sync', 'faulty', 'spare', 'in_sync,write_mostly'."""
    flags = frozenset(f for f in text.strip().split(",") if f)
    if not flags or not all(re.fullmatch(r"[a-z_]+", f) for f in flags):
        raise MdadmParseError(f"md member state: expected comma-separated flags, got {text.strip()!r}")
    return flags


def read_array(md_dir: Path) -> ArrayView:
    """The view of one array from its sysfs directory (`/sys/block/md127/md`).

    Layout read:
        md/array_state      clean            md/degraded        1
        md/raid_disks       2                md/sync_action     recover
        md/sync_completed   524288 / 2095104
        md/dev-sdb/state    in_sync          md/dev-sdb/slot    0
        md/dev-sdc/state    spare            md/dev-sdc/slot    1
    """
    name = md_dir.parent.name
    state = _attr(md_dir / "array_state")
    if state not in ARRAY_STATES:
        raise MdadmParseError(f"{name}: unknown md array_state {state!r}")
    if state in ("clear", "inactive"):
        # NOTE: an inactive array (assembled but not started) has no degraded or sync files to read
        return ArrayView(name, state, _int(md_dir / "raid_disks", name, default=0), 0, "idle", None,
                         tuple(_members(md_dir, name)))
    action = _attr(md_dir / "sync_action")
    if action not in SYNC_ACTIONS:
        raise MdadmParseError(f"{name}: unknown md sync_action {action!r}")
    return ArrayView(name, state, _int(md_dir / "raid_disks", name), _int(md_dir / "degraded", name),
                     action, parse_sync_completed(_attr(md_dir / "sync_completed")),
                     tuple(_members(md_dir, name)))


def _members(md_dir: Path, name: str) -> list[Member]:
    out = []
    for d in sorted(md_dir.glob("dev-*")):
        slot_text = _attr(d / "slot")
        if slot_text == "none":
            slot = None
        elif slot_text.isdigit():
            slot = int(slot_text)
        else:
            raise MdadmParseError(f"{name}: member {d.name}: bad slot {slot_text!r}")
        out.append(Member(d.name.removeprefix("dev-"), parse_member_state(_attr(d / "state")), slot))
    return out


def _attr(p: Path) -> str:
    try:
        return p.read_text().strip()
    except OSError as e:
        raise MdadmError(f"cannot read {p}: {e.strerror}") from e


def _int(p: Path, name: str, default: int | None = None) -> int:
    try:
        text = p.read_text().strip()
    except OSError as e:
        if default is not None:
            return default
        raise MdadmError(f"cannot read {p}: {e.strerror}") from e
    if not text.isdigit():
        raise MdadmParseError(f"{name}: {p.name} is not a number: {text!r}")
    return int(text)


# ---- the adapter ---------------------------------------------------------------------------

Runner = Callable[[list[str], float], "subprocess.CompletedProcess[str]"]


def _subprocess_runner(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    # NOTE: stdin from /dev/null: mdadm asks "Continue creating array?" on a terminal otherwise.
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


class Mdadm:
    """Create, assemble, grow back, shrink and stop dvsan's RAID1 arrays; read them from sysfs."""

    def __init__(self, executable: str = "mdadm", sysfs: str = "/sys", dev: str = "/dev",
                 timeout: float = 120.0, runner: Runner | None = None, link_timeout: float = 10.0) -> None:
        """`runner(argv, timeout)` stands in for subprocess.run in tests; arrays are under `sysfs`.

        `link_timeout`: how long create and assemble wait for /dev/md/dvsan-<id> (0: not at all).
        """
        self.link_timeout = link_timeout
        self.executable = executable
        self.sysfs = Path(sysfs)
        self.dev = Path(dev)
        self.timeout = timeout
        self._runner = runner or _subprocess_runner

    def _run(self, args: Sequence[str], ok: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
        argv = [self.executable, *args]
        shown = " ".join(argv)
        t0 = time.monotonic()
        try:
            proc = self._runner(argv, self.timeout)
        except subprocess.TimeoutExpired as e:
            raise MdadmError(f"{shown}: no answer within {self.timeout:.0f} s", RC_TIMEOUT) from e
        except FileNotFoundError as e:
            raise MdadmError(f"{shown}: mdadm is not installed", RC_NOT_INSTALLED) from e
        log.debug("%s -> %d in %.0f ms", shown, proc.returncode, (time.monotonic() - t0) * 1000)
        if proc.returncode not in ok:
            detail = (proc.stderr or proc.stdout or "").strip().splitlines()
            raise MdadmError(f"{shown} failed with exit {proc.returncode}: "
                             f"{detail[-1] if detail else 'no message'}", proc.returncode)
        return proc

    def _dev(self, name: str) -> str:
        return name if name.startswith("/") else str(self.dev / name)

    def examine(self, device: str) -> Superblock | OtherSignature | None:
        """The md superblock on a device, None if it has none.

        Real mdadm exits 1 with 'mdadm: No md superblock detected on /dev/sdb.' on stderr when
        there is none (and 1 too for an unreadable device: that one is an MdadmError).
        """
        proc = self._run(["--examine", "--export", self._dev(device)], ok=(0, MDADM_ERR))
        if proc.returncode == MDADM_ERR:
            if "No md superblock detected" in (proc.stderr or ""):
                return None
            raise MdadmError(f"mdadm --examine {self._dev(device)} failed: "
                             f"{(proc.stderr or '').strip() or 'no message'}", proc.returncode)
        return parse_examine_export(proc.stdout)

    def create(self, mirror_id: int, devices: Sequence[str]) -> None:
        """A new RAID1 of two devices; mdadm starts the initial resync at once (no --assume-clean:
        the members hold whatever their last user left, and a mirror must read the same on both).

        `--run` answers mdadm's "appears to contain ..., continue?" question: the caller has
        already checked with `examine` that no member has any superblock.
        """
        if len(devices) != 2:
            raise ValueError(f"a mirror has two members, got {list(devices)}")
        self._run(["--create", md_path(mirror_id), "--run", "--level=1", "--raid-devices=2",
                   "--metadata=1.2", "--bitmap=internal", f"--name={array_name(mirror_id)}",
                   f"--homehost={HOMEHOST}", *[self._dev(d) for d in devices]])
        self._wait_link(mirror_id)

    def assemble(self, mirror_id: int, devices: Sequence[str]) -> None:
        """Assemble the array from the members present; `--run` starts it degraded when one is
        missing (without it mdadm assembles but leaves the array inactive)."""
        self._run(["--assemble", md_path(mirror_id), "--run", f"--homehost={HOMEHOST}",
                   *[self._dev(d) for d in devices]])
        self._wait_link(mirror_id)

    def _wait_link(self, mirror_id: int) -> None:
        """NOTE: with udevd running, mdadm leaves /dev/md/NAME to udev's md rules, which make it a
        moment after mdadm returns; without udevd mdadm makes it itself. Either way, wait for it
        before anyone is told the path."""
        if self.link_timeout <= 0:
            return
        link = self.dev / "md" / array_name(mirror_id)
        deadline = time.monotonic() + self.link_timeout
        while not link.exists():
            if time.monotonic() >= deadline:
                raise MdadmError(f"the array is up but {link} did not appear within "
                                 f"{self.link_timeout:.0f} s (is udev's md rule missing?)")
            time.sleep(0.05)

    def _array(self, mirror_id: int, kernel_name: str | None) -> str:
        """The array to act on: its kernel name when known (the /dev/md/ link may be missing or
        carry another name after a boot-time incremental assembly), else /dev/md/dvsan-<id>."""
        return str(self.dev / kernel_name) if kernel_name else md_path(mirror_id)

    def add(self, mirror_id: int, device: str, kernel_name: str | None = None) -> None:
        """Hot-add a member; md re-adds a former member (the bitmap says what to resync) or adds a
        new one as a spare that the degraded array rebuilds onto at once."""
        self._run([self._array(mirror_id, kernel_name), "--add", self._dev(device)])

    def fail_remove(self, mirror_id: int, device: str, kernel_name: str | None = None) -> None:
        """Mark a member faulty and take it out of the array (`--fail` then `--remove` in one call,
        which mdadm applies in order)."""
        dev = self._dev(device)
        array = self._array(mirror_id, kernel_name)
        try:
            self._run([array, "--fail", dev, "--remove", dev])
        except MdadmError as e:
            if "No such device or address" not in str(e):
                raise
            # NOTE: a member whose unit died: its iSCSI session gave up (replacement timeout), the
            # SCSI device is offline and opening it fails with ENXIO, so mdadm cannot name it by
            # its node. md's own word for such members is `detached` (an open returns ENXIO): it
            # never touches a member that still opens, so never the surviving one.
            self._run([array, "--fail", "detached", "--remove", "detached"])

    def stop(self, mirror_id: int, kernel_name: str | None = None) -> None:
        """Stop the array (its members are then free); mdadm refuses while it is mounted or open
        ('Cannot get exclusive access')."""
        self._run(["--stop", self._array(mirror_id, kernel_name)])

    def kernel_name(self, mirror_id: int) -> str | None:
        """'md127' for /dev/md/dvsan-5, None when there is no such array."""
        link = self.dev / "md" / array_name(mirror_id)
        if not link.exists():
            return None
        return os.path.basename(os.path.realpath(link))

    def array_of(self, device: str) -> str | None:
        """The md array holding `device` (sysfs holders), None if none: 'sdb' -> 'md127'."""
        try:
            holders = sorted(os.listdir(self.sysfs / "class" / "block" / device / "holders"))
        except OSError:
            return None
        return next((h for h in holders if h.startswith("md")), None)

    def view(self, kernel_name: str) -> ArrayView | None:
        """The sysfs view of array `md127`, None if the kernel has no such array."""
        md_dir = self.sysfs / "block" / kernel_name / "md"
        if not md_dir.is_dir():
            return None
        return read_array(md_dir)
