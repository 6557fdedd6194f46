"""The units' monitoring samples (STATS): checked, kept in memory for a recent window, read back.

Samples are not written to the database: they are many, short-lived and only worth their latest
hour. Memory is bounded three ways: points older than the window go; at most one point per
series every `resolution` seconds is kept (a sample that comes sooner replaces the newest point);
and at most `max_units` unit series and `max_volume_series` volume series exist at once (a new
series past either is refused and counted). With the defaults (65 min window, 10 s resolution:
at most 392 points a series, ~200 bytes a point) that is ~80 KiB a series, ~330 MiB at the very
worst (4,096 volume series full), a few MiB for a unit with 30 exports.

Totals are kept as the station's own monotonic sums: a unit's counter that went down, or a new
`boot`, is a reset, and the sum carries on from where it was (so `/metrics` counters only grow and
rates never go negative).
"""

import asyncio
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from dvsan.stats import Report, StatsRefused, cpu_percent, parse_report
from station.db import Database
from station.db.tables import UnitRow, VolumeRow

log = logging.getLogger(__name__)

WINDOW_S = 3900          # 65 minutes: an hour of samples and a baseline before it
RESOLUTION_S = 10.0
MAX_UNITS = 1024
MAX_VOLUME_SERIES = 4096
PRUNE_EVERY_MS = 60_000   # gone series are looked for at most this often (a walk over all of them)


@dataclass(slots=True)
class _Sums:
    """The station's running sums of one series' counters, carried across the unit's resets."""

    base: list[float]
    last: list[float]
    boot: int

    def add(self, values: list[float], boot: int) -> list[float]:
        """The sums after a sample's `values`; a counter that went down, or all of them after a
        new `boot`, was reset: its sum carries on from where it was (the increase is the value)."""
        rebooted = boot != self.boot
        self.base = [b + p if rebooted or v < p else b
                     for b, p, v in zip(self.base, self.last, values, strict=True)]
        self.last, self.boot = list(values), boot
        return [b + v for b, v in zip(self.base, values, strict=True)]


@dataclass(slots=True)
class _Series:
    """One unit's or one volume's points: (t_ms, *sums) oldest first; `gauges` the newest gauges."""

    sums: _Sums
    points: deque[tuple[float, ...]] = field(default_factory=deque)
    volume_id: int | None = None
    gauges: dict[str, Any] = field(default_factory=dict)
    sessions: tuple[int, int | None] | None = None      # (t_ms, initiators logged in) of the newest

    def add(self, t_ms: int, sums: list[float], resolution_ms: float, window_ms: float) -> None:
        p = (float(t_ms), *sums)
        # NOTE: the newest point stands in for its interval until it is `resolution` after the
        # point before it; a sample then starts the next interval.
        if len(self.points) >= 2 and self.points[-1][0] - self.points[-2][0] < resolution_ms:
            self.points[-1] = p
        else:
            self.points.append(p)
        while self.points and self.points[0][0] < t_ms - window_ms:
            self.points.popleft()


