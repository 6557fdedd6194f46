"""Block devices on a host: what holds one (mounts, holders, swap, open handles), flush, SCSI delete.

The one module of the host agent, besides iscsiadm.py, that acts on the kernel. Parsers are pure
functions; `BlockDevices` reads /proc and /sys under roots that tests point at fake trees.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dvsan.errors import AdapterError, Conflict

log = logging.getLogger(__name__)


class BlockDeviceError(AdapterError):
    """Reading what holds a device, or flushing or deleting it, failed."""


class DeviceInUse(Conflict):
    """A device (or something stacked on it) is mounted, held, swapped on or open."""

    def __init__(self, device: str, users: Sequence[str]):
        self.device = device
        self.users = list(users)
        super().__init__(f"/dev/{device} is in use: " + "; ".join(self.users))


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of /proc/self/mountinfo: the device number and where it is mounted."""

    dev: str            # "major:minor"
    mount_point: str


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in paths as octal escapes (\\040)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse /proc/self/mountinfo; a line of the wrong shape is an error (we fail closed).

    Sample:
        22 27 0:21 / /proc rw,relatime - proc proc rw
        97 27 8:17 / /mnt/my\\040data rw,relatime shared:45 - ext4 /dev/sdb1 rw
    """
    out: list[Mount] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) < 7 or "-" not in fields[6:] or not re.fullmatch(r"[0-9]+:[0-9]+", fields[2]):
            raise BlockDeviceError(f"cannot parse mountinfo line {line!r}")
        out.append(Mount(fields[2], _unescape(fields[4])))
    return out


def parse_swaps(text: str) -> list[str]:
    """The swap areas in /proc/swaps (paths); the header line is skipped.

    Sample:
        Filename                                Type            Size            Used    Priority
        /dev/sdb2                               partition       1048572         0       -2
        /dev/dm-1                               partition       2097148         0       -3
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    if not lines[0].startswith("Filename"):
        raise BlockDeviceError(f"cannot parse /proc/swaps: no header line, got {lines[0]!r}")
    out = []
    for line in lines[1:]:
        fields = line.split()
        if len(fields) < 2:
            raise BlockDeviceError(f"cannot parse /proc/swaps line {line!r}")
        out.append(_unescape(fields[0]).removesuffix("(deleted)"))
    return out


Runner = Callable[[list[str], float], "subprocess.CompletedProcess[str]"]


def _subprocess_runner(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _open_exclusive(path: str) -> None:
    """Open a block device O_EXCL and close it again; EBUSY means someone else holds it."""
    os.close(os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC))


