"""Zeroing a released volume on the station's order (issue 6): checks, the zeroing thread, progress.

The station sends WIPE (docs/protocol.md, "Wiping a released volume") for a volume it released;
`Wiper.order` checks that the device is this unit's, unused and the extent the station names,
claims it (an exclusive open), answers the ACK, and zeroes it in a thread while the event loop
keeps answering. Progress goes back as WIPE_STATUS about every second, and once at the end,
retried until the station acknowledges it. WIPE_CANCEL stops a wipe between two chunks.

How a device is zeroed, fastest first:
- `zeroout`: the BLKZEROOUT ioctl (what `blkdiscard --zeroout` issues), in steps, when the disk
  offloads zeroing (`/sys/block/<disk>/queue/write_zeroes_max_bytes` > 0); a device that refuses
  it falls back to writing;
- `direct`: zeros written with O_DIRECT from a page-aligned buffer, in 4 MiB chunks;
- `buffered`: the same through the page cache, with fdatasync every 64 MiB, where O_DIRECT is
  refused (tmpfs, some filesystems: only regular files in tests reach this).
Each ends with fsync and a read-back of sampled chunks, which must be zeros.

The unit remembers nothing of wipes across a restart: the station sends WIPE again for volumes
still wiping and the wipe simply starts over. The same order (device and wipe_id) while it runs
answers `running` with its progress; it never runs twice, while other devices wipe at the same
time. For tests (and the station's component tests), `path_of` points device names at files.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import mmap
import os
import random
import re
import stat
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from dvsan.errors import Conflict, DvsanError, InvalidInput, Unavailable
from dvsan.model import Export, Extent
from dvsan.naming import check_device, target_iqn
from dvsan.protocol import MsgType
from unit_agent.inventory import Inventory, scan

if TYPE_CHECKING:
    from unit_agent.agent import UnitAgent

log = logging.getLogger(__name__)

# NOTE: _IO(0x12, 127) from <linux/fs.h>: zero the byte range {start, length} (u64 each, both
# multiples of 512) of a block device; the kernel offloads it (WRITE ZEROES) or writes zero pages.
BLKZEROOUT = 0x127F
CHUNK = 4 << 20              # one O_DIRECT write
ZEROOUT_STEP = 64 << 20      # one BLKZEROOUT call: progress and cancel between two
SYNC_EVERY = 64 << 20        # buffered fallback: fdatasync this often (honest progress, bounded dirt)
VERIFY_SAMPLES = 8           # random chunks read back after the wipe, besides the first and last
VERIFY_BYTES = 1 << 20
REPORT_INTERVAL = 1.0        # seconds between two WIPE_STATUS of a running wipe
FINAL_RETRY_MAX = 30.0       # the final WIPE_STATUS is retried, backing off up to this

STATES = ("running", "succeeded", "failed", "cancelled")
_WIPE_ID_RE = re.compile(r"^[0-9A-Za-z._:-]{1,64}$")
# errno values with which a device says it does not take BLKZEROOUT: then zeros are written.
_NO_ZEROOUT = {errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY, errno.ENOSYS}


class DevicePort(Protocol):
    """What a wipe checks before it touches a device (the agent's inventory and LIO adapter)."""

    def inventory(self) -> Inventory:
        """Partitions offered now, and every device left out with why (mounted, holders, swap)."""
        ...

    def exports(self) -> list[Export]:
        """The exports LIO holds now."""
        ...

    def sessions(self, target_iqn: str) -> int:
        """Initiators logged in to a target (0 if it does not exist)."""
        ...


class StatusSink(Protocol):
    """Sends one WIPE_STATUS; raises Unavailable when the station does not acknowledge it."""

    def __call__(self, status: WipeStatus, final: bool) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class WipeOrder:
    """A WIPE message: zero `device`, which must be exactly `extent`."""

    unit: str
    pool_id: str
    device: str
    extent: Extent
    wipe_id: str

    @property
    def total_bytes(self) -> int:
        return self.extent.length_blocks * self.extent.block_size

    @classmethod
    def from_wire(cls, body: Any) -> WipeOrder:
        if not isinstance(body, dict):
            raise InvalidInput("a WIPE body must be an object")
        for name in ("unit", "pool_id", "device", "extent", "wipe_id"):
            if name not in body:
                raise InvalidInput(f"WIPE is missing field {name!r}")
        pool_id, wipe_id = body["pool_id"], body["wipe_id"]
        if not isinstance(pool_id, str) or not 0 < len(pool_id) <= 64:
            raise InvalidInput("field 'pool_id' must be a non-empty string of at most 64 characters")
        check_wipe_id(wipe_id)
        extent = Extent.from_wire(body["extent"])
        if extent.length_blocks == 0:
            raise InvalidInput("the extent to wipe is empty (length 0)")
        return cls(str(body["unit"]), pool_id, check_device(body["device"]), extent, wipe_id)


def check_wipe_id(wipe_id: Any) -> str:
    if not isinstance(wipe_id, str) or not _WIPE_ID_RE.fullmatch(wipe_id):
        raise InvalidInput(f"field 'wipe_id' must be 1 to 64 of [0-9A-Za-z._:-], got {wipe_id!r}")
    return wipe_id


@dataclass(frozen=True, slots=True)
class WipeStatus:
    """Where one wipe stands: the body of WIPE_STATUS."""

    unit: str
    device: str
    wipe_id: str
    state: str                # one of STATES
    done_bytes: int
    total_bytes: int
    method: str               # zeroout, direct or buffered
    elapsed_s: float
    error: str | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"unit": self.unit, "device": self.device, "wipe_id": self.wipe_id,
                               "state": self.state, "done_bytes": self.done_bytes,
                               "total_bytes": self.total_bytes, "method": self.method,
                               "elapsed_s": round(self.elapsed_s, 3)}
        if self.error is not None:
            out["error"] = self.error
        return out


