"""Failures on real kernels (issue 8): units added, rebooted and lost under I/O, mirrors across units,
a spare unit stepping in, a spare host taking over a dead host's storage.

The failure lab: unit-a (partitions of 512 MiB, 1280 MiB, 2 GiB), unit-d and unit-spare (256 MiB,
512 MiB, 1 GiB: resyncs and wipes under emulation stay short) and host-b, host-c, host-spare. unit-d, unit-spare and host-spare are booted into the
running lab once, by this module. Every data check is a real `fio --verify` or a checksum read
through real open-iscsi sessions from real LIO; every failure is real (an emulator killed or
frozen). Figures (stalls, times) are printed, never asserted against a clock: bench/failures.py
prints them as a table.
"""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
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
        # the rest of the session runs on the quick lab: idle emulators still cost CPU
        for g in ("unit-d", "unit-spare", "host-spare"):
            lab.power_off(g)


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
    job = FioJob(f.lab, host, a["device_path"], "unit-added", runtime=40).start(size_mib=128)
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
    job = FioJob(f.lab, host, a["device_path"], "unit-reboot", runtime=45).start(size_mib=128)
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


# --- mirrors ---------------------------------------------------------------------------------

def request_mirror(f: Flow, host: str, size: str) -> dict[str, Any]:
    r = f.host_agent(host, f"--json request {size} --mirrored", timeout=300)
    assert r.rc == 0, f"request --mirrored in {host}: rc {r.rc}: {r.out} {r.err}"
    return json.loads(r.out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def mirror_view(f: Flow, mid: int) -> dict[str, Any]:
    return f.station.get(f"/api/v1/mirrors/{mid}")  # type: ignore[no-any-return]


def wait_mirror(f: Flow, mid: int, state: str, timeout: float) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        m = mirror_view(f, mid)
        return m if m["state"] == state else None
    return wait_for(reached, timeout, f"mirror {mid} reported {state}", interval=1)  # type: ignore[no-any-return]


def md_name(f: Flow, host: str, mid: int) -> str:
    return f.lab.exec(host, f"basename $(readlink -f /dev/md/dvsan-{mid})", check=True).out.strip()


def md_check(f: Flow, host: str, mid: int) -> int:
    """md compares its members block by block (`check`); the count of sectors that differ."""
    md = md_name(f, host, mid)
    f.lab.exec(host, f"echo check > /sys/block/{md}/md/sync_action", check=True)
    wait_for(lambda: f.lab.exec(host, f"cat /sys/block/{md}/md/sync_action").out.strip() == "idle", 600,
             f"md check of {md} in {host}", interval=2)
    return int(f.lab.exec(host, f"cat /sys/block/{md}/md/mismatch_cnt", check=True).out.strip())


def start_watch(f: Flow, host: str, interval: float = 2) -> int:
    return int(f.lab.spawn(host, f.host_agent_command(host, f"--log-level info watch --interval {interval}"),
                           f"/tmp/dvsan-host-watch-{host}.log"))


def stop_watch(f: Flow, host: str, pid: int) -> None:
    f.lab.exec(host, f"kill -TERM -- -{pid} 2>/dev/null; true")


def test_gp_a_mirror_rides_out_a_unit_power_cut_and_the_spare_unit_takes_the_lost_member_s_place(dr: Flow) -> None:
    """host-b's mirror spans two units; under fio --verify one of them loses power: the array goes
    degraded and I/O goes on (0 verify errors); the station sees the unit unreachable and the host
    reports the mirror degraded; the replace task puts a volume of a third unit in, the host adds it
    and resyncs; md's own check finds the members equal. When the lost unit comes back, its stale
    member is not re-added: it is dropped and wiped like any released volume."""
    f, host = dr, "host-b"
    for u in UNITS:
        ensure_unit(f, u)
    plain = f.request(host, "200MiB")      # the raw write rate, for comparison with the resync's
    raw = f.fio(host, plain["device_path"], "write", size_mib=128, runtime=8)
    f.release(host, plain["id"])
    m = request_mirror(f, host, "400MiB")
    mid, md = m["id"], m["md_device"]
    units = [a["unit"] for a in m["members"]]
    assert len(set(units)) == 2, f"both members on one unit: {units}"
    lost = next(u for u in units if u != "unit-a")            # unit-a serves the quick lab too
    lost_member = next(a for a in m["members"] if a["unit"] == lost)
    keep_member = next(a for a in m["members"] if a["unit"] != lost)
    watch = start_watch(f, host)
    try:
        wait_mirror(f, mid, "clean", 600)
        job = FioJob(f.lab, host, md, "mirror-unit-lost", runtime=60).start(size_mib=128)
        job.wait_writing()
        t0 = time.monotonic()
        f.lab.power_off(lost)
        wait_for(lambda: unit_state(f, lost) == "unreachable", 120, f"{lost} marked unreachable")
        noticed = time.monotonic() - t0
        degraded = wait_mirror(f, mid, "degraded", 120)
        reported = time.monotonic() - t0
        assert degraded["members"] and {a["id"]: a["member_state"] for a in degraded["members"]}[
            lost_member["id"]] in ("faulty", "missing")
        t1 = time.monotonic()
        r = httpx.post(f"{f.station.url}/api/v1/mirrors/{mid}/replace?wait=180", headers=f.station.auth,
                       json={"member": lost_member["id"]}, timeout=200)
        assert r.status_code in (200, 201), r.text
        after = mirror_view(f, mid)
        new = next(a for a in after["members"] if a["id"] not in (lost_member["id"], keep_member["id"]))
        assert new["unit"] not in (lost, keep_member["unit"]), f"replacement on {new['unit']}"
        assert lost_member["id"] not in [a["id"] for a in after["members"]]
        wait_mirror(f, mid, "clean", 900)
        replaced = time.monotonic() - t1
        res = job.wait()
        size = int(f.lab.exec(host, f"blockdev --getsize64 {md}", check=True).out)
        print(f"\nmirror, unit lost under I/O: station noticed after {noticed:.1f} s, host reported the "
              f"mirror degraded after {reported:.1f} s; replaced and resynced {size >> 20} MiB in "
              f"{replaced:.1f} s ({size / 2**20 / replaced:.1f} MiB/s; raw write {raw:.1f} MiB/s); "
              f"{res.describe()}")
        assert res.clean, res.log_tail
        assert md_check(f, host, mid) == 0, "the new member differs from the surviving one"
    finally:
        stop_watch(f, host, watch)
    # the lost unit comes back: its stale member is released and wiped, never re-added
    f.lab.boot(lost)
    wait_for(lambda: unit_state(f, lost) == "online", 300, f"{lost} back online")
    vol = wait_for(lambda: (v := f.station.get(f"/api/v1/volumes/{lost_member['volume_id']}"))
                   and v.get("wipe_state") == "clean" and v, 600, "the stale member's volume wiped")
    assert vol.get("assigned_to") is None, vol
    members = f.lab.exec(host, f"ls /sys/block/{md_name(f, host, mid)}/md/ | grep -c '^dev-'", check=True)
    assert members.out.strip() == "2"
    targets = f.lab.exec(lost, "ls /sys/kernel/config/target/iscsi/ 2>/dev/null").out
    assert lost_member["target_iqn"] not in targets
    r = f.host_agent(host, f"--json release {mid} --mirror")
    assert r.rc == 0, r.err


def test_gp_a_spare_host_takes_over_a_dead_host_s_volumes_and_the_dead_host_cannot_write(dr: Flow) -> None:
    """host-c holds a plain volume and a mirror with known data, then hangs (its emulator frozen).
    The takeover task fences host-c at every unit and gives its storage to host-spare, whose `sync`
    logs in, reassembles the mirror and reads host-c's data. Thawed, host-c's writes fail and its
    logins are refused."""
    f, dead, spare = dr, "host-c", "host-spare"
    for u in UNITS:
        ensure_unit(f, u)
    f.enrol_host(spare) if spare not in f.enrolled else None
    plain = f.request(dead, "200MiB")
    m = request_mirror(f, dead, "400MiB")
    sha_plain = f.write_pattern(dead, plain["device_path"], 16, "takeover-plain")
    sha_md = f.write_pattern(dead, m["md_device"], 16, "takeover-md")
    # the dead host's plain session gives up after 10 s instead of open-iscsi's 120 (so the test
    # sees its writes fail soon after the thaw; mirror members have 5 s already)
    f.lab.exec(dead, "for s in /sys/class/iscsi_session/session*; do "
                     "echo 10 > $s/recovery_tmo 2>/dev/null; done; true", check=True)
    f.lab.freeze(dead)
    try:
        t0 = time.monotonic()
        r = httpx.post(f"{f.station.url}/api/v1/hosts/{dead}/takeover?wait=300", headers=f.station.auth,
                       json={"to": spare}, timeout=320)
        assert r.status_code in (200, 201), r.text
        sync = f.host_agent(spare, "--json sync", timeout=300)
        assert sync.rc == 0, sync.out + sync.err
        held = f.held(spare)
        got_plain = held[str(plain["id"])]["device_path"]
        assert f.read_sha(spare, got_plain, 16) == sha_plain
        assert f.read_sha(spare, f"/dev/md/dvsan-{m['id']}", 16) == sha_md
        took = time.monotonic() - t0
    finally:
        f.lab.thaw(dead)
    print(f"\nhost takeover: {took:.1f} s from the decision to the spare host reading the data")
    # the thawed host: its writes fail, its logins are refused
    w = f.lab.exec(dead, f"dd if=/dev/zero of={plain['device_path']} bs=4k count=1 oflag=direct "
                         "status=none", timeout=240)
    assert w.rc != 0, "the fenced host wrote to a volume it no longer holds"
    login = f.lab.exec(dead, f"iscsiadm -m node -T {plain['target_iqn']} -p {plain['unit_address']}:"
                             f"{plain['portal_port']} --login", timeout=120)
    assert login.rc != 0, login.out
    assert f.read_sha(spare, got_plain, 16) == sha_plain       # and nothing of host-c's got through
    _stop_arrays(f.lab, dead)
    reset_host(f.lab, dead)


def test_gp_a_host_rebooted_for_real_gets_its_volumes_and_mirror_back_at_boot(dr: Flow) -> None:
    """host-spare holds a plain volume and a mirror; it is reset; at boot `dvsan-host-agent sync`
    (its autostart) logs in again and reassembles the mirror; the data reads back."""
    f, host = dr, "host-spare"
    for u in UNITS:
        ensure_unit(f, u)
    f.keep_host_state(host)
    for aid, rec in f.held(host).items():   # what it took over: given back, this test starts clean
        if rec.get("mirror_id") is None:
            f.host_agent(host, f"release {aid} --force")
    for mid in {rec["mirror_id"] for rec in f.held(host).values()}:
        f.host_agent(host, f"release {mid} --mirror --force")
    assert f.held(host) == {}
    plain = f.request(host, "200MiB")
    m = request_mirror(f, host, "400MiB")
    sha_plain = f.write_pattern(host, plain["device_path"], 16, "reboot-plain")
    sha_md = f.write_pattern(host, m["md_device"], 16, "reboot-md")
    auto = f.lab.shared_dir / "autostart" / f"{host}.sh"
    auto.parent.mkdir(parents=True, exist_ok=True)
    auto.write_text(f"#!/bin/bash\n{f.host_agent_command(host, 'sync')} >>/tmp/dvsan-host-boot.log 2>&1\n")
    try:
        took = f.lab.reboot(host)
        held = wait_for(lambda: (h := f.held(host)) and all(
            f.lab.exec(host, f"test -b {r['device_path']}").rc == 0 for r in h.values()) and h, 300,
            "the host's volumes back after its reboot", interval=2)
        assert f.lab.exec(host, f"test -b /dev/md/dvsan-{m['id']}").rc == 0, \
            f.lab.exec(host, "cat /tmp/dvsan-host-boot.log").out
        assert f.read_sha(host, held[str(plain["id"])]["device_path"], 16) == sha_plain
        assert f.read_sha(host, f"/dev/md/dvsan-{m['id']}", 16) == sha_md
        print(f"\nhost reboot: answered after {took:.1f} s; volumes and mirror back by its boot-time sync")
    finally:
        auto.unlink(missing_ok=True)
    f.host_agent(host, f"release {m['id']} --mirror")
    f.release(host, plain["id"])


def test_gp_eight_volumes_on_three_units_and_releasing_one_leaves_the_others_intact(dr: Flow) -> None:
    """host-b holds two mirrors and four plain volumes (8 volumes on 3 units) with known data;
    releasing one plain volume and one mirror leaves every other logged in and reading its data."""
    f, host = dr, "host-b"
    for u in UNITS:
        ensure_unit(f, u)

    def free() -> int:
        return sum(1 for v in f.station.volumes() if v["state"] == "online" and v.get("wipe_state") == "clean"
                   and not v.get("assigned_to"))
    wait_for(lambda: free() >= 8, 900, "eight clean free volumes (earlier tests' wipes)", interval=2)
    mirrors = [request_mirror(f, host, "400MiB") for _ in range(2)]
    plains = [f.request(host, "200MiB") for _ in range(4)]
    held = f.held(host)
    units = {r["unit"] for r in held.values()}
    assert len(held) == 8 and units == set(UNITS), (len(held), units)
    devices = {f"m{m['id']}": m["md_device"] for m in mirrors} | {str(p["id"]): p["device_path"] for p in plains}
    shas = {k: f.write_pattern(host, d, 4, f"many-{k}") for k, d in devices.items()}
    assert f.release(host, plains[0]["id"]).rc == 0
    assert f.host_agent(host, f"release {mirrors[0]['id']} --mirror").rc == 0
    gone = {str(plains[0]["id"]), f"m{mirrors[0]['id']}"}
    left = f.held(host)
    assert len(left) == 5 and all(r["logged_in"] for r in left.values()), left
    for k, d in devices.items():
        if k not in gone:
            assert f.read_sha(host, d, 4) == shas[k], f"{k} changed after another volume's release"
    for p in plains[1:]:
        f.release(host, p["id"])
    f.host_agent(host, f"release {mirrors[1]['id']} --mirror")
