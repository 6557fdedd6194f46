"""A unit's monitoring report (STATS, docs/protocol.md): its wire form, its checks, rate math. Pure.

A unit sends monotonic totals (bytes, commands, CPU seconds) and a few gauges; the station turns
two samples into rates. A total that went down is a counter reset (the unit rebooted, or LIO made
the volume's backstore anew): the increase over that interval is the new value itself, as
Prometheus's `rate()` counts it.

The body of one STATS message:

    {"unit": "unit-a", "t": 1765000000000, "boot": 1764990000, "part": 0, "parts": 1,
     "system": {"cpu_busy_s": 812.5, "cpu_total_s": 40210.0, "cpus": 2,
                "mem_total": 2147483648, "mem_available": 1610612736,
                "nic": "eth1", "net_rx_bytes": 123456, "net_tx_bytes": 654321},
     "volumes": [{"device": "vdb1", "read_bytes": 1048576, "write_bytes": 0, "commands": 17,
                  "sessions": 1}]}

`sessions` (optional) is how many initiators are logged in to the volume's target now.

`system` is in the first part only (`part` 0); a unit with more than MAX_VOLUMES exports sends
several parts of one sample, each with its own share of `volumes`.
"""

import math
from dataclasses import dataclass
from typing import Any

from dvsan.errors import InvalidInput
from dvsan.naming import check_device

MAX_VOLUMES = 256            # volume entries in one STATS message (~25 KiB of JSON, ~20 fragments)
MAX_PARTS = 64               # parts of one sample: 16,384 exports a unit, far above any real one
MAX_COUNTER = 2**63 - 1      # what a kernel's u64 counter can show and SQLite/Prometheus keep exactly
MAX_SESSIONS = 65_536      # initiators logged in to one target: far above LIO's own limits
MAX_CLOCK_SKEW_MS = 300_000  # a sample's time may be this far from the station's clock


class StatsRefused(InvalidInput):
    """A STATS message (or one of its entries) the station does not take; `reason` is counted."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"stats refused ({reason}): {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SystemFigures:
    """The unit's own figures at one moment: CPU seconds (totals), memory (gauges), its storage NIC."""

    cpu_busy_s: float
    cpu_total_s: float
    cpus: int
    mem_total: int
    mem_available: int
    nic: str
    net_rx_bytes: int
    net_tx_bytes: int

    def to_wire(self) -> dict[str, Any]:
        return {"cpu_busy_s": self.cpu_busy_s, "cpu_total_s": self.cpu_total_s, "cpus": self.cpus,
                "mem_total": self.mem_total, "mem_available": self.mem_available, "nic": self.nic,
                "net_rx_bytes": self.net_rx_bytes, "net_tx_bytes": self.net_tx_bytes}


@dataclass(frozen=True, slots=True)
class VolumeIo:
    """One exported volume's I/O totals as LIO counts them (bytes in whole MiB: the kernel's grain)."""

    device: str
    read_bytes: int
    write_bytes: int
    commands: int
    sessions: int | None = None      # initiators logged in to its target now (None: not said)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"device": self.device, "read_bytes": self.read_bytes,
                               "write_bytes": self.write_bytes, "commands": self.commands}
        if self.sessions is not None:
            out["sessions"] = self.sessions
        return out


@dataclass(frozen=True, slots=True)
class Report:
    """One STATS message, checked: the sample's time, the unit's boot, its figures, its volumes.

    `refused` holds the volume entries that were not taken (index or device -> reason): one bad
    entry never blocks the good ones.
    """

    unit: str
    t_ms: int
    boot: int
    part: int
    parts: int
    system: SystemFigures | None
    volumes: tuple[VolumeIo, ...]
    refused: tuple[tuple[str, str], ...] = ()


def build_reports(unit: str, t_ms: int, boot: int, system: SystemFigures,
                  volumes: list[VolumeIo]) -> list[dict[str, Any]]:
    """The bodies of the STATS messages that carry one sample (several parts past MAX_VOLUMES)."""
    chunks = [volumes[i:i + MAX_VOLUMES] for i in range(0, len(volumes), MAX_VOLUMES)] or [[]]
    chunks = chunks[:MAX_PARTS]
    out = []
    for i, chunk in enumerate(chunks):
        body: dict[str, Any] = {"unit": unit, "t": t_ms, "boot": boot, "part": i, "parts": len(chunks),
                                "volumes": [v.to_wire() for v in chunk]}
        if i == 0:
            body["system"] = system.to_wire()
        out.append(body)
    return out


def _int(d: dict[str, Any], key: str, where: str, hi: int = MAX_COUNTER) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise StatsRefused("bad-field", f"{where}{key} must be an integer, not {type(v).__name__}")
    if v < 0:
        raise StatsRefused("negative", f"{where}{key} is {v}")
    if v > hi:
        raise StatsRefused("bad-field", f"{where}{key} is above {hi}")
    return v


