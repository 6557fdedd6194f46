"""Issue 6 on real kernels: mutual CHAP between real open-iscsi and real LIO; no CHAP secret on the
storage network in clear (tcpdump on the unit's interface) nor in any log; two wipes run at once,
their progress seen live in the station's event stream, a second task on a wiping volume refused."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dvsan_lab.events import Stream
from dvsan_lab.scenario import Flow, Station, reset_host, wait_for

pytestmark = pytest.mark.lab
UNIT, HOST_B, HOST_C = "unit-a", "host-b", "host-c"


@pytest.fixture(scope="module")
def flow(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    for g in (HOST_B, HOST_C):
        reset_host(lab, g)
    station = Station(Path.cwd(), Path(tmp_path_factory.mktemp("security-station")), lab.host_ip)
    station.start()
    f = Flow(lab, station)
    try:
        # zeros written, not the disk's write-zeroes (a 1280 MiB partition zeroes in 0.7 s by
        # BLKZEROOUT here): wipes long enough to watch two of them run at once
        f.start_unit(UNIT, extra="--no-wipe-zeroout")
        f.wait_pool(UNIT, 3)
        yield f
    finally:
        lab.exec(UNIT, "pkill tcpdump; true")
        for g in (HOST_B, HOST_C):
            reset_host(lab, g)
        if UNIT in f.unit_pids:
            f.stop_unit(UNIT)
        station.stop()


def as_admin(flow: Flow, path: str) -> Any:
    r = httpx.get(flow.station.url + path, headers=flow.station.auth, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_gp_mutual_chap_logs_in_and_no_secret_crosses_the_network_or_reaches_a_log(flow: Flow) -> None:
    lab = flow.lab
    # every UDP datagram the unit sends or receives while the assignment is made and pushed
    lab.exec(UNIT, "rm -f /tmp/dvsan.pcap; nohup tcpdump -i any -U -s 0 -w /tmp/dvsan.pcap udp "
                   ">/tmp/tcpdump.log 2>&1 </dev/null & sleep 2", check=True)
    out = flow.host_agent(HOST_B, "--json request 100MiB --mutual-chap")
    assert out.rc == 0, out.err
    b = json.loads([ln for ln in out.out.strip().splitlines() if ln.startswith("{")][-1])
    assert b["chap_secret"] == "***" and b["mutual_secret"] == "***"     # printed masked
    lab.exec(UNIT, "pkill -INT tcpdump; sleep 2; true")
    pcap = base64.b64decode(lab.exec(UNIT, "base64 -w0 /tmp/dvsan.pcap", check=True).out.strip())
    a = as_admin(flow, f"/api/v1/assignments/{b['id']}")
    secrets = [a["chap_secret"], a["mutual_secret"]]
    assert all(secrets) and a["mutual_user"].startswith("dvsan-t-")
    # the capture saw the push (the CHAP user names travel in clear), never a secret
    assert a["chap_user"].encode() in pcap and a["mutual_user"].encode() in pcap, "tcpdump saw no EXPORTS"
    for s in secrets:
        assert s.encode() not in pcap, "a CHAP secret crossed the storage network in clear"
    # the session runs with mutual CHAP: the host checked the target's answer
    detail = flow.iscsiadm(HOST_B, "-m session -P 2").out
    assert f"username: {a['chap_user']}" in detail and f"username_in: {a['mutual_user']}" in detail
    tag = flow.write_pattern(HOST_B, b["device_path"], 4, "mutual")
    assert flow.read_sha(HOST_B, b["device_path"], 4) == tag
    # a host with the wrong secret for the target refuses the target: no session
    portal = f"{b['portal_address']}:{b['portal_port']}"
    node = f"-m node -T {b['target_iqn']} -p {portal}"
    assert flow.iscsiadm(HOST_B, f"{node} --logout").rc == 0
    lab.exec(HOST_B, f"iscsiadm {node} -o update -n node.session.auth.password_in -v not-the-target-0", check=True)
    bad = flow.iscsiadm(HOST_B, f"{node} --login")
    assert bad.rc != 0 and b["target_iqn"] not in flow.iscsiadm(HOST_B, "-m session").out, bad.out
    lab.exec(HOST_B, f"iscsiadm {node} -o update -n node.session.auth.password_in -v {a['mutual_secret']}", check=True)
    assert flow.iscsiadm(HOST_B, f"{node} --login").rc == 0
    dev = flow.device_of(HOST_B, b["target_iqn"])
    assert flow.read_sha(HOST_B, dev, 4) == tag
    r = flow.release(HOST_B, b["id"])
    assert r.rc == 0, r.err
    # no log holds a secret: station, unit agent, host agent output, tcpdump's own
    logs = {"station": flow.station.log_path.read_text(), "unit": flow.unit_log(UNIT),
            "host agent": out.out + out.err + r.out + r.err,
            "host journal": lab.exec(HOST_B, "dmesg; cat /var/log/syslog 2>/dev/null; true").out}
    for where, text in logs.items():
        for s in secrets:
            assert s not in text, f"a CHAP secret is in the {where} log"


def test_gp_two_wipes_at_once_with_live_progress_and_a_busy_volume_refuses_a_second_task(flow: Flow) -> None:
    # two wipes long enough to overlap although the unit applies the two releases one after the
    # other (zeros written at ~100 MB/s in the lab: ~13 s and ~20 s)
    small = flow.request(HOST_B, "1GiB")        # the 1280 MiB partition
    big = flow.request(HOST_C, "1500MiB")       # the 2 GiB one
    stream = Stream(flow.station, flow.station.auth)
    try:
        assert stream.status == 200
        # the hosts log out, then an operator releases both at once (the station drops the
        # exports and orders both wipes within moments of each other)
        for g, x in ((HOST_B, small), (HOST_C, big)):
            out = flow.iscsiadm(g, f"-m node -T {x['target_iqn']} --logout")
            assert out.rc == 0, out.err
        results: list[Any] = []
        threads = [threading.Thread(target=lambda x=x: results.append(httpx.delete(
            f"{flow.station.url}/api/v1/assignments/{x['id']}?wait=120", headers=flow.station.auth, timeout=180)))
            for x in (small, big)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
        wipes = {}
        for x in (small, big):
            wipes[x["volume_id"]] = wait_for(
                lambda x=x: next((d["id"] for d in stream.tasks(kind="wipe", object=f"/volumes/{x['volume_id']}")), None),
                120, f"the wipe task of volume {x['volume_id']}")
        # while the big one runs: a second task on it is refused, naming the task that holds it
        busy = httpx.post(f"{flow.station.url}/api/v1/volumes/{big['volume_id']}/wipe", headers=flow.station.auth, timeout=30)
        if busy.status_code != 409 or "is busy: task" not in busy.text:
            pytest.fail(f"a second task on a wiping volume was not refused as busy: {busy.status_code} {busy.text}")
        for tid in wipes.values():
            done = httpx.get(f"{flow.station.url}/api/v1/tasks/{tid}?wait=600", headers=flow.station.auth, timeout=700).json()
            assert done["state"] == "succeeded", done
        wait_for(lambda: len([d for d in stream.tasks(kind="wipe", state="succeeded") if d["id"] in wipes.values()]) == 2,
                 60, "both wipes' final events")
        running: set[int] = set()
        both = False
        for d in stream.tasks(kind="wipe"):
            (running.add if d["state"] == "running" else running.discard)(d["id"])
            both = both or running >= set(wipes.values())
        assert both, "the two wipes never ran at the same time"
        for tid in wipes.values():
            steps = [d["step"] for d in stream.tasks(id=tid, state="running") if 0 < d["step"] < d["total_steps"]]
            assert steps and steps == sorted(steps), f"no live progress of wipe task {tid}: {steps}"
        print(f"\nwipe events seen: {len(stream.tasks(kind='wipe'))} for two wipes "
              f"({small['size_bytes'] >> 20} and {big['size_bytes'] >> 20} MiB)")
    finally:
        stream.close()


def test_ep_station_killed_mid_wipe_hands_the_volume_out_only_once_wiped(flow: Flow) -> None:
    """SIGKILL of the station while a released volume's wipe is unfinished (the unit agent frozen
    right after the release, so neither its end nor its progress can reach the station): after the
    restart the volume is refused to an operator who names it until the unit has wiped it, then the
    next host reads only zeros."""
    lab, station = flow.lab, flow.station
    pgid = flow.unit_pids[UNIT]

    def vol(vid: int) -> dict[str, Any]:
        return next(v for v in station.volumes(UNIT) if v["id"] == vid)

    # NOTE: on a quiet machine the lab zeroes 2 GiB in about 2 s: freeze the agent as soon as the
    # release returns, and try again if the wipe had already ended (nothing would be proven)
    for _ in range(4):
        b = flow.request(HOST_B, "1500MiB")            # the 2 GiB volume: the longest wipe
        secret = flow.write_pattern(HOST_B, b["device_path"], 16, "killed")
        assert flow.read_sha(UNIT, f"/dev/{b['device']}", 16) == secret
        rel = flow.release(HOST_B, b["id"])
        assert rel.rc == 0, rel.err
        lab.exec(UNIT, f"kill -STOP -- -{pgid}", check=True)
        if vol(b["volume_id"])["wipe_state"] != "clean":
            break
        lab.exec(UNIT, f"kill -CONT -- -{pgid}", check=True)
    else:
        pytest.fail("the wipe always ended before the unit agent could be frozen")
    try:
        assert station.proc is not None
        station.proc.kill()                     # SIGKILL: no goodbye, no final write
        station.proc.wait()
        station.proc = None
        station.start()
        # named by an operator while its wipe is owed: refused
        r = httpx.post(station.url + "/api/v1/assignments?wait=60", headers=station.auth, timeout=90, json={
            "host": HOST_C, "initiator_iqn": f"iqn.2026-11.org.dvsan.lab:{HOST_C}",
            "host_address": lab.ip(HOST_C), "volume_id": b["volume_id"]})
        assert r.status_code == 409 and f"volume {b['volume_id']} is not wiped yet" in r.json()["detail"], r.text
        assert vol(b["volume_id"])["wipe_state"] != "clean"
    finally:
        lab.exec(UNIT, f"kill -CONT -- -{pgid}", check=True)

    def clean() -> dict[str, Any] | None:
        v = vol(b["volume_id"])
        assert v["wipe_state"] != "failed", v["wipe_detail"]
        return v if v["wipe_state"] == "clean" else None

    wait_for(clean, 900, "the volume wiped after the station's restart", interval=0.5)
    assert lab.exec(UNIT, f"cmp -n {b['size_bytes']} /dev/{b['device']} /dev/zero", timeout=600).rc == 0
    c = flow.request(HOST_C, "1500MiB")
    assert c["volume_id"] == b["volume_id"]
    zeros = hashlib.sha256(bytes(16 << 20)).hexdigest()
    assert flow.read_sha(HOST_C, c["device_path"], 16) == zeros
    assert flow.release(HOST_C, c["id"]).rc == 0
