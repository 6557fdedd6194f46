"""Monitoring on real kernels: a host writes to and reads from its volume over real iSCSI, and the
volume's I/O counters (LIO's statistics in the unit guest's configfs, sent as STATS) grow in
`/metrics` and in the stats route. The unit's own figures (CPU, memory, its storage NIC) arrive too.
"""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dvsan_lab.scenario import Flow, Station, reset_host, wait_for

pytestmark = pytest.mark.lab
UNIT, HOST = "unit-a", "host-b"
MIB = 1 << 20


@pytest.fixture(scope="module")
def flow(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    reset_host(lab, HOST)
    station = Station(Path.cwd(), Path(tmp_path_factory.mktemp("monitoring-station")), lab.host_ip)
    station.start()
    f = Flow(lab, station)
    try:
        f.start_unit(UNIT, extra="--stats-interval 1")
        f.wait_pool(UNIT, 3)
        yield f
    finally:
        reset_host(lab, HOST)
        if UNIT in f.unit_pids:
            f.stop_unit(UNIT)
        station.stop()


def volume_io(station: Station, device: str) -> dict[str, float]:
    """The volume's counters as `/metrics` shows them (parsed with prometheus-client's parser)."""
    r = httpx.get(station.url + "/metrics", headers=station.auth, timeout=30)
    r.raise_for_status()
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            if s.name.startswith("dvsan_volume_") and s.labels.get("device") == device \
                    and s.labels.get("unit") == UNIT:
                out[s.name.removeprefix("dvsan_volume_").removesuffix("_total")] = s.value
    return out


def test_gp_volume_io_counters_grow_while_a_host_writes_over_iscsi(flow: Flow) -> None:
    a = flow.request(HOST, "1GiB")
    dev = a["device_path"]
    st = flow.station
    before = wait_for(lambda: volume_io(st, a["device"]) or None, 30, "the volume's first I/O sample")
    t0 = time.monotonic()
    flow.write_pattern(HOST, dev, 16, "mon1")
    after_write = wait_for(lambda: (v := volume_io(st, a["device"]))["write_bytes"] >= before["write_bytes"] + 16 * MIB
                           and v, 30, "16 MiB more written in /metrics")
    seen_in = time.monotonic() - t0
    assert after_write["commands"] > before["commands"]
    flow.read_sha(HOST, dev, 8)
    after_read = wait_for(lambda: (v := volume_io(st, a["device"]))["read_bytes"] >= after_write["read_bytes"] + 8 * MIB
                          and v, 30, "8 MiB more read in /metrics")
    assert after_read["write_bytes"] >= after_write["write_bytes"]
    # the stats route shows the same totals and a write rate while the host wrote
    stats = st.get(f"/api/v1/units/{UNIT}/stats?minutes=5")
    (vol,) = [v for v in stats["volumes"] if v["device"] == a["device"]]
    assert vol["volume_id"] == a["volume_id"]
    assert vol["samples"][-1]["write_bytes"] >= after_write["write_bytes"]
    assert max(s["write_bytes_per_s"] or 0 for s in vol["samples"]) > 0
    # and the unit's own figures: CPU share, memory, the storage NIC (the portal's) carried the bytes
    unit = stats["latest"]
    assert unit["nic"] != "*" and unit["mem_total"] > unit["mem_available"] > 0
    assert stats["samples"][-1]["net_rx_bytes"] >= 16 * MIB
    assert all(0 <= s["cpu_percent"] <= 100 for s in stats["samples"][1:])
    print(f"\nmonitoring lab: 16 MiB write seen in /metrics {seen_in:.1f} s after it began "
          f"(1 s stats interval); nic {unit['nic']}")


def test_gp_an_assignment_says_whether_its_host_is_logged_in(flow: Flow) -> None:
    """The unit reports each export's logged-in initiators with its samples (read from LIO's ACL
    in configfs): the assignment shows 1 while the host is logged in, 0 once it logged out."""
    a = flow.request(HOST, "100MiB")
    st = flow.station

    def sessions() -> int | None:
        return st.get(f"/api/v1/assignments/{a['id']}")["sessions"]

    wait_for(lambda: sessions() == 1, 30, "the host's session reported")
    assert flow.iscsiadm(HOST, f"-m node -T {a['target_iqn']} --logout").rc == 0
    wait_for(lambda: sessions() == 0, 30, "the host's logout reported")
    assert flow.iscsiadm(HOST, f"-m node -T {a['target_iqn']} --login").rc == 0
    wait_for(lambda: sessions() == 1, 30, "the host's session reported again")
    assert flow.release(HOST, a["id"]).rc == 0