class StatsStore:
    """The recent window of every unit's and volume's samples; counts what it refused and why."""

    def __init__(self, window_s: float = WINDOW_S, resolution_s: float = RESOLUTION_S,
                 max_units: int = MAX_UNITS, max_volume_series: int = MAX_VOLUME_SERIES):
        self.window_ms, self.resolution_ms = window_s * 1000, resolution_s * 1000
        self.max_units, self.max_volume_series = max_units, max_volume_series
        self.units: dict[str, _Series] = {}
        self.volumes: dict[tuple[str, str], _Series] = {}
        self.counts: Counter[str] = Counter()      # accepted, refused, refused_<reason>

    def refuse(self, reason: str, n: int = 1) -> None:
        self.counts["refused"] += n
        self.counts[f"refused_{reason}"] += n

    def take(self, report: Report, known: dict[str, int]) -> dict[str, Any]:
        """Store a checked report; `known` maps the unit's volume devices to their ids (an entry
        for another device is refused). Returns what was taken and refused, for the ACK."""
        refused = [{"device": d, "reason": r} for d, r in report.refused]
        for _, r in report.refused:
            self.refuse(r)
        if report.system is not None:
            s = report.system
            series = self.units.get(report.unit)
            last_t = series.points[-1][0] if series and series.points else None
            if last_t is not None and report.t_ms <= last_t:
                self.refuse("out-of-order")
                raise StatsRefused("out-of-order", "a sample no newer than the last one taken")
            if series is None:
                if len(self.units) >= self.max_units:
                    self.refuse("too-many-series")
                    raise StatsRefused("too-many-series", f"already {self.max_units} units followed")
                series = self.units[report.unit] = _Series(_Sums([0.0] * 4, [0.0] * 4, report.boot))
            sums = series.sums.add([s.cpu_busy_s, s.cpu_total_s, float(s.net_rx_bytes),
                                    float(s.net_tx_bytes)], report.boot)
            # NOTE: memory is a gauge, kept beside the sums in each point (not summed across resets)
            series.add(report.t_ms, [*sums, float(s.mem_total), float(s.mem_available)], self.resolution_ms,
                       self.window_ms)
            series.gauges = {"cpus": s.cpus, "mem_total": s.mem_total, "mem_available": s.mem_available,
                             "nic": s.nic}
        taken = 0
        for v in report.volumes:
            vid = known.get(v.device)
            if vid is None:
                refused.append({"device": v.device, "reason": "unknown-volume"})
                self.refuse("unknown-volume")
                continue
            key = (report.unit, v.device)
            vs = self.volumes.get(key)
            if vs is not None and vs.points and report.t_ms <= vs.points[-1][0]:
                refused.append({"device": v.device, "reason": "out-of-order"})
                self.refuse("out-of-order")
                continue
            if vs is None:
                if len(self.volumes) >= self.max_volume_series:
                    refused.append({"device": v.device, "reason": "too-many-series"})
                    self.refuse("too-many-series")
                    continue
                vs = self.volumes[key] = _Series(_Sums([0.0] * 3, [0.0] * 3, report.boot))
            vs.volume_id = vid
            vs.sessions = (report.t_ms, v.sessions)
            sums = vs.sums.add([float(v.read_bytes), float(v.write_bytes), float(v.commands)], report.boot)
            vs.add(report.t_ms, sums, self.resolution_ms, self.window_ms)
            taken += 1
        self.counts["accepted"] += 1
        return {"volumes_taken": taken, "refused": refused}

    def prune(self, now_ms: float) -> None:
        """Forget series whose newest point has left the window (a unit gone, a volume unexported)."""
        old = now_ms - self.window_ms
        for u in [u for u, s in self.units.items() if not s.points or s.points[-1][0] < old]:
            del self.units[u]
        for v in [v for v, s in self.volumes.items() if not s.points or s.points[-1][0] < old]:
            del self.volumes[v]

    # --- reading -----------------------------------------------------------------------------

    def unit_samples(self, unit: str, since_ms: float) -> list[dict[str, Any]]:
        series = self.units.get(unit)
        if series is None:
            return []
        out = []
        prev: tuple[float, ...] | None = None
        for p in series.points:
            if p[0] >= since_ms:
                row: dict[str, Any] = {"t": int(p[0]), "cpu_seconds": round(p[1], 3),
                                       "net_rx_bytes": int(p[3]), "net_tx_bytes": int(p[4]),
                                       "mem_total": int(p[5]), "mem_available": int(p[6]),
                                       "cpu_percent": None, "net_rx_bytes_per_s": None,
                                       "net_tx_bytes_per_s": None}
                if prev is not None:
                    dt = (p[0] - prev[0]) / 1000
                    row["cpu_percent"] = round(cpu_percent(prev[1], prev[2], p[1], p[2]), 2)
                    row["net_rx_bytes_per_s"] = round((p[3] - prev[3]) / dt, 1)
                    row["net_tx_bytes_per_s"] = round((p[4] - prev[4]) / dt, 1)
                out.append(row)
            prev = p
        return out

    def volume_samples(self, unit: str, since_ms: float) -> list[dict[str, Any]]:
        out = []
        for (u, device), series in sorted(self.volumes.items()):
            if u != unit:
                continue
            rows = []
            prev: tuple[float, ...] | None = None
            for p in series.points:
                if p[0] >= since_ms:
                    row: dict[str, Any] = {"t": int(p[0]), "read_bytes": int(p[1]), "write_bytes": int(p[2]),
                                           "commands": int(p[3]), "read_bytes_per_s": None,
                                           "write_bytes_per_s": None, "commands_per_s": None}
                    if prev is not None:
                        dt = (p[0] - prev[0]) / 1000
                        row["read_bytes_per_s"] = round((p[1] - prev[1]) / dt, 1)
                        row["write_bytes_per_s"] = round((p[2] - prev[2]) / dt, 1)
                        row["commands_per_s"] = round((p[3] - prev[3]) / dt, 2)
                    rows.append(row)
                prev = p
            out.append({"device": device, "volume_id": series.volume_id, "samples": rows})
        return out

    def latest_units(self) -> dict[str, dict[str, Any]]:
        """Each unit's newest figures (for /metrics): sums, gauges, the CPU share of its last interval."""
        out = {}
        for unit, s in self.units.items():
            if not s.points:
                continue
            p = s.points[-1]
            cpu = cpu_percent(s.points[-2][1], s.points[-2][2], p[1], p[2]) if len(s.points) >= 2 else None
            out[unit] = {"t": p[0], "cpu_seconds": p[1], "net_rx_bytes": p[3], "net_tx_bytes": p[4],
                         "cpu_percent": cpu, **s.gauges}
        return out

    def sessions_of(self, unit: str, device: str, now_ms: float, fresh_ms: float = 60_000) -> int | None:
        """Initiators logged in to a volume's target, as its unit said less than `fresh_ms` ago;
        None when it did not say (an older agent, stats off) or said it too long ago."""
        vs = self.volumes.get((unit, device))
        if vs is None or vs.sessions is None:
            return None
        t, n = vs.sessions
        return n if now_ms - t <= fresh_ms else None

    def latest_volumes(self) -> list[tuple[str, str, int | None, tuple[float, ...]]]:
        """(unit, device, volume id, (t, read, write, commands)) of every volume series' newest point."""
        return [(u, d, s.volume_id, s.points[-1]) for (u, d), s in sorted(self.volumes.items()) if s.points]


class StatsService:
    """Takes the units' STATS messages (checked against the pool) into a StatsStore."""

    def __init__(self, db: Database, store: StatsStore | None = None):
        self.db = db
        self.store = store or StatsStore()
        self._pruned = 0.0

    async def report(self, unit: str, body: dict[str, Any]) -> dict[str, Any]:
        """Check and store one STATS message from `unit` (its sender, checked by the listener)."""
        now = time.time() * 1000
        try:
            rep = parse_report(body, int(now))
        except StatsRefused as e:
            self.store.refuse(e.reason)
            raise

        def volumes_of() -> dict[str, int] | None:
            with self.db.session() as s:
                if s.get(UnitRow, unit) is None:
                    return None
                return {d: i for d, i in s.execute(select(VolumeRow.device, VolumeRow.id)
                                                   .where(VolumeRow.unit_name == unit))}
        known = await asyncio.to_thread(volumes_of)
        if known is None:
            self.store.refuse("unknown-unit")
            raise StatsRefused("unknown-unit", f"unit {unit} has not announced itself")
        if now - self._pruned >= PRUNE_EVERY_MS:
            self.store.prune(now)
            self._pruned = now
        return self.store.take(rep, known)
