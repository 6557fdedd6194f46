"""The station's figures for Prometheus (`GET /metrics`): pool, units, tasks, counters, per-volume I/O.

Every app has its own CollectorRegistry (`Metrics`): the REST latency histogram lives there, never
in prometheus-client's process-wide default registry, so two apps in one process (tests) do not
share or clash. The rest is read afresh at each scrape: the database's pool, units and tasks, and
a snapshot of the in-memory counters taken on the event loop (`Snapshot`).
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from station.db import Database
from station.db.tables import (
    AssignmentRow,
    TaskRow,
    UnitRow,
    UnitState,
    VolumeRow,
    VolumeState,
    WipeState,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
USES = ("free", "assigned", "wiping")


class Metrics:
    """One app's registry and its REST latency histogram (labels: method, route template, status)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram("dvsan_http_request_duration_seconds",
                                 "Time the station took to answer a REST call",
                                 ("method", "route", "status"), buckets=LATENCY_BUCKETS,
                                 registry=self.registry)


@dataclass(frozen=True)
class Snapshot:
    """The in-memory figures, copied on the event loop (they change there) before a scrape."""

    protocol: dict[str, int]
    snmp: dict[str, int] | None
    stats: dict[str, int]
    units: dict[str, dict[str, Any]]
    volumes: list[tuple[str, str, int | None, tuple[float, ...]]]


def _use(v: VolumeRow, assigned: bool) -> str:
    if assigned:
        return "assigned"
    return "free" if v.wipe_state == WipeState.CLEAN else "wiping"


def pool_families(s: Session) -> list[Metric]:
    """Pool bytes and volumes by state and use, units by state (and each unit's), tasks by kind and state."""
    bytes_ = GaugeMetricFamily("dvsan_pool_bytes", "Bytes of the pool's volumes by volume state and use "
                               "(free: clean and unassigned; wiping: released, not yet zeroed)",
                               labels=("state", "use"))
    count = GaugeMetricFamily("dvsan_pool_volumes", "The pool's volumes by volume state and use",
                              labels=("state", "use"))
    grid: dict[tuple[str, str], list[int]] = {(st.value, u): [0, 0] for st in VolumeState for u in USES}
    assigned = set(s.scalars(select(AssignmentRow.volume_id)))
    for v in s.scalars(select(VolumeRow)):
        cell = grid.setdefault((v.state, _use(v, v.id in assigned)), [0, 0])
        cell[0] += v.size_bytes
        cell[1] += 1
    for (st, use), (b, n) in sorted(grid.items()):
        bytes_.add_metric((st, use), b)
        count.add_metric((st, use), n)
    units = GaugeMetricFamily("dvsan_units", "Units by state", labels=("state",))
    per_unit = GaugeMetricFamily("dvsan_unit_state", "1 for each unit, labelled with its state and health",
                                 labels=("unit", "state", "health"))
    by_state = {st.value: 0 for st in UnitState}
    for u in s.scalars(select(UnitRow).order_by(UnitRow.name)):
        by_state[u.state] = by_state.get(u.state, 0) + 1
        per_unit.add_metric((u.name, u.state, u.health), 1)
    for st, n in sorted(by_state.items()):
        units.add_metric((st,), n)
    tasks = GaugeMetricFamily("dvsan_tasks", "Tasks the station holds (the newest 10,000 finished ones "
                              "and every unfinished one) by kind and state", labels=("kind", "state"))
    for kind, state, n in s.execute(select(TaskRow.kind, TaskRow.state, func.count())
                                    .group_by(TaskRow.kind, TaskRow.state).order_by(TaskRow.kind, TaskRow.state)):
        tasks.add_metric((kind, state), n)
    return [bytes_, count, units, per_unit, tasks]


def _counters(name: str, doc: str, values: dict[str, int]) -> Metric:
    fam = CounterMetricFamily(name, doc, labels=("event",))
    for k, v in sorted(values.items()):
        fam.add_metric((k,), v)
    return fam


def memory_families(snap: Snapshot) -> list[Metric]:
    """Protocol, SNMP and STATS counters; each unit's latest figures; each volume's I/O totals."""
    fams = [_counters("dvsan_protocol_events", "The auto-configuration listener's counters (datagrams "
                      "received and sent, dropped and refused by reason, retransmits...)", snap.protocol),
            _counters("dvsan_stats_reports", "Monitoring samples (STATS) taken and refused by reason",
                      snap.stats)]
    snmp_up = GaugeMetricFamily("dvsan_snmp_listening", "1 when the SNMP notification receiver runs")
    snmp_up.add_metric((), 0 if snap.snmp is None else 1)
    fams.append(snmp_up)
    if snap.snmp is not None:
        fams.append(_counters("dvsan_snmp_events", "The SNMP notification receiver's counters "
                              "(received, accepted, rejected and ignored by reason)", snap.snmp))
    cpu = GaugeMetricFamily("dvsan_unit_cpu_percent", "A unit's CPU busy share over its last sample "
                            "interval (all CPUs)", labels=("unit",))
    mem = GaugeMetricFamily("dvsan_unit_memory_bytes", "A unit's memory (total, available)",
                            labels=("unit", "kind"))
    net = CounterMetricFamily("dvsan_unit_network_bytes", "Bytes through a unit's storage interface "
                              "(station-kept sum, carried over the unit's reboots)",
                              labels=("unit", "nic", "direction"))
    cpu_s = CounterMetricFamily("dvsan_unit_cpu_busy_seconds", "A unit's busy CPU seconds, all CPUs",
                                labels=("unit",))
    seen = GaugeMetricFamily("dvsan_unit_stats_timestamp_seconds", "When a unit's newest sample was taken",
                             labels=("unit",))
    for unit, f in sorted(snap.units.items()):
        if f["cpu_percent"] is not None:
            cpu.add_metric((unit,), f["cpu_percent"])
        mem.add_metric((unit, "total"), f["mem_total"])
        mem.add_metric((unit, "available"), f["mem_available"])
        net.add_metric((unit, f["nic"], "rx"), f["net_rx_bytes"])
        net.add_metric((unit, f["nic"], "tx"), f["net_tx_bytes"])
        cpu_s.add_metric((unit,), f["cpu_seconds"])
        seen.add_metric((unit,), f["t"] / 1000)
    fams += [cpu, mem, net, cpu_s, seen]
    labels = ("unit", "device", "volume_id")
    rd = CounterMetricFamily("dvsan_volume_read_bytes", "Bytes read from an exported volume (LIO, 1 MiB "
                             "grain; station-kept sum)", labels=labels)
    wr = CounterMetricFamily("dvsan_volume_write_bytes", "Bytes written to an exported volume (LIO, 1 MiB "
                             "grain; station-kept sum)", labels=labels)
    cmds = CounterMetricFamily("dvsan_volume_commands", "SCSI commands an exported volume took (LIO)",
                               labels=labels)
    for unit, device, vid, p in snap.volumes:
        key = (unit, device, "" if vid is None else str(vid))
        rd.add_metric(key, p[1])
        wr.add_metric(key, p[2])
        cmds.add_metric(key, p[3])
    return [*fams, rd, wr, cmds]


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]):
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def render(metrics: Metrics, db: Database, snap: Snapshot) -> bytes:
    """The whole exposition (blocking: the database is read): the app's registry, then the scrape's."""
    with db.session() as s:
        fams = pool_families(s)
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_Families([*fams, *memory_families(snap)]))
    return generate_latest(metrics.registry) + generate_latest(scrape)
