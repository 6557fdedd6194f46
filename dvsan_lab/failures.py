"""Failures on real kernels, measured: `fio --verify` jobs in guests and what their latency logs say.

Shared by tests/lab/test_disaster_recovery.py (asserts) and bench/failures.py (prints the figures).
A job runs detached in a guest and writes its JSON result, exit code and latency log to the lab's
shared folder, so the machine reads them without asking the guest (which may be frozen or gone).
"""

from __future__ import annotations

import itertools
import json
import shlex
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvsan_lab.errors import LabError


@dataclass(frozen=True)
class Stall:
    """How long I/O stood still: the slowest single I/O, and the longest time no I/O completed."""

    max_latency_s: float
    max_gap_s: float
    ios: int

    @property
    def longest_s(self) -> float:
        return max(self.max_latency_s, self.max_gap_s)


def parse_lat_log(lines: Iterable[str]) -> Stall:
    """fio's `--write_lat_log` (one line per I/O with `--log_avg_msec=0`): `time_ms, lat_ns,
    direction, block size, offset[, priority]`. A malformed line is an error naming it: a figure
    from a log we misread would be a lie."""
    times: list[int] = []
    worst = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        try:
            t, lat = int(fields[0]), int(fields[1])
        except (ValueError, IndexError):
            raise LabError(f"fio latency log line {n} is not 'time_ms, lat_ns, ...': {line!r}") from None
        if t < 0 or lat < 0:
            raise LabError(f"fio latency log line {n} has a negative figure: {line!r}")
        times.append(t)
        worst = max(worst, lat)
    times.sort()
    gap = max((b - a for a, b in itertools.pairwise(times)), default=0)
    return Stall(worst / 1e9, gap / 1e3, len(times))


@dataclass
class FioJob:
    """One `fio --verify` job on a block device in a guest, running detached."""

    lab: Any
    guest: str
    device: str
    tag: str
    runtime: int
    pid: int = 0
    started: float = 0.0
    real_device: str = ""
    _writes0: int = 0

    @property
    def dir(self) -> Path:
        return Path(self.lab.shared_dir) / "fio" / self.tag

    def start(self, size_mib: int = 128, bs: str = "64k") -> FioJob:
        """Random writes, each block verified (crc32c) soon after it is written and again at the
        end; the first bad block stops the job (`verify_fatal`). Time-based: it writes for
        `runtime` seconds whatever happens to the storage underneath."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.iterdir():
            old.unlink()
        dev = self.lab.exec(self.guest, f"readlink -f {shlex.quote(self.device)}", check=True).out.strip()
        self.real_device = dev
        self._writes0 = self.writes()
        d = shlex.quote(str(self.dir))
        cmd = (f"fio --name={self.tag} --filename={dev} --rw=randwrite --bs={bs} --size={size_mib}M "
               "--ioengine=libaio --iodepth=4 --direct=1 --verify=crc32c --verify_backlog=64 "
               f"--verify_fatal=1 --time_based=1 --runtime={self.runtime} "
               f"--write_lat_log={d}/io --log_avg_msec=0 --output-format=json --output={d}/result.json; "
               # NOTE: written aside and renamed: the machine polls for `rc` over 9p and once read
               # an empty file the shell had created but not yet written (rc -1 for a clean run)
               f"echo $? > {d}/rc.tmp && mv {d}/rc.tmp {d}/rc")
        self.started = time.monotonic()
        self.pid = self.lab.spawn(self.guest, cmd, str(self.dir / "fio.log"))
        return self

    def writes(self) -> int:
        """Writes the guest's kernel completed on the device so far (/sys/class/block/X/stat)."""
        name = Path(self.real_device).name
        r = self.lab.exec(self.guest, f"cat /sys/class/block/{shlex.quote(name)}/stat", check=True)
        return int(r.out.split()[4])

    def wait_writing(self, ios: int = 200, timeout: float = 120.0) -> None:
        """Return once the job has completed `ios` writes (fio writes its logs only at the end)."""
        deadline = time.monotonic() + timeout
        while self.writes() - self._writes0 < ios:
            if self.done():
                raise LabError(f"fio job {self.tag} ended before writing: {self.result().describe()}")
            if time.monotonic() > deadline:
                raise LabError(f"fio job {self.tag} in {self.guest} wrote fewer than {ios} blocks in "
                               f"{timeout:.0f} s; see {self.dir}/fio.log")
            time.sleep(0.5)

    def done(self) -> bool:
        return (self.dir / "rc").exists()

    def wait(self, slack: float = 300.0) -> FioResult:
        """Wait for the job to end (its runtime plus `slack` for I/O stuck at the end)."""
        deadline = self.started + self.runtime + slack
        while not self.done():
            if time.monotonic() > deadline:
                raise LabError(f"fio job {self.tag} in {self.guest} did not end within "
                               f"{self.runtime + slack:.0f} s; see {self.dir}/fio.log")
            time.sleep(1)
        return self.result()

    def result(self) -> FioResult:
        rc = int((self.dir / "rc").read_text().strip() or "-1")
        text = (self.dir / "result.json").read_text() if (self.dir / "result.json").exists() else ""
        job: dict[str, Any] = {}
        if "{" in text:
            job = json.loads(text[text.index("{"):])["jobs"][0]
        logs = sorted(self.dir.glob("io_lat.*.log"))
        lines: list[str] = []
        for log in logs:
            lines += log.read_text().splitlines()
        return FioResult(rc, int(job.get("error", -1)), int(job.get("write", {}).get("io_bytes", 0)),
                         int(job.get("read", {}).get("io_bytes", 0)), parse_lat_log(lines),
                         (self.dir / "fio.log").read_text(errors="replace")[-2000:]
                         if (self.dir / "fio.log").exists() else "")


@dataclass(frozen=True)
class FioResult:
    rc: int
    error: int              # fio's job error (0: none; a verify failure is EILSEQ/EIO here)
    written: int
    verified: int           # bytes read back by the verify phases
    stall: Stall
    log_tail: str

    @property
    def clean(self) -> bool:
        return self.rc == 0 and self.error == 0 and self.written > 0 and self.verified > 0

    def describe(self) -> str:
        return (f"fio rc {self.rc} error {self.error}, wrote {self.written >> 20} MiB, verified "
                f"{self.verified >> 20} MiB, {self.stall.ios} I/Os, slowest I/O "
                f"{self.stall.max_latency_s:.2f} s, longest gap {self.stall.max_gap_s:.2f} s")
