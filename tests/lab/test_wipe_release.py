"""Nothing of one tenant is readable by the next (issue 6), on real kernels: host-b writes to its
volume and releases it; unit-a's agent zeroes the partition (real LIO dropped the export first);
only then does the station hand the volume out again, and host-c, given the same volume, reads
zeros over real iSCSI. Prints release -> free and the wipe rate beside the device's raw write rate."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dvsan_lab.scenario import Flow, Station, reset_host, wait_for

pytestmark = pytest.mark.lab
UNIT, HOST_B, HOST_C = "unit-a", "host-b", "host-c"
MIB = 16


@pytest.fixture(scope="module")
def flow(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    for g in (HOST_B, HOST_C):
        reset_host(lab, g)
    station = Station(Path.cwd(), Path(tmp_path_factory.mktemp("wipe-station")), lab.host_ip)
    station.start()
    f = Flow(lab, station)
    try:
        f.start_unit(UNIT)
        f.wait_pool(UNIT, 3)
        yield f
    finally:
        for g in (HOST_B, HOST_C):
            reset_host(lab, g)
        if UNIT in f.unit_pids:
            f.stop_unit(UNIT)
        station.stop()


def volume(flow: Flow, vid: int) -> dict[str, Any]:
    return next(v for v in flow.station.volumes(UNIT) if v["id"] == vid)


def test_gp_the_next_host_reads_only_zeros_of_a_released_volume(flow: Flow) -> None:
    lab = flow.lab
    b = flow.request(HOST_B, "1GiB")
    secret = flow.write_pattern(HOST_B, b["device_path"], MIB, "tenant-b")
    # the previous tenant's bytes are on the unit's partition
    assert flow.read_sha(UNIT, f"/dev/{b['device']}", MIB) == secret

    t0 = time.monotonic()
    rel = flow.release(HOST_B, b["id"])
    assert rel.rc == 0, rel.err
    seen: list[tuple[str, int]] = []

    def clean() -> dict[str, Any] | None:
        v = volume(flow, b["volume_id"])
        seen.append((v["wipe_state"], v["wipe_done_bytes"]))
        assert v["wipe_state"] != "failed", v["wipe_detail"]
        return v if v["wipe_state"] == "clean" else None

    v = wait_for(clean, 900, "the released volume wiped", interval=0.5)
    release_to_free = time.monotonic() - t0
    done = [d for s, d in seen if s == "running"]
    assert done == sorted(done), f"progress went backwards: {done}"
    assert (v["wipe_done_bytes"], v["wipe_total_bytes"]) == (b["size_bytes"], b["size_bytes"])
    assert "Traceback" not in flow.unit_log(UNIT)

    # the whole partition reads as zeros on the unit
    assert lab.exec(UNIT, f"cmp -n {b['size_bytes']} /dev/{b['device']} /dev/zero", timeout=600).rc == 0
    # host-c gets the same volume (the best fit again) and reads zeros over iSCSI
    c = flow.request(HOST_C, "1GiB")
    assert c["volume_id"] == b["volume_id"]
    zeros = hashlib.sha256(bytes(MIB << 20)).hexdigest()
    assert flow.read_sha(HOST_C, c["device_path"], MIB) == zeros
    r = flow.release(HOST_C, c["id"])
    assert r.rc == 0, r.err

    # the raw write rate of the same partition, for the ratio (after the release: nobody uses it)
    wait_for(lambda: volume(flow, c["volume_id"])["wipe_state"] == "clean", 900, "the second wipe")
    mb = b["size_bytes"] / 1e6
    dd = lab.exec(UNIT, f"s=$(date +%s.%N); dd if=/dev/zero of=/dev/{b['device']} bs=4M count={b['size_bytes'] // (4 << 20)} oflag=direct "
                        f"conv=fsync status=none; e=$(date +%s.%N); echo \"$e - $s\" | bc", timeout=900, check=True)
    dd_s = float(dd.out.strip())
    wipe_s = float(v["wipe_detail"].split(" in ")[1].split()[0])
    print(f"\nrelease -> volume free again ({b['size_bytes'] >> 20} MiB, method {v['wipe_method']}): "
          f"{release_to_free:.1f} s; wipe {wipe_s:.1f} s = {mb / max(wipe_s, 0.05):.0f} MB/s; "
          f"raw dd oflag=direct {dd_s:.1f} s = {mb / dd_s:.0f} MB/s; ratio {dd_s / max(wipe_s, 0.05):.2f}")
