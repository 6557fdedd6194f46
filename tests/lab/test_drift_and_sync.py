"""On real kernels (issue 6): a target deleted by hand under the unit agent is back after the next
push, and host-b's session recovers onto it; an operator's assignment is picked up by
`dvsan-host-agent sync`, which logs out again once the assignment is gone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_adapters import run_py  # tests/lab is on sys.path (rootdir conftest)

from dvsan_lab.scenario import Flow, Station, reset_host, wait_for

pytestmark = pytest.mark.lab
UNIT, HOST_B, HOST_C = "unit-a", "host-b", "host-c"


@pytest.fixture(scope="module")
def flow(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    for g in (HOST_B, HOST_C):
        reset_host(lab, g)
    station = Station(Path.cwd(), Path(tmp_path_factory.mktemp("drift-station")), lab.host_ip)
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


def target_exists(flow: Flow, iqn: str) -> bool:
    return flow.lab.exec(UNIT, f"test -d /sys/kernel/config/target/iscsi/{iqn}/tpgt_1/lun/lun_0").rc == 0


def test_gp_a_target_deleted_by_hand_is_back_after_the_next_push(flow: Flow) -> None:
    lab = flow.lab
    b = flow.request(HOST_B, "100MiB")
    sha = flow.write_pattern(HOST_B, b["device_path"], 4, "drift")
    # an operator's targetcli (here rtslib in the guest, outside the agent) removes the target
    run_py(lab, UNIT, f"""
        from rtslib_fb import FabricModule, Target
        Target(FabricModule("iscsi"), {b['target_iqn']!r}, mode="lookup").delete()
        result(ok=True)
    """)
    assert not target_exists(flow, b["target_iqn"])
    # the next push (another host's request) puts it back, with host-b's ACL
    c = flow.request(HOST_C, "100MiB")
    assert c["unit"] == UNIT
    wait_for(lambda: target_exists(flow, b["target_iqn"]), 60, "the deleted target re-created")
    acls = lab.exec(UNIT, f"ls /sys/kernel/config/target/iscsi/{b['target_iqn']}/tpgt_1/acls/").out.split()
    assert acls == [lab.initiator_name(HOST_B)]
    assert "targets changed behind the agent" in flow.unit_log(UNIT)
    # host-b's session recovers onto it and reads what it wrote
    assert wait_for(lambda: flow.read_sha(HOST_B, b["device_path"], 4) == sha, 180, "host-b reading again")
    for guest, a in ((HOST_B, b), (HOST_C, c)):
        r = flow.release(guest, a["id"])
        assert r.rc == 0, r.err


def test_gp_sync_picks_up_an_operators_assignment_and_logs_out_once_it_is_gone(flow: Flow) -> None:
    lab = flow.lab
    if HOST_B not in flow.enrolled:
        flow.enrol_host(HOST_B)
    # the operator assigns one chosen volume to host-b (the semi-automatic path): the host did not ask
    free = [v for v in flow.station.volumes() if v["assigned_to"] is None and v["state"] == "online"
            and v["wipe_state"] == "clean"]
    vid = max(free, key=lambda v: v["size_bytes"])["id"]      # not the best fit: the operator's choice
    r = httpx.post(flow.station.url + "/api/v1/assignments?wait=60", headers=flow.station.auth, timeout=120,
                   json={"host": HOST_B, "initiator_iqn": lab.initiator_name(HOST_B),
                         "host_address": lab.ip(HOST_B), "volume_id": vid})
    assert r.status_code == 201, r.text
    a = r.json()
    assert a["volume_id"] == vid and a["requested_bytes"] == a["size_bytes"]
    out = flow.host_agent(HOST_B, "--json sync")
    assert out.rc == 0, out.err
    assert a["id"] in json.loads(out.out.strip().splitlines()[-1])["added"]
    assert a["target_iqn"] in flow.iscsiadm(HOST_B, "-m session").out
    dev = flow.device_of(HOST_B, a["target_iqn"])
    assert lab.exec(HOST_B, f"test -b {dev}").rc == 0
    again = flow.host_agent(HOST_B, "--json sync")           # safe to run again: nothing changes
    assert again.rc == 0 and json.loads(again.out.strip().splitlines()[-1])["added"] == []
    # the operator takes it back (the unit drops the export under host-b's session); the next sync
    # logs out and forgets it
    assert httpx.delete(f"{flow.station.url}/api/v1/assignments/{a['id']}?wait=60", headers=flow.station.auth,
                        timeout=120).status_code == 200
    out = flow.host_agent(HOST_B, "--json sync", timeout=400)
    assert out.rc == 0, out.err
    assert a["id"] in json.loads(out.out.strip().splitlines()[-1])["dropped"]
    sessions = flow.iscsiadm(HOST_B, "-m session")
    assert sessions.rc == 21 or a["target_iqn"] not in sessions.out
    assert flow.host_agent(HOST_B, "--json status").out.strip() == "[]"


def test_ep_a_host_spoofing_the_initiator_name_without_the_chap_secret_is_refused(flow: Flow) -> None:
    """Issue 6: LIO's ACL alone trusts a name anyone can claim; CHAP does not. host-c claims
    host-b's initiator name (an iscsiadm iface): refused (exit 24), with no secret or a wrong one,
    while host-b is logged in with the assignment's CHAP user."""
    lab = flow.lab
    b = flow.request(HOST_B, "100MiB")
    assert b["chap_user"] and b["chap_secret"] == "***"          # printed masked by the host agent
    detail = flow.iscsiadm(HOST_B, "-m session -P 2").out
    assert b["target_iqn"] in detail and f"username: {b['chap_user']}" in detail
    portal = f"{b['unit_address']}:{b['portal_port']}"
    node = f"-m node -T {b['target_iqn']} -p {portal} -I spoof"
    try:
        lab.exec(HOST_C, "iscsiadm -m iface -I spoof -o new", check=True)
        lab.exec(HOST_C, f"iscsiadm -m iface -I spoof -o update -n iface.initiatorname "
                         f"-v {lab.initiator_name(HOST_B)}", check=True)
        lab.exec(HOST_C, f"iscsiadm -m discovery -t st -p {portal} -I spoof", check=True, timeout=120)
        assert flow.iscsiadm(HOST_C, f"{node} --login").rc == 24          # no secret
        for name, value in (("node.session.auth.authmethod", "CHAP"),
                            ("node.session.auth.username", b["chap_user"]),
                            ("node.session.auth.password", "a-wrong-secret-0")):
            lab.exec(HOST_C, f"iscsiadm {node} -o update -n {name} -v {value}", check=True)
        assert flow.iscsiadm(HOST_C, f"{node} --login").rc == 24          # a wrong secret
        assert b["target_iqn"] not in flow.iscsiadm(HOST_C, "-m session").out
    finally:
        lab.exec(HOST_C, "iscsiadm -m node -I spoof -o delete >/dev/null 2>&1; "
                         "iscsiadm -m iface -I spoof -o delete >/dev/null 2>&1; true")
    assert b["target_iqn"] in flow.iscsiadm(HOST_B, "-m session").out   # host-b untouched
    r = flow.release(HOST_B, b["id"])
    assert r.rc == 0, r.err