def _num(d: dict[str, Any], key: str, where: str) -> float:
    v = d.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise StatsRefused("bad-field", f"{where}{key} must be a finite number")
    if v < 0:
        raise StatsRefused("negative", f"{where}{key} is {v}")
    return float(v)


def _system(raw: Any) -> SystemFigures:
    if not isinstance(raw, dict):
        raise StatsRefused("bad-field", "field 'system' must be an object")
    nic = raw.get("nic", "")
    if not isinstance(nic, str) or len(nic) > 32:
        raise StatsRefused("bad-field", "system.nic must be an interface name")
    s = SystemFigures(
        cpu_busy_s=_num(raw, "cpu_busy_s", "system."), cpu_total_s=_num(raw, "cpu_total_s", "system."),
        cpus=_int(raw, "cpus", "system.", 65536), mem_total=_int(raw, "mem_total", "system."),
        mem_available=_int(raw, "mem_available", "system."), nic=nic,
        net_rx_bytes=_int(raw, "net_rx_bytes", "system."), net_tx_bytes=_int(raw, "net_tx_bytes", "system."))
    if s.cpu_busy_s > s.cpu_total_s:
        raise StatsRefused("bad-field", "system.cpu_busy_s is above cpu_total_s")
    if s.mem_available > s.mem_total:
        raise StatsRefused("bad-field", "system.mem_available is above mem_total")
    return s


def _volume(raw: Any) -> VolumeIo:
    if not isinstance(raw, dict):
        raise StatsRefused("bad-field", "a volume entry must be an object")
    dev = raw.get("device")
    try:
        device = check_device(dev if isinstance(dev, str) else "")
    except InvalidInput as e:
        raise StatsRefused("bad-field", f"device: {e}") from e
    sessions = _int(raw, "sessions", f"{device}.", MAX_SESSIONS) if "sessions" in raw else None
    return VolumeIo(device, _int(raw, "read_bytes", f"{device}."), _int(raw, "write_bytes", f"{device}."),
                    _int(raw, "commands", f"{device}."), sessions)


def parse_report(body: dict[str, Any], now_ms: int) -> Report:
    """Check a STATS body (the unit's name is checked by the listener); raises StatsRefused for
    a message that cannot be taken at all. A bad volume entry is refused on its own (`refused`)."""
    unit = body.get("unit")
    if not isinstance(unit, str) or not unit:
        raise StatsRefused("bad-field", "field 'unit' must be a unit name")
    t_ms = _int(body, "t", "")
    if abs(t_ms - now_ms) > MAX_CLOCK_SKEW_MS:
        raise StatsRefused("bad-time", f"sample time is {(t_ms - now_ms) / 1000:+.0f} s off the station's clock")
    boot = _int(body, "boot", "")
    part, parts = _int(body, "part", "", MAX_PARTS - 1), _int(body, "parts", "", MAX_PARTS)
    if part >= parts:
        raise StatsRefused("bad-field", f"part {part} of {parts}")
    system = _system(body["system"]) if part == 0 and "system" in body else None
    if part == 0 and system is None:
        raise StatsRefused("bad-field", "the first part must carry 'system'")
    raw = body.get("volumes")
    if not isinstance(raw, list):
        raise StatsRefused("bad-field", "field 'volumes' must be a list")
    if len(raw) > MAX_VOLUMES:
        raise StatsRefused("too-many", f"{len(raw)} volume entries > {MAX_VOLUMES}")
    vols: dict[str, VolumeIo] = {}
    refused: list[tuple[str, str]] = []
    for i, item in enumerate(raw):
        try:
            v = _volume(item)
        except StatsRefused as e:
            refused.append((f"#{i}", e.reason))
            continue
        if v.device in vols:
            refused.append((v.device, "duplicate"))
            continue
        vols[v.device] = v
    return Report(unit, t_ms, boot, part, parts, system, tuple(vols.values()), tuple(refused))


def increase(prev: float, cur: float) -> float:
    """How much a total grew between two samples; a total that went down was reset (a reboot,
    a backstore made anew) and counts from zero: the increase is the new value."""
    return cur - prev if cur >= prev else cur


def rate(prev: float, cur: float, seconds: float) -> float:
    """Per second between two samples `seconds` apart (0 for a zero or negative interval)."""
    if seconds <= 0:
        return 0.0
    return float(increase(prev, cur)) / seconds


def cpu_percent(prev_busy: float, prev_total: float, busy: float, total: float) -> float:
    """The share of CPU time spent busy between two samples, in percent of all CPUs (0..100)."""
    d_total = increase(prev_total, total)
    if d_total <= 0:
        return 0.0
    d_busy = increase(prev_busy, busy) if total >= prev_total else busy
    return max(0.0, min(100.0, 100.0 * float(d_busy) / float(d_total)))
