"""`dvsan-lab demo`: the whole flow on real kernels, printing what happens and how long it takes."""

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from dvsan.sizes import format_size
from dvsan_lab.scenario import Flow, Station, reset_host

UNIT, HOST_B, HOST_C = "unit-a", "host-b", "host-c"


def _say(t0: float, msg: str) -> None:
    print(f"[{time.monotonic() - t0:7.1f}s] {msg}", flush=True)


def main(lab: Any, args: argparse.Namespace) -> int:
    """Boot (if needed), run station + agents + host I/O + fio, print timings, tear down unless --keep."""
    t0 = time.monotonic()
    figures: dict[str, str] = {}
    booted_here = False
    if not lab.is_up():
        _say(t0, "booting the lab (3 guests under TCG emulation)...")
        tb = time.monotonic()
        lab.up()
        booted_here = True
        figures["dvsan-lab up"] = f"{time.monotonic() - tb:.1f} s"
        _say(t0, f"lab up in {figures['dvsan-lab up']}")
    data_dir = Path(lab.state_dir) / "demo-station"
    shutil.rmtree(data_dir, ignore_errors=True)
    station = Station(Path.cwd(), data_dir, lab.host_ip)
    flow = Flow(lab, station)
    try:
        for g in (HOST_B, HOST_C):
            reset_host(lab, g)
        figures["station start"] = f"{station.start():.1f} s"
        _say(t0, f"station up at {station.url} (SQLite in {data_dir}), protocol on udp {lab.host_ip}:7479")
        ts = time.monotonic()
        flow.start_unit(UNIT)
        vols = flow.wait_pool(UNIT, 3)
        figures["unit agent start -> volumes in pool"] = f"{time.monotonic() - ts:.1f} s"
        _say(t0, f"unit {UNIT} announced itself; pool now holds:")
        for v in vols:
            print(f"           {v['unit_name']}:{v['device']:5} start {v['start_lba']:>8} end {v['end_lba']:>8} "
                  f"({format_size(v['size_bytes'])}, {v['state']})")
        tr = time.monotonic()
        a = flow.request(HOST_B, "1GiB")
        figures["host request -> usable block device"] = f"{time.monotonic() - tr:.1f} s"
        _say(t0, f"{HOST_B} asked for 1 GiB, got {a['unit']}:{a['device']} ({format_size(a['size_bytes'])}, "
                 f"smallest that fits) as {a['target_iqn']}; block device {a['device_path']}")
        sha = flow.write_pattern(HOST_B, a["device_path"], 64, "demo")
        dev = flow.relogin(HOST_B, a)
        same = flow.read_sha(HOST_B, dev, 64) == sha and flow.read_sha(UNIT, f"/dev/{a['device']}", 64) == sha
        _say(t0, f"{HOST_B} wrote 64 MiB, logged out and in, read back: {'identical' if same else 'DIFFERENT'}"
                 f" (and identical on the unit's partition)")
        portal = f"{a['unit_address']}:{a['portal_port']}"
        denied = lab.exec(HOST_C, f"iscsiadm -m discovery -t st -p {portal} >/dev/null; "
                                  f"iscsiadm -m node -T {a['target_iqn']} -p {portal} --login").rc
        lab.exec(HOST_C, f"iscsiadm -m node -T {a['target_iqn']} -p {portal} -o delete")
        _say(t0, f"{HOST_C} (not assigned) tried to log in to it: iscsiadm exit {denied} "
                 f"({'authorization failure, as it should' if denied == 24 else 'UNEXPECTED'})")
        station.stop()
        sha2 = flow.write_pattern(HOST_B, dev, 16, "nostation")
        ok = flow.read_sha(HOST_B, dev, 16) == sha2
        _say(t0, f"station stopped; {HOST_B} wrote and read 16 MiB: {'fine' if ok else 'FAILED'} (out of band)")
        station.start()
        _say(t0, "fio, sequential 1 MiB blocks, iodepth 8, direct I/O (emulated guests: compare as ratios)...")
        w = flow.fio(HOST_B, dev, "write")
        r = flow.fio(HOST_B, dev, "read")
        local = flow.fio(UNIT, f"/dev/{a['device']}", "read")
        figures["fio host write over iSCSI"] = f"{w:.1f} MiB/s"
        figures["fio host read over iSCSI"] = f"{r:.1f} MiB/s"
        figures["fio unit local read, same partition"] = f"{local:.1f} MiB/s"
        figures["iSCSI read / local read"] = f"{r / local:.2f}" if local else "n/a"
        rel = flow.release(HOST_B, a["id"])
        _say(t0, f"{HOST_B} released the volume: {'ok' if rel.rc == 0 else rel.err.strip()}")
        print("\nFigures from this run:")
        for k, fig in figures.items():
            print(f"  {k:40} {fig}")
        return 0 if same and denied == 24 and ok and rel.rc == 0 else 1
    finally:
        for g in (HOST_B, HOST_C):
            reset_host(lab, g)
        if UNIT in flow.unit_pids:
            flow.stop_unit(UNIT)
        station.stop()
        if booted_here and not getattr(args, "keep", False):
            _say(t0, "tearing the lab down (dvsan-lab up + demo --keep keeps it)")
            lab.down()
