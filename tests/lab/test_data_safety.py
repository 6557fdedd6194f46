"""Data safety on real kernels (issue 15 items 1, 5, 8; issue 18 hole 3): the unit agent and its
LIO adapter in unit-a, open-iscsi in host-b and host-c, the station on the machine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_adapters import (  # tests/lab is on sys.path (rootdir conftest)
    clean_unit,
    lio_snippet,
    run_py,
)

from dvsan_lab.scenario import Flow, Station, reset_host, wait_for

pytestmark = pytest.mark.lab
UNIT, HOST_B, HOST_C = "unit-a", "host-b", "host-c"
POOL = "7e57e57e-0000-4000-8000-000000000001"


@pytest.fixture
def clean_lio(lab: Any) -> Iterator[None]:
    """unit-a holds no export before and after; no unit agent is running (see `flow`)."""
    clean_unit(lab)
    yield
    clean_unit(lab)


def test_ep_failed_acl_removal_never_adds_the_next_host(lab: Any, clean_lio: None) -> None:
    """Item 8: when removing host-b's ACL fails, host-c's is not added: never two hosts on one LUN."""
    b, c = lab.initiator_name(HOST_B), lab.initiator_name(HOST_C)
    out = run_py(lab, UNIT, lio_snippet(lab, f"""
        import unit_agent.lio as L
        from rtslib_fb import RTSLibError
        e = Export(device="vda2", target_iqn=target_iqn(UNIT, "vda2"), initiators=({b!r},))
        lio.apply(plan([e], lio.actual_exports()))
        real = L.NodeACL

        class FailingRemoval(real):
            def delete(self):
                raise RTSLibError("injected: the ACL could not be removed")

        L.NodeACL = FailingRemoval
        try:
            lio.apply([SetInitiators(Export(device="vda2", target_iqn=e.target_iqn, initiators=({c!r},)),
                                     add=({c!r},), remove=({b!r},))])
            errors = []
        except ExceptionGroup as eg:
            errors = [str(x) for x in eg.exceptions]
        finally:
            L.NodeACL = real
        acls = sorted(os.listdir(os.path.join(CFS, "iscsi", e.target_iqn, "tpgt_1", "acls")))
        result(errors=errors, acls=acls, cached=list(lio.actual_exports()[0].initiators),
               rescanned=list(Lio(UNIT, PORTAL).actual_exports()[0].initiators))
    """))
    assert out["acls"] == [lab.initiator_name(HOST_B)], out
    assert out["cached"] == out["rescanned"] == [lab.initiator_name(HOST_B)]
    assert any("not adding" in e and "removing" in e for e in out["errors"]), out["errors"]


def test_ep_bad_exports_leave_the_kernel_configuration_unchanged(lab: Any, clean_lio: None) -> None:
    """Hole 3 of issue 18: the real agent on real LIO refuses each bad EXPORTS, and configfs is
    byte for byte what it was (one good export in place)."""
    b = lab.initiator_name(HOST_B)
    out = run_py(lab, UNIT, f"""
        import asyncio
        from unit_agent.agent import UnitAgent
        from unit_agent.inventory import scan
        from unit_agent.lio import Lio
        from dvsan.errors import DvsanError
        UNIT, PORTAL, POOL = {UNIT!r}, {lab.ip(UNIT)!r}, {POOL!r}
        lio = Lio(UNIT, PORTAL)
        offered = {{p.device: p for p in scan("/", ["vda"]).offered}}
        agent = UnitAgent(UNIT, b"k" * 32, ("127.0.0.1", 9), PORTAL, 3260, lio,
                          lambda: scan("/", ["vda"]).offered)

        def export(dev, **over):
            p = offered[dev]
            w = Export(device=dev, target_iqn=target_iqn(UNIT, dev), initiators=({b!r},),
                       wwn="6a1c5f0e-2b7d-4f7e-9d3a-8e0f5c1d2b40", extent=p.extent).to_wire()
            return {{**w, **over}}

        def push(exports, gen=3, **over):
            body = {{"unit": UNIT, "pool_id": POOL, "generation": gen, "exports": exports, **over}}
            try:
                return asyncio.run(agent.apply_exports(body))
            except DvsanError as e:
                return {{"error": str(e)}}

        good = export("vda2")
        first = push([good])
        before = tree(os.path.join(CFS, "iscsi")) + tree(os.path.join(CFS, "core"))
        wrong_extent = {{**export("vda3"), "extent": {{**export("vda3")["extent"], "start_lba": 2048}}}}
        answers = {{
            "other unit": push([], unit="unit-b"),
            "foreign target": push([good, export("vda3", target_iqn="iqn.2026-11.org.dvsan:unit-b:vda3")]),
            "not offered": push([good, {{**export("vda3"), "device": "vdz9",
                                         "target_iqn": target_iqn(UNIT, "vdz9")}}]),
            "changed extent": push([good, wrong_extent]),
            "other pool": push([], pool_id="0d0d0d0d-aaaa-4bbb-8ccc-dddddddddddd"),
            "older generation": push([], gen=2),
        }}
        after = tree(os.path.join(CFS, "iscsi")) + tree(os.path.join(CFS, "core"))
        result(first=first, answers=answers, same=before == after,
               held=[e.target_iqn for e in Lio(UNIT, PORTAL).actual_exports()])
    """)
    assert out["first"]["refused"] == [], out["first"]
    a = out["answers"]
    assert "sent to unit 'unit-a'" in a["other unit"]["error"]
    assert "does not follow this unit's naming" in a["foreign target"]["refused"][0]["reason"]
    assert "not offered" in a["not offered"]["refused"][0]["reason"]
    assert "extent changed" in a["changed extent"]["refused"][0]["reason"]
    assert "belongs to pool " + POOL in a["other pool"]["error"]
    assert "generation 2 refused" in a["older generation"]["error"]
    assert out["same"], "a refused EXPORTS changed the kernel's target configuration"
    assert out["held"] == [f"iqn.2026-11.org.dvsan:{UNIT}:vda2"]


# ---- with the station: the whole path -----------------------------------------------------

@pytest.fixture(scope="module")
def flow(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    for g in (HOST_B, HOST_C):
        reset_host(lab, g)
    clean_unit(lab)
    station = Station(Path.cwd(), Path(tmp_path_factory.mktemp("safety-station")), lab.host_ip)
    station.start()
    f = Flow(lab, station)
    try:
        f.start_unit(UNIT)
        try:
            f.wait_pool(UNIT, 3)
        except Exception as e:
            raise AssertionError(f"{e}\nunit agent log:\n{f.unit_log(UNIT)}\nstation log:\n"
                                 f"{station.log_path.read_text()[-4000:]}") from e
        yield f
    finally:
        for g in (HOST_B, HOST_C):
            reset_host(lab, g)
        if UNIT in f.unit_pids:
            f.stop_unit(UNIT)
        clean_unit(lab)
        station.stop()


def session_ids(flow: Flow, guest: str, target: str) -> list[str]:
    r = flow.iscsiadm(guest, "-m session")
    return sorted(ln.split()[1] for ln in r.out.splitlines() if target in ln)


def unit_ifname(lab: Any) -> str:
    r = lab.exec(UNIT, f"ip -o -4 addr show | awk '$4 ~ /^{lab.ip(UNIT)}\\// {{print $2}}'", check=True)
    return str(r.out.split()[0])


def test_gp_a_new_portal_address_keeps_the_sessions_on_the_old_one(lab: Any, flow: Flow) -> None:
    """Item 5: the unit agent restarts on a second address; host-b's session on the first goes on."""
    a = flow.request(HOST_B, "1G")
    dev = flow.device_of(HOST_B, a["target_iqn"])
    sha = flow.write_pattern(HOST_B, dev, 4, "portal")
    sids = session_ids(flow, HOST_B, a["target_iqn"])
    ifname = unit_ifname(lab)
    second = lab.ip(UNIT).rsplit(".", 1)[0] + "." + str(int(lab.ip(UNIT).rsplit(".", 1)[1]) + 100)
    lab.exec(UNIT, f"ip addr add {second}/24 dev {ifname}", check=True)
    try:
        flow.stop_unit(UNIT)
        flow.start_unit(UNIT, extra=f"--portal-address {second}")
        wait_for(lambda: flow.station.get(f"/api/v1/units/{UNIT}")["portal_address"] == second, 90,
                 "the station to learn the new portal")
        np = f"/sys/kernel/config/target/iscsi/{a['target_iqn']}/tpgt_1/np"
        wait_for(lambda: f"{second}:3260" in lab.exec(UNIT, f"ls {np}").out, 60, "the new portal")
        assert f"{lab.ip(UNIT)}:3260" in lab.exec(UNIT, f"ls {np}").out     # the old one kept
        assert session_ids(flow, HOST_B, a["target_iqn"]) == sids
        assert flow.read_sha(HOST_B, dev, 4) == sha
        # the kernel's count of logged-in initiators, as the agent reads it before any drop
        n = run_py(lab, UNIT, lio_snippet(lab, f"result(n=lio.sessions({a['target_iqn']!r}))"))["n"]
        assert n == 1
        # hosts are told the new portal
        assert flow.station.get(f"/api/v1/assignments/{a['id']}")["unit_address"] == second
    finally:
        flow.release(HOST_B, a["id"])
        flow.stop_unit(UNIT)
        lab.exec(UNIT, f"ip addr del {second}/24 dev {ifname}")
        clean_unit(lab)
        flow.start_unit(UNIT)
        flow.wait_pool(UNIT, 3)