class BlockDevices:
    """What holds a block device, and the flush and SCSI delete before an iSCSI logout."""

    def __init__(self, sysfs: str = "/sys", proc: str = "/proc", dev: str = "/dev",
                 runner: Runner | None = None, timeout: float = 120.0,
                 open_exclusive: Callable[[str], None] = _open_exclusive) -> None:
        self.sysfs = Path(sysfs)
        self.proc = Path(proc)
        self.dev = Path(dev)
        self.timeout = timeout
        self._runner = runner or _subprocess_runner
        self._open_exclusive = open_exclusive

    # ---- what is stacked on a device -------------------------------------------------------
    def _block(self, name: str) -> Path:
        return self.sysfs / "class" / "block" / name

    def stack(self, name: str) -> list[str]:
        """`name`, its partitions, and everything built on them (dm, md, LVM), each once."""
        seen: list[str] = []
        todo = [name]
        while todo:
            n = todo.pop(0)
            if n in seen:
                continue
            seen.append(n)
            d = self._block(n)
            try:
                children = sorted(os.listdir(d))
            except OSError:
                continue   # gone already: nothing can be stacked on it
            todo += [c for c in children if (d / c / "partition").exists()]
            try:
                todo += sorted(os.listdir(d / "holders"))
            except OSError:
                pass
        return seen

    def _describe(self, name: str) -> str:
        """'dm-0 (vg0-data)' for a device-mapper device, 'md0 (md)' for md, else the name."""
        dm = _read(self._block(name) / "dm" / "name")
        if dm:
            return f"{name} ({dm})"
        if (self._block(name) / "md").exists():
            return f"{name} (md array)"
        return name

    def _dev_number(self, name: str) -> str | None:
        return _read(self._block(name) / "dev")

    # ---- who uses it -------------------------------------------------------------------------
    def users(self, name: str) -> list[str]:
        """What holds `name` or anything stacked on it, each named for an operator; [] if nothing.

        Fails closed: unreadable mountinfo or swaps raise BlockDeviceError, never "not in use".
        """
        stack = self.stack(name)
        numbers = {n: num for n in stack if (num := self._dev_number(n))}
        by_number = {num: n for n, num in numbers.items()}
        out: list[str] = []
        for m in parse_mountinfo(self._read_proc("self/mountinfo")):
            if m.dev in by_number:
                out.append(f"{by_number[m.dev]} is mounted at {m.mount_point}")
        for n in stack[1:]:
            if not (self._block(n) / "partition").exists():
                out.append(f"held by {self._describe(n)}")
        for path in parse_swaps(self._read_proc("swaps")):
            hit = self._swap_device(path, numbers)
            if hit:
                out.append(f"{hit} is swap ({path})")
        out += self._open_by_processes(stack)
        if not out:
            out += self._exclusively_open(name)
        return out

    def _read_proc(self, rel: str) -> str:
        path = self.proc / rel
        try:
            return path.read_text()
        except OSError as e:
            raise BlockDeviceError(f"cannot tell what is mounted or swapped on: cannot read {path}: "
                                   f"{e.strerror}") from e

    def _swap_device(self, path: str, numbers: dict[str, str]) -> str | None:
        base = os.path.basename(path)
        if base in numbers:
            return base
        try:
            st = os.stat(path)
        except OSError:
            return None   # a swap file on a filesystem: its filesystem shows up as a mount
        if not stat.S_ISBLK(st.st_mode):   # a swap file, not a partition
            return None
        num = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        return next((n for n, x in numbers.items() if x == num), None)

    def _open_by_processes(self, stack: list[str]) -> list[str]:
        """Processes with one of the devices open (/proc/PID/fd), best effort, ourselves excluded."""
        paths = {str(self.dev / n): n for n in stack}
        out: list[str] = []
        try:
            pids = [p for p in os.listdir(self.proc) if p.isdigit() and int(p) != os.getpid()]
        except OSError:
            return out
        for pid in pids:
            fd_dir = self.proc / pid / "fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                continue   # gone, or not ours to read
            for fd in fds:
                try:
                    target = os.readlink(fd_dir / fd)
                except OSError:
                    continue
                if target in paths:
                    comm = _read(self.proc / pid / "comm") or "?"
                    out.append(f"{paths[target]} is open by process {pid} ({comm})")
                    break
        return out

    def _exclusively_open(self, name: str) -> list[str]:
        """NOTE: an O_EXCL open of a block device fails with EBUSY while the kernel or another
        process holds it exclusively (a mount, a holder, mkfs, a VM): the catch-all check."""
        path = str(self.dev / name)
        try:
            self._open_exclusive(path)
        except FileNotFoundError:
            return []
        except OSError as e:
            if e.errno == errno.EBUSY:
                return [f"{name} is held open exclusively by someone (EBUSY on an O_EXCL open)"]
            if e.errno == errno.ENXIO:
                # NOTE: the device is offline (seen in the lab: a mirror member whose unit died,
                # after its session's replacement timeout): no open succeeds, so this catch-all
                # says nothing. What could still hold it is seen by the other checks (holders,
                # mounts, swaps, processes' open files), and no I/O reaches it any more.
                return []
            raise BlockDeviceError(f"cannot tell whether {path} is open: {e.strerror}") from e
        return []

    def check_unused(self, name: str) -> None:
        """Raise DeviceInUse naming what holds `name`; BlockDeviceError if we cannot tell."""
        users = self.users(name)
        if users:
            raise DeviceInUse(name, users)

    # ---- before logout -------------------------------------------------------------------------
    def flush(self, name: str) -> None:
        """Write out the page cache of a device (`blockdev --flushbufs`), after a global sync."""
        os.sync()
        argv = ["blockdev", "--flushbufs", str(self.dev / name)]
        try:
            proc = self._runner(argv, self.timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BlockDeviceError(f"{' '.join(argv)} failed: {e}") from e
        if proc.returncode != 0:
            raise BlockDeviceError(f"{' '.join(argv)} failed with exit {proc.returncode}: "
                                   f"{(proc.stderr or proc.stdout).strip() or 'no message'}")

    def delete_scsi_device(self, name: str) -> None:
        """Remove the SCSI disk from the kernel (`echo 1 > /sys/block/NAME/device/delete`)."""
        path = self.sysfs / "block" / name / "device" / "delete"
        if not (self.sysfs / "block" / name).exists():
            return   # already gone
        try:
            path.write_text("1")
        except OSError as e:
            raise BlockDeviceError(f"cannot delete SCSI device {name} ({path}): {e.strerror}") from e


def _read(p: Path) -> str | None:
    try:
        return p.read_text().strip()
    except OSError:
        return None
