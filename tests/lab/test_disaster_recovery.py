"""Failures on real kernels (issue 8): units added, rebooted and lost under I/O, mirrors across units,
a spare unit stepping in, a spare host taking over a dead host's storage.

The failure lab: unit-a, unit-d and unit-spare (each a disk of three partitions: 512 MiB, 1280 MiB,
2 GiB) and host-b, host-c, host-spare. unit-d, unit-spare and host-spare are booted into the
running lab once, by this module. Every data check is a real `fio --verify` or a checksum read
through real open-iscsi sessions from real LIO; every failure is real (an emulator killed or
frozen). Figures (stalls, times) are printed, never asserted against a clock: bench/failures.py
prints them as a table.
"""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dvsan_lab.failures import FioJob
from dvsan_lab.scenario import Flow, Station, reset_host, wait_for

pytestmark = pytest.mark.lab
UNITS = ("unit-a", "unit-d", "unit-spare")
HOSTS = ("host-b", "host-c", "host-spare")
LIVENESS = 6.0          # the station marks a unit silent this long unreachable
UNIT_EXTRA = "--heartbeat-interval 1"


@pytest.fixture(scope="module")
def dr(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    took = lab.boot("unit-d", "unit-spare", "host-spare")
    if took:
        print(f"\nfailure lab booted: {', '.join(f'{g} {s:.0f} s' for g, s in took.items())}")
    for h in HOSTS:
        reset_host(lab, h)
    station = Station(Path.cwd(), Path(tmp_path_factory.mktemp("dr-station")), lab.host_ip,
                      args=("--liveness-timeout", str(LIVENESS)))
    station.start()
    f = Flow(lab, station)
    try:
        for u in ("unit-a", "unit-d"):
            f.start_unit(u, extra=UNIT_EXTRA, at_boot=u != "unit-a")
        for u in ("unit-a", "unit-d"):
            f.wait_pool(u, 3)
        yield f
    finally:
        for h in HOSTS:
            _stop_arrays(lab, h)
            reset_host(lab, h)
        for u in UNITS:
            if lab.running(u):
                f.stop_all_units(u)
        station.stop()


def _stop_arrays(lab: Any, host: str) -> None:
    if lab.running(host):
        lab.exec(host, "pkill -f '[d]vsan-host-agent'; pkill -KILL -x fio; mdadm --stop --scan >/dev/null 2>&1; true", timeout=60)


def ensure_unit(f: Flow, unit: str) -> None:
    """`unit` announced and its three volumes in the pool (started if this test runs alone)."""
    if not f.lab.running(unit):
        f.lab.boot(unit)
    if unit not in f.unit_pids:
        f.start_unit(unit, extra=UNIT_EXTRA, at_boot=unit != "unit-a")
    f.wait_pool(unit, 3, timeout=180)


def unit_state(f: Flow, unit: str) -> str:
    return str(f.station.get(f"/api/v1/units/{unit}")["state"])


def test_gp_a_unit_added_under_io_grows_the_pool_while_host_io_goes_on(dr: Flow) -> None:
    """A host writes and verifies for a minute; meanwhile a new unit's agent starts: its volumes
    join the pool, and the host's I/O never stops (0 verify errors; the longest stall printed)."""
    f, host = dr, "host-c"
    if "unit-spare" in f.unit_pids:
        f.stop_all_units("unit-spare")
    a = f.request(host, "400MiB")
    before = len(f.station.volumes())
    job = FioJob(f.lab, host, a["device_path"], "unit-added", runtime=45).start(size_mib=128)
    job.wait_writing()
    t0 = time.monotonic()
    f.start_unit("unit-spare", extra=UNIT_EXTRA, at_boot=True)
    f.wait_pool("unit-spare", 3, timeout=180)
    joined = time.monotonic() - t0
    res = job.wait()
    print(f"\nunit added under I/O: pool {before} -> {len(f.station.volumes())} volumes, the new unit "
          f"online {joined:.1f} s after its agent started; {res.describe()}")
    assert res.clean, res.log_tail
    assert len(f.station.volumes()) == before + 3
    f.release(host, a["id"])


def test_gp_a_unit_rebooted_for_real_re_applies_its_exports_and_the_host_session_recovers(dr: Flow) -> None:
    """unit-d is reset under a host's fio: after boot its LIO configuration is gone; the agent
    starts at boot (autostart), announces itself, the station pushes its exports back, and the
    host's session recovers by itself: fio ends with 0 verify errors."""
    f, host, unit = dr, "host-c", "unit-d"
    ensure_unit(f, unit)
    vols = {v["id"]: v for v in f.station.volumes(unit) if v["state"] == "online"}
    big = max(vols.values(), key=lambda v: v["size_bytes"])
    a = f.station_assign(host, big["id"])
    job = FioJob(f.lab, host, a["device_path"], "unit-reboot", runtime=150).start(size_mib=128)
    job.wait_writing()
    t0 = time.monotonic()
    f.lab.power_off(unit)
    wait_for(lambda: unit_state(f, unit) == "unreachable", 60, f"{unit} marked unreachable")
    noticed = time.monotonic() - t0
    booted = f.lab.boot(unit)[unit]
    assert f.lab.exec(unit, "ls /sys/kernel/config/target/iscsi 2>/dev/null | grep -c iqn || true").out.strip() \
        in ("0", ""), "LIO kept its configuration across a power cut?"
    wait_for(lambda: unit_state(f, unit) == "online", 180, f"{unit} back online after its reboot")
    back = time.monotonic() - t0
    wait_for(lambda: f.station.get(f"/api/v1/assignments/{a['id']}")["export_state"] == "exported", 120,
             "the export re-applied on the rebooted unit")
    res = job.wait()
    print(f"\nunit reboot under I/O: station noticed after {noticed:.1f} s, guest answered after "
          f"{booted:.1f} s of boot, unit online {back:.1f} s after the power cut; {res.describe()}")
    assert res.clean, res.log_tail
    f.release(host, a["id"])