def test_ep_a_repartitioned_disk_is_flagged_and_never_re_exported(lab: Any, flow: Flow) -> None:
    """Item 1: vda1 is assigned to host-b; the unit 'reboots' with vda1 moved 1 MiB. The station
    flags the volume, no export is made on the new extent, and host-b cannot log in to it."""
    a = flow.request(HOST_B, "400M")
    assert a["device"] == "vda1" and a["wwn"], a
    dev = flow.device_of(HOST_B, a["target_iqn"])
    serial = lab.exec(HOST_B, f"cat /sys/block/{dev.rsplit('/', 1)[1]}/device/vpd_pg80 | tr -dc '[:print:]'").out
    assert a["wwn"] in serial, (a["wwn"], serial)        # the LUN's serial is the volume's identity
    flow.write_pattern(HOST_B, dev, 4, "repart")
    dump = lab.exec(UNIT, "sfdisk --dump /dev/vda", check=True).out
    moved = []
    for line in dump.splitlines():
        if line.startswith("/dev/vda1 "):
            fields = dict(f.strip().split("=", 1) for f in line.split(":", 1)[1].split(",") if "=" in f)
            start, size = int(fields["start"]), int(fields["size"])
            line = line.replace(f"start={fields['start']}", f"start={start + 2048}", 1) \
                       .replace(f"size={fields['size']}", f"size={size - 2048}", 1)
            # NOTE: a new partition, not the old one shifted: a new GPT entry UUID too
            line = ",".join(f for f in line.split(",") if "uuid=" not in f)
        moved.append(line)
    flow.stop_unit(UNIT)
    clean_unit(lab)                                       # a reboot: LIO starts empty
    try:
        lab.exec(UNIT, "sfdisk --no-reread --no-tell-kernel /dev/vda && partx -u /dev/vda",
                 input="\n".join(moved) + "\n", check=True)
        assert lab.exec(UNIT, "cat /sys/block/vda/vda1/start").out.strip() == str(start + 2048)
        flow.start_unit(UNIT)

        def flagged() -> dict[str, Any] | None:
            v = next(v for v in flow.station.volumes(UNIT) if v["device"] == "vda1")
            return v if v["state"] == "changed" else None

        v = wait_for(flagged, 90, "the station to flag vda1")
        assert "extent changed" in v["detail"] and v["start_lba"] == start, v
        got = wait_for(lambda: (x := flow.station.get(f"/api/v1/assignments/{a['id']}"))
                       ["export_state"] == "withheld" and x, 60, "the export to be withheld")
        assert "changed" in got["export_detail"]
        assert a["target_iqn"] not in lab.exec(UNIT, "ls /sys/kernel/config/target/iscsi").out
        # host-b's reconnect fails instead of writing over the new extent
        node = f"-m node -T {a['target_iqn']} -p {a['unit_address']}:{a['portal_port']}"
        flow.iscsiadm(HOST_B, f"{node} --logout")
        r = flow.iscsiadm(HOST_B, f"{node} --login", timeout=200)
        assert r.rc != 0, r.out
        assert session_ids(flow, HOST_B, a["target_iqn"]) == []
        log = flow.unit_log(UNIT)
        assert "Traceback" not in log
    finally:
        reset_host(lab, HOST_B)
        if UNIT in flow.unit_pids:
            flow.stop_unit(UNIT)
        lab.exec(UNIT, "sfdisk --no-reread --no-tell-kernel /dev/vda && partx -u /dev/vda",
                 input=dump, check=True)
        r = httpx.delete(f"{flow.station.url}/api/v1/assignments/{a['id']}?wait=60", headers=flow.station.auth, timeout=60)
        assert r.status_code == 200, r.text
        flow.start_unit(UNIT)
        flow.wait_pool(UNIT, 3)