class _Refused(Exception):
    """The order may not be carried out; the message is the reason the station hears."""


@dataclass(eq=False)
class _Job:
    order: WipeOrder
    admitted: asyncio.Future[str | None]        # None once checked and claimed, else the refusal
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = field(default_factory=time.monotonic)
    done_bytes: int = 0                          # written by the zeroing thread only, rising
    state: str = "running"
    method: str = ""
    error: str | None = None
    ended: float | None = None


class Wiper:
    """The wipes of one unit: at most one per device, several devices at once."""

    def __init__(self, unit: str, devices: DevicePort, *, sink: StatusSink | None = None,
                 pool: Callable[[], str | None] = lambda: None,
                 path_of: Callable[[str], str] = lambda device: f"/dev/{device}",
                 sysfs_root: str = "/"):
        """`pool` gives the pool this unit is pinned to (None: not pinned); `path_of` the path
        of a device; `sysfs_root` where /sys is (for write_zeroes_max_bytes)."""
        self.unit = unit
        self.devices = devices
        self.sink = sink
        self.pool = pool
        self.path_of = path_of
        self.sysfs_root = sysfs_root
        self.use_zeroout = True            # False: always write zeros (the lab compares both)
        self.chunk = CHUNK
        self.zeroout_step = ZEROOUT_STEP
        self.report_interval = REPORT_INTERVAL
        self.final_retry_first = 1.0       # seconds before the first retry of a final status
        self.final_retry_max = FINAL_RETRY_MAX
        self._jobs: dict[str, _Job] = {}
        self._last: dict[str, WipeStatus] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    @classmethod
    def of_agent(cls, agent: UnitAgent, sysfs_root: str = "/") -> Wiper:
        """The Wiper of a unit agent: its inventory and LIO, its pool pin, its station."""
        return cls(agent.name, _AgentDevices(agent, sysfs_root), sink=_AgentSink(agent),
                   pool=lambda: agent.pin.pool_id, sysfs_root=sysfs_root)

    # ---- messages ----------------------------------------------------------------------------

    async def handle(self, mtype: MsgType, body: dict[str, Any]) -> dict[str, Any]:
        """The ACK of a WIPE or WIPE_CANCEL message."""
        if mtype == MsgType.WIPE:
            return await self.order(body)
        if mtype == MsgType.WIPE_CANCEL:
            return self.cancel(body)
        raise InvalidInput(f"the wiper does not take {mtype.name} messages")

    async def order(self, body: dict[str, Any]) -> dict[str, Any]:
        """Start the wipe a WIPE message orders, or say it runs already, or why not.

        Malformed or misaddressed orders raise (an `error` ACK); a refusal is an answer.
        """
        o = WipeOrder.from_wire(body)
        if o.unit != self.unit:
            raise Conflict(f"WIPE for unit {o.unit!r} sent to unit {self.unit!r}")
        if self._stopping:
            return self._refused(o, "this unit is shutting down")
        while (job := self._jobs.get(o.device)) is not None:
            # NOTE: a second order waits for the first one's checks: it must not answer
            # `running` for a wipe that is then refused.
            await asyncio.shield(job.admitted)
            if self._jobs.get(o.device) is job and not job.finished.is_set():
                return self._running(job, o)
        pinned = self.pool()
        if pinned is not None and o.pool_id != pinned:
            return self._refused(o, f"this unit belongs to pool {pinned}, not {o.pool_id} (a second "
                                    "station, or one on a fresh database?)")
        job = _Job(o, asyncio.get_running_loop().create_future())
        self._jobs[o.device] = job              # no await since the loop above: one per device
        try:
            fd, path = await asyncio.to_thread(self._admit, job)
        except _Refused as e:
            self._jobs.pop(o.device, None)
            job.admitted.set_result(str(e))
            return self._refused(o, str(e))
        except BaseException:
            self._jobs.pop(o.device, None)
            job.admitted.set_result("internal error")
            raise
        job.admitted.set_result(None)
        log.info("wipe %s of %s (%d bytes) started by %s", o.wipe_id, path, o.total_bytes, job.method)
        self._spawn(self._run(job, fd, path))
        return {"status": "accepted", "wipe_id": o.wipe_id, "done_bytes": 0,
                "total_bytes": o.total_bytes, "method": job.method}

    def cancel(self, body: dict[str, Any]) -> dict[str, Any]:
        """Stop a running wipe (WIPE_CANCEL); its final WIPE_STATUS then says `cancelled`."""
        if not isinstance(body, dict):
            raise InvalidInput("a WIPE_CANCEL body must be an object")
        if body.get("unit") != self.unit:
            raise Conflict(f"WIPE_CANCEL for unit {body.get('unit')!r} sent to unit {self.unit!r}")
        device, wipe_id = check_device(body.get("device", "")), check_wipe_id(body.get("wipe_id"))
        job = self._jobs.get(device)
        if job is None or job.finished.is_set() or job.order.wipe_id != wipe_id:
            last = self._last.get(device)
            reason = (f"wipe {job.order.wipe_id} of {device} is running, not {wipe_id}" if job
                      else f"no wipe of {device} is running"
                      + (f" (wipe {last.wipe_id} ended {last.state})" if last else ""))
            out: dict[str, Any] = {"status": "not-running", "reason": reason}
            if last is not None and last.wipe_id == wipe_id:
                out.update(state=last.state, done_bytes=last.done_bytes, total_bytes=last.total_bytes)
            return out
        job.cancel.set()
        log.info("wipe %s of %s: cancelling at %d of %d bytes", wipe_id, device, job.done_bytes,
                 job.order.total_bytes)
        return {"status": "cancelling", "wipe_id": wipe_id, "done_bytes": job.done_bytes,
                "total_bytes": job.order.total_bytes}

    # ---- for the agent and tests -------------------------------------------------------------

    def status(self, device: str) -> WipeStatus | None:
        """The running wipe of `device`, else the last one that ended, else None."""
        job = self._jobs.get(device)
        if job is not None and job.admitted.done() and job.admitted.result() is None:
            return self._status(job)
        return self._last.get(device)

    def running(self, device: str) -> bool:
        """Whether a wipe holds `device` (being checked, or zeroing)."""
        return device in self._jobs

    async def wait(self, device: str) -> WipeStatus | None:
        """The end of the running wipe of `device` (at once if none runs)."""
        job = self._jobs.get(device)
        if job is not None:
            await asyncio.shield(job.admitted)
            await job.finished.wait()
        return self._last.get(device)

    def stop(self) -> None:
        """Cancel every wipe and send no more statuses (the agent is going down); the station
        orders the wipes again after the restart."""
        self._stopping = True
        for job in self._jobs.values():
            job.cancel.set()
        for task in list(self._tasks):
            task.cancel()

    # ---- answers -----------------------------------------------------------------------------

    def _refused(self, o: WipeOrder, reason: str) -> dict[str, Any]:
        log.warning("wipe %s of %s refused: %s", o.wipe_id, o.device, reason)
        return {"status": "refused", "wipe_id": o.wipe_id, "reason": reason, "done_bytes": 0,
                "total_bytes": o.total_bytes}

    def _running(self, job: _Job, o: WipeOrder) -> dict[str, Any]:
        out: dict[str, Any] = {"status": "running", "wipe_id": job.order.wipe_id,
                               "done_bytes": job.done_bytes, "total_bytes": job.order.total_bytes,
                               "method": job.method}
        if job.order.wipe_id != o.wipe_id:
            out["reason"] = f"wipe {job.order.wipe_id} of {o.device} is running: one at a time"
        return out

    def _status(self, job: _Job) -> WipeStatus:
        o = job.order
        end = job.ended if job.ended is not None else time.monotonic()
        return WipeStatus(self.unit, o.device, o.wipe_id, job.state, job.done_bytes, o.total_bytes,
                          job.method, end - job.started, job.error)

    # ---- checks and claim (in a thread) --------------------------------------------------------

    def _admit(self, job: _Job) -> tuple[int, str]:
        """Check the device against the order and claim it; returns (fd, path), or _Refused."""
        o = job.order
        dev = o.device
        try:
            inv = self.devices.inventory()
        except DvsanError as e:
            raise _Refused(f"cannot check that {dev} is unused: {e}") from e
        why = inv.excluded.get(dev)
        if why is not None:
            raise _Refused(f"device {dev} is in use or not this unit's to wipe: {why}")
        part = next((p for p in inv.offered if p.device == dev), None)
        if part is None:
            raise _Refused(f"device {dev} is not offered by this unit (gone, or left out by its "
                           "offer policy)")
        mismatch = o.extent.mismatch(part.extent)
        if mismatch is None and o.extent.uid != part.uid:
            # NOTE: stricter than an export: a wipe destroys, so "" must match "" too.
            mismatch = (f"partition identity changed: expected {o.extent.uid or 'none'}, "
                        f"the disk now has {part.uid or 'none'}")
        if mismatch is not None:
            raise _Refused(f"device {dev}: {mismatch}")
        try:
            target = target_iqn(self.unit, dev)
            n = self.devices.sessions(target)
            if n:
                raise _Refused(f"device {dev} has {n} live iSCSI session(s) on target {target}: "
                               "not wiped under a host")
            held = [e.target_iqn for e in self.devices.exports() if e.device == dev]
        except DvsanError as e:
            raise _Refused(f"cannot check LIO for {dev}: {e}") from e
        if held:
            raise _Refused(f"device {dev} is still exported in LIO as {', '.join(held)}: the "
                           "station must drop the export before the wipe")
        path = self.path_of(dev)
        fd = self._open(path, o.total_bytes)
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        job.method = "direct" if direct else "buffered"
        if self.use_zeroout and stat.S_ISBLK(os.fstat(fd).st_mode) and self._zeroes_offloaded(part.disk):
            job.method = "zeroout"
        return fd, path

    def _open(self, path: str, total: int) -> int:
        """Open `path` for writing, exclusively if it is a block device, O_DIRECT if it can be."""
        try:
            st = os.stat(path)
        except OSError as e:
            raise _Refused(f"cannot find {path}: {e}") from e
        if not (stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise _Refused(f"{path} is neither a block device nor a file")
        # NOTE: O_EXCL on a block device claims it as mount, md, dm and LIO's iblock do: the open
        # fails (EBUSY) while any of them holds it, and none can take it while we wipe.
        flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_EXCL if stat.S_ISBLK(st.st_mode) else 0)
        try:
            try:
                fd = os.open(path, flags | os.O_DIRECT)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                log.warning("%s does not take O_DIRECT (tmpfs?): writing zeros through the page "
                            "cache, with fdatasync every %d MiB and fsync at the end", path,
                            SYNC_EVERY >> 20)
                fd = os.open(path, flags)
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise _Refused(f"{path} is held by someone else (mounted, claimed by LVM, md or "
                               "dm, or an LIO backstore): not wiped") from e
            raise _Refused(f"cannot open {path} for writing: {e}") from e
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
        except OSError as e:
            os.close(fd)
            raise _Refused(f"cannot read the size of {path}: {e}") from e
        if size != total:
            os.close(fd)
            raise _Refused(f"{path} holds {size} bytes but the extent to wipe is {total} bytes")
        return fd

    def _zeroes_offloaded(self, disk: str) -> bool:
        p = os.path.join(self.sysfs_root, "sys", "block", disk, "queue", "write_zeroes_max_bytes")
        try:
            with open(p) as f:
                return int(f.read().strip()) > 0
        except (OSError, ValueError):
            return False

    # ---- zeroing (in a thread) ---------------------------------------------------------------

    async def _run(self, job: _Job, fd: int, path: str) -> None:
        reporter = self._spawn(self._report_running(job))
        try:
            await asyncio.to_thread(self._zero, job, fd, path)
        finally:
            job.ended = time.monotonic()
            final = self._status(job)
            self._last[job.order.device] = final
            if self._jobs.get(job.order.device) is job:
                del self._jobs[job.order.device]
            job.finished.set()
            reporter.cancel()
        secs = max(final.elapsed_s, 1e-6)
        log.log(logging.INFO if final.state == "succeeded" else logging.WARNING,
                "wipe %s of %s %s: %d of %d bytes by %s in %.1f s (%.0f MB/s)%s", final.wipe_id, path,
                final.state, final.done_bytes, final.total_bytes, final.method, secs,
                final.done_bytes / secs / 1e6, f": {final.error}" if final.error else "")
        await self._report_final(final)

    def _zero(self, job: _Job, fd: int, path: str) -> None:
        total = job.order.total_bytes
        try:
            if job.method == "zeroout":
                self._zeroout(job, fd)
            if job.done_bytes < total and not job.cancel.is_set():
                self._write(job, fd)
            if job.cancel.is_set():
                job.state = "cancelled"
                return
            os.fsync(fd)
            self._verify(job, path)
            job.state = "succeeded"
        except OSError as e:
            job.state, job.error = "failed", f"at byte {job.done_bytes} of {path}: {e}"
        except _Refused as e:        # the read-back found data
            job.state, job.error = "failed", str(e)
        except Exception as e:  # a bug must end the wipe as failed, never leave it running
            log.exception("wipe %s of %s crashed", job.order.wipe_id, path)
            job.state, job.error = "failed", f"internal error: {type(e).__name__}: {e}"
        finally:
            os.close(fd)

    def _zeroout(self, job: _Job, fd: int) -> None:
        total = job.order.total_bytes
        while job.done_bytes < total and not job.cancel.is_set():
            n = min(self.zeroout_step, total - job.done_bytes)
            try:
                fcntl.ioctl(fd, BLKZEROOUT, struct.pack("=QQ", job.done_bytes, n))
            except OSError as e:
                if e.errno not in _NO_ZEROOUT:
                    raise
                direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
                job.method = "direct" if direct else "buffered"
                log.warning("wipe %s of %s: the device refuses BLKZEROOUT (%s); writing zeros (%s) "
                            "from byte %d", job.order.wipe_id, job.order.device, e, job.method,
                            job.done_bytes)
                return
            job.done_bytes += n

    def _write(self, job: _Job, fd: int) -> None:
        total = job.order.total_bytes
        # NOTE: anonymous mmaps are page-aligned and zero-filled, as O_DIRECT needs; the last,
        # shorter chunk gets one of its own size (no memoryview slices: a slice still alive
        # would keep the buffer from closing).
        bufs: dict[int, mmap.mmap] = {}
        try:
            since_sync = 0
            while job.done_bytes < total and not job.cancel.is_set():
                n = min(self.chunk, total - job.done_bytes)
                buf = bufs.get(n) or bufs.setdefault(n, mmap.mmap(-1, n))
                try:
                    written = os.pwrite(fd, buf, job.done_bytes)
                except OSError as e:
                    if e.errno != errno.EINVAL or job.method != "direct":
                        raise
                    # NOTE: a filesystem may want larger alignment than the extent's blocks:
                    # Linux lets F_SETFL drop O_DIRECT on an open file.
                    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                    job.method = "buffered"
                    log.warning("wipe %s of %s: O_DIRECT write refused (%s); writing through the "
                                "page cache from byte %d", job.order.wipe_id, job.order.device, e,
                                job.done_bytes)
                    continue
                if written != n:
                    raise OSError(errno.EIO, f"a write of {n} bytes wrote {written}")
                if job.method == "buffered":
                    since_sync += written
                    if since_sync >= SYNC_EVERY:
                        os.fdatasync(fd)
                        since_sync = 0
                job.done_bytes += written
        finally:
            for b in bufs.values():
                b.close()

    def _verify(self, job: _Job, path: str) -> None:
        """Read back the first and last chunk and a few at random: all must be zeros."""
        total, bs = job.order.total_bytes, job.order.extent.block_size
        size = min(VERIFY_BYTES, total)
        last = (total - size) // bs * bs
        offsets = {0, last} | {random.randrange(0, last // bs + 1) * bs for _ in range(VERIFY_SAMPLES)}
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
        except OSError:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        buf = mmap.mmap(-1, size)
        zeros = bytes(size)
        try:
            for off in sorted(offsets):
                try:
                    got = os.preadv(fd, [buf], off)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                    got = os.preadv(fd, [buf], off)
                if got != size or buf[:] != zeros:
                    raise _Refused(f"read-back at byte {off} of {path} is not zeros after the wipe")
        finally:
            buf.close()
            os.close(fd)

    # ---- reports -----------------------------------------------------------------------------

    async def _report_running(self, job: _Job) -> None:
        warned = False
        while not job.finished.is_set():
            try:
                await asyncio.wait_for(job.finished.wait(), self.report_interval)
                return
            except TimeoutError:
                pass
            if self.sink is None or self._stopping:
                continue
            try:
                await self.sink(self._status(job), False)
                warned = False
            except DvsanError as e:
                if not warned:
                    log.warning("wipe %s of %s: progress not acknowledged: %s", job.order.wipe_id,
                                job.order.device, e)
                    warned = True

    async def _report_final(self, status: WipeStatus) -> None:
        """Send the final WIPE_STATUS until the station acknowledges it (or the agent stops)."""
        delay = self.final_retry_first
        while self.sink is not None and not self._stopping:
            try:
                await self.sink(status, True)
                return
            except DvsanError as e:
                log.warning("wipe %s of %s: final status (%s) not acknowledged (%s); again in %.0f s",
                            status.wipe_id, status.device, status.state, e, delay)
            await asyncio.sleep(delay)
            delay = min(self.final_retry_max, delay * 2)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


class _AgentDevices:
    """The DevicePort of a unit agent: its inventory (offered) with the in-use reasons of a
    plain scan (mounted, holders, swap, system disk: unit_agent.inventory), and its LIO."""

    def __init__(self, agent: UnitAgent, sysfs_root: str = "/"):
        self.agent = agent
        self.sysfs_root = sysfs_root

    def inventory(self) -> Inventory:
        excluded = scan(self.sysfs_root).excluded     # no probe: only what is in use, and why
        return Inventory(offered=list(self.agent.inventory()), excluded=excluded)

    def exports(self) -> list[Export]:
        return self.agent.lio.actual_exports()

    def sessions(self, target_iqn: str) -> int:
        return self.agent.lio.sessions(target_iqn)


class _AgentSink:
    """Sends WIPE_STATUS to the agent's station; any ACK counts as heard."""

    def __init__(self, agent: UnitAgent):
        self.agent = agent
        self.final_timeout = 10.0      # one try of the final status (then retried by the Wiper)
        self.running_timeout = 2.0     # a progress report (the next one follows anyway)

    async def __call__(self, status: WipeStatus, final: bool) -> None:
        endpoint = self.agent.endpoint
        if endpoint is None:
            raise Unavailable("the unit's endpoint is not open")
        ack = await endpoint.send(self.agent.station, MsgType.WIPE_STATUS, status.to_wire(),
                                  timeout=self.final_timeout if final else self.running_timeout,
                                  max_rto=2.0 if final else 0.5)
        if ack.get("status") != "ok":
            log.warning("the station answered the status of wipe %s of %s with %s", status.wipe_id,
                        status.device, ack)
