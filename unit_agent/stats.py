"""A unit's monitoring sample: CPU, memory and storage-NIC totals (psutil), per-export I/O (LIO)."""

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import psutil

from dvsan.stats import SystemFigures, VolumeIo, build_reports

log = logging.getLogger(__name__)


class IoCounters(Protocol):
    """What the sample needs from the LIO adapter (unit_agent.lio.Lio.io_counters)."""

    def io_counters(self) -> dict[str, tuple[int, int, int]]: ...


def system_figures(nic: str | None) -> SystemFigures:
    """This machine's CPU seconds (busy and all, summed over CPUs), memory, and the bytes through
    `nic` (None, or a NIC that is not there: every interface but loopback)."""
    cpu = psutil.cpu_times()
    total = float(sum(cpu))
    # NOTE: iowait is time a CPU had nothing to run (it waits on a disk): idle, not busy.
    idle = cpu.idle + getattr(cpu, "iowait", 0.0)
    mem = psutil.virtual_memory()
    nics = psutil.net_io_counters(pernic=True)
    if nic and nic in nics:
        rx, tx, name = nics[nic].bytes_recv, nics[nic].bytes_sent, nic
    else:
        rx = sum(c.bytes_recv for n, c in nics.items() if n != "lo")
        tx = sum(c.bytes_sent for n, c in nics.items() if n != "lo")
        name = "*"
    return SystemFigures(cpu_busy_s=round(max(0.0, total - idle), 2), cpu_total_s=round(total, 2),
                         cpus=psutil.cpu_count() or 1, mem_total=int(mem.total),
                         mem_available=int(min(mem.available, mem.total)), nic=name,
                         net_rx_bytes=int(rx), net_tx_bytes=int(tx))


def sampler(unit: str, io: IoCounters | None, nic: str | None,
            figures: Callable[[str | None], SystemFigures] = system_figures) -> Callable[[], list[dict[str, Any]]]:
    """A function that takes one sample now and returns the STATS bodies that carry it."""
    boot = int(psutil.boot_time())

    def sample() -> list[dict[str, Any]]:
        counts = getattr(io, "session_counts", None)
        sessions: dict[str, int] = counts() if counts is not None else {}
        vols = [VolumeIo(d, r, w, c, sessions.get(d))
                for d, (r, w, c) in sorted((io.io_counters() if io else {}).items())]
        return build_reports(unit, int(time.time() * 1000), boot, figures(nic), vols)
    return sample
