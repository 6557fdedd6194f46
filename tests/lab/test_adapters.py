"""The kernel adapters on real kernels: inventory and LIO on unit-a, iscsiadm on host-b and -c."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

UNIT, HOST_B, HOST_C = "unit-a", "host-b", "host-c"
DEVICE = "vda2"
MiB = 1024 * 1024

# Put in front of every snippet run in a guest: helpers, and the last line it prints is its result.
PRELUDE = """\
import json, os, sys, time
from dvsan.model import Export
from dvsan.naming import target_iqn, unit_target_prefix, BACKSTORE_PREFIX
from dvsan.reconcile import plan, CreateExport, DeleteExport, SetInitiators

CFS = "/sys/kernel/config/target"

def result(**kw):
    print("RESULT " + json.dumps(kw))

def ours(unit):
    iscsi = os.path.join(CFS, "iscsi")
    targets = sorted(n for n in os.listdir(iscsi) if n.startswith(unit_target_prefix(unit))) \\
        if os.path.isdir(iscsi) else []
    core = os.path.join(CFS, "core")
    stores = sorted(f"{h}/{n}" for h in os.listdir(core) if h.startswith("iblock_")
                    for n in os.listdir(os.path.join(core, h)) if n.startswith(BACKSTORE_PREFIX))
    return {"targets": targets, "backstores": stores}

def tree(path):
    # Every entry and symlink target under a configfs dir: a re-created LUN or ACL changes it.
    out = []
    for d, dirs, files in os.walk(path):
        for n in sorted(dirs + files):
            p = os.path.join(d, n)
            out.append(p + (" -> " + os.readlink(p) if os.path.islink(p) else ""))
    return sorted(out)
"""


def run_py(lab: Any, guest: str, code: str, timeout: float = 180) -> dict[str, Any]:
    """Run a Python snippet in a guest with the project's venv; returns what it gave result()."""
    src = PRELUDE + textwrap.dedent(code)
    res = lab.exec(guest, f"{lab.python} -", input=src, cwd=str(lab.repo), timeout=timeout)
    lines = [ln for ln in res.out.splitlines() if ln.startswith("RESULT ")]
    assert res.rc == 0 and lines, f"snippet in {guest} failed (rc {res.rc}):\n{res.out}\n{res.err}"
    out: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return out


def lio_snippet(lab: Any, body: str) -> str:
    """A snippet that opens Lio for unit-a's portal, then runs `body`."""
    return (f"from unit_agent.lio import Lio\n"
            f"UNIT, PORTAL = {UNIT!r}, {lab.ip(UNIT)!r}\n"
            f"lio = Lio(UNIT, PORTAL)\n" + textwrap.dedent(body))


def clean_unit(lab: Any) -> dict[str, Any]:
    """Log every host out, then remove every export of unit-a; returns what is left in configfs."""
    for host in (HOST_B, HOST_C):
        lab.exec(host, "iscsiadm -m node --logoutall=all >/dev/null 2>&1; "
                       "iscsiadm -m node -o delete >/dev/null 2>&1; true", timeout=120)
    return run_py(lab, UNIT, lio_snippet(lab, """
        try:
            lio.apply(plan([], lio.actual_exports()))
        finally:
            result(left=ours(UNIT), leftovers=Lio(UNIT, PORTAL).leftovers())
    """))


@pytest.fixture
def clean(lab: Any) -> Iterator[None]:
    """unit-a holds no export before and after the test; hosts hold no session."""
    clean_unit(lab)
    yield
    left = clean_unit(lab)
    assert left["left"] == {"targets": [], "backstores": []}, left


def test_gp_inventory_matches_sfdisk(lab: Any) -> None:
    out = run_py(lab, UNIT, """
        import subprocess
        from unit_agent.inventory import scan
        inv = scan("/", ["vda"])
        sf = json.loads(subprocess.run(["sfdisk", "--json", "/dev/vda"], capture_output=True,
                                       text=True, check=True).stdout)
        from unit_agent.inventory import blkid_probe
        probed = scan("/", ["vda"], probe=blkid_probe, offer="all-unmounted")
        result(offered=[p.to_wire() for p in inv.offered], excluded=inv.excluded,
               all_excluded=scan().excluded, sfdisk=sf["partitiontable"],
               probed={p.device: p.uid for p in probed.offered}, probe_excluded=probed.excluded)
    """)
    # blkid's partition entry UUIDs are the ones the partition table holds
    assert out["probe_excluded"] == {}, out["probe_excluded"]
    want_uids = {p["node"].removeprefix("/dev/"): p.get("uuid", "").lower() for p in out["sfdisk"]["partitions"]}
    assert {d: u.lower() for d, u in out["probed"].items()} == want_uids and all(want_uids.values()), out
    table = out["sfdisk"]
    assert [p["device"] for p in out["offered"]] == ["vda1", "vda2", "vda3"], out
    assert [p["size_bytes"] // MiB for p in out["offered"]] == [512, 1280, 2048]
    for p, s in zip(out["offered"], table["partitions"], strict=True):
        assert s["node"] == f"/dev/{p['device']}"
        assert (p["start_lba"], p["length_blocks"]) == (s["start"], s["size"])
        assert p["end_lba"] == s["start"] + s["size"] - 1
        assert p["block_size"] == table["sectorsize"]
        assert p["disk"] == "vda" and p["number"] == int(s["node"].removeprefix("/dev/vda"))
    assert out["excluded"] == {}
    # The guest's root is 9p, so no disk is the system disk; anything skipped is not vda.
    assert not any(dev.startswith("vda") for dev in out["all_excluded"]), out["all_excluded"]


def test_gp_export_login_write_read_logout_then_delete(lab: Any, clean: None) -> None:
    unit_ip = lab.ip(UNIT)
    b_iqn, c_iqn = lab.initiator_name(HOST_B), lab.initiator_name(HOST_C)
    created = run_py(lab, UNIT, lio_snippet(lab, f"""
        from unit_agent.inventory import scan
        e = Export(device={DEVICE!r}, target_iqn=target_iqn(UNIT, {DEVICE!r}),
                   initiators=({b_iqn!r},))
        actions = plan([e], lio.actual_exports())
        t0 = time.monotonic(); lio.apply(actions); ms = (time.monotonic() - t0) * 1000
        before = tree(os.path.join(CFS, "iscsi", e.target_iqn))
        # The same plan again changes nothing: the LUN, ACL and mapped LUN stay as they were.
        lio.apply(actions)
        tpg = os.path.join(CFS, "iscsi", e.target_iqn, "tpgt_1")
        attrs = {{a: open(os.path.join(tpg, "attrib", a)).read().strip()
                 for a in ("authentication", "generate_node_acls", "demo_mode_write_protect")}}
        result(ms=ms, actions=len(actions), cached=[x.to_wire() for x in lio.actual_exports()],
               rescanned=[x.to_wire() for x in Lio(UNIT, PORTAL).actual_exports()],
               replan=len(plan([e], Lio(UNIT, PORTAL).actual_exports())),
               same_tree=before == tree(os.path.join(CFS, "iscsi", e.target_iqn)),
               enabled=open(os.path.join(tpg, "enable")).read().strip(), attrs=attrs,
               still_offered={DEVICE!r} in {{p.device for p in scan("/", ["vda"]).offered}},
               left=ours(UNIT))
    """))
    iqn = f"iqn.2026-11.org.dvsan:{UNIT}:{DEVICE}"
    # no serial asked for: the kernel's own (random) one, read back the same from cache and configfs
    want = {"device": DEVICE, "target_iqn": iqn, "initiators": [b_iqn], "lun": 0,
            "wwn": created["rescanned"][0]["wwn"]}
    assert len(want["wwn"]) == 36
    assert created["actions"] == 1
    assert created["cached"] == [want] and created["rescanned"] == [want]
    assert created["replan"] == 0 and created["same_tree"], created
    assert created["enabled"] == "1"
    assert created["attrs"] == {"authentication": "0", "generate_node_acls": "0",
                                "demo_mode_write_protect": "1"}
    # LIO claims the partition, yet it stays in the inventory: the station keeps it in the pool.
    assert created["still_offered"]
    assert created["left"]["targets"] == [iqn]
    assert [s.split("/")[1] for s in created["left"]["backstores"]] == [f"dvsan_{DEVICE}"]

    host_b = run_py(lab, HOST_B, f"""
        import mmap
        from host_agent.iscsiadm import Iscsiadm
        a = Iscsiadm()
        t0 = time.monotonic()
        found = a.discover({unit_ip!r})
        a.login({iqn!r}, {unit_ip!r})
        a.login({iqn!r}, {unit_ip!r})     # already logged in: still success
        t_login = time.monotonic() - t0
        dev = a.wait_for_device({iqn!r}, {unit_ip!r}, lun=0, timeout=60)
        sessions = [s.target_iqn for s in a.sessions()]
        size = int(open(f"/sys/class/block/{{os.path.basename(dev)}}/size").read()) * 512
        data = os.urandom({MiB})
        wbuf, rbuf = mmap.mmap(-1, {MiB}), mmap.mmap(-1, {MiB})   # page-aligned for O_DIRECT
        wbuf.write(data)
        fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
        try:
            os.pwritev(fd, [wbuf], {MiB}); os.fsync(fd)
            os.preadv(fd, [rbuf], {MiB})
        finally:
            os.close(fd)
        a.logout({iqn!r}, {unit_ip!r})
        a.logout({iqn!r}, {unit_ip!r})    # no session any more: still success
        after = a.sessions()
        a.delete_node({iqn!r}, {unit_ip!r}); a.delete_node({iqn!r}, {unit_ip!r})
        result(found=[t.target_iqn for t in found], dev=dev, size=size, same=bytes(rbuf) == data,
               sessions=sessions, after=len(after), login_s=t_login)
    """)
    assert iqn in host_b["found"]
    assert host_b["dev"].startswith("/dev/sd")
    assert host_b["size"] == 1280 * MiB
    assert host_b["sessions"] == [iqn]
    assert host_b["same"], "host-b read back something else than it wrote"
    assert host_b["after"] == 0

    host_c = run_py(lab, HOST_C, f"""
        from host_agent.iscsiadm import Iscsiadm, IscsiadmError, ISCSI_ERR_LOGIN_AUTH_FAILED
        a = Iscsiadm()
        found = [t.target_iqn for t in a.discover({unit_ip!r})]
        try:
            a.login({iqn!r}, {unit_ip!r})
            rc, msg = 0, "logged in"
        except IscsiadmError as e:
            rc, msg = e.rc, str(e)
        sessions = len(a.sessions())
        a.delete_node({iqn!r}, {unit_ip!r})
        result(found=found, rc=rc, msg=msg, sessions=sessions, want=ISCSI_ERR_LOGIN_AUTH_FAILED)
    """)
    # Sendtargets lists every target whatever the ACLs; the login is what must be refused.
    assert iqn in host_c["found"]
    assert host_c["rc"] == host_c["want"] == 24, host_c
    assert "ISCSI_ERR_LOGIN_AUTH_FAILED" in host_c["msg"]
    assert host_c["sessions"] == 0

    deleted = run_py(lab, UNIT, lio_snippet(lab, f"""
        e = Export(device={DEVICE!r}, target_iqn=target_iqn(UNIT, {DEVICE!r}),
                   initiators=({c_iqn!r},))
        # First change the ACLs in place (host-b out, host-c in), then delete.
        acl_plan = plan([e], lio.actual_exports())
        lio.apply(acl_plan)
        acls = sorted(os.listdir(os.path.join(CFS, "iscsi", e.target_iqn, "tpgt_1", "acls")))
        actions = plan([], lio.actual_exports())
        t0 = time.monotonic(); lio.apply(actions); ms = (time.monotonic() - t0) * 1000
        lio.apply(actions)     # the same plan again: nothing to delete, no error
        result(acl_plan=[type(a).__name__ for a in acl_plan], acls=acls, ms=ms,
               actions=[type(a).__name__ for a in actions],
               cached=[x.to_wire() for x in lio.actual_exports()],
               rescanned=len(Lio(UNIT, PORTAL).actual_exports()), left=ours(UNIT),
               leftovers=Lio(UNIT, PORTAL).leftovers())
    """))
    assert deleted["acl_plan"] == ["SetInitiators"] and deleted["acls"] == [c_iqn]
    assert deleted["actions"] == ["DeleteExport"]
    assert deleted["cached"] == [] and deleted["rescanned"] == 0
    assert deleted["left"] == {"targets": [], "backstores": []}
    assert deleted["leftovers"] == {}
    print(f"\nLIO in {UNIT}: create export {created['ms']:.0f} ms, delete {deleted['ms']:.0f} ms; "
          f"host-b discover+login {host_b['login_s']:.2f} s")


def test_gp_half_made_leftovers_are_reused_or_removed(lab: Any, clean: None) -> None:
    b_iqn = lab.initiator_name(HOST_B)
    out = run_py(lab, UNIT, f"""
        from rtslib_fb import BlockStorageObject, FabricModule, Target, TPG, LUN
        # What a crash halfway through two creates leaves: a lone backstore for vda3, and a
        # target for vda1 with a LUN but never enabled. Both under unit-a's names.
        BlockStorageObject("dvsan_vda3", dev="/dev/vda3")
        t = Target(FabricModule("iscsi"), target_iqn({UNIT!r}, "vda1"))
        LUN(TPG(t, 1), 0, BlockStorageObject("dvsan_vda1", dev="/dev/vda1"))
        from unit_agent.lio import Lio
        lio = Lio({UNIT!r}, {lab.ip(UNIT)!r})
        found = lio.leftovers()
        e3 = Export(device="vda3", target_iqn=target_iqn({UNIT!r}, "vda3"), initiators=({b_iqn!r},))
        lio.apply(plan([e3], lio.actual_exports()))
        result(found=found, actual=[x.to_wire() for x in lio.actual_exports()],
               leftovers=lio.leftovers(), left=ours({UNIT!r}))
    """)
    assert set(out["found"]) == {"dvsan_vda3", f"iqn.2026-11.org.dvsan:{UNIT}:vda1"}, out
    assert "TPG not enabled" in out["found"][f"iqn.2026-11.org.dvsan:{UNIT}:vda1"]
    assert [x["device"] for x in out["actual"]] == ["vda3"]
    assert out["leftovers"] == {}
    assert out["left"]["targets"] == [f"iqn.2026-11.org.dvsan:{UNIT}:vda3"]
    assert [s.split("/")[1] for s in out["left"]["backstores"]] == ["dvsan_vda3"]


def test_ep_failed_steps_are_raised_together_and_leave_nothing(lab: Any, clean: None) -> None:
    out = run_py(lab, UNIT, lio_snippet(lab, f"""
        from dvsan.errors import AdapterError
        bad = [CreateExport(Export(device="vdz9", target_iqn=target_iqn(UNIT, "vdz9"))),
               CreateExport(Export(device="vda1", target_iqn="iqn.2026-11.org.dvsan:unit-z:vda1")),
               CreateExport(Export(device="vda2", target_iqn=target_iqn(UNIT, "vda2"),
                                   initiators=({lab.initiator_name(HOST_B)!r},)))]
        try:
            lio.apply(bad)
            errors = []
        except ExceptionGroup as eg:
            errors = [(type(x).__name__, str(x)) for x in eg.exceptions]
            assert all(isinstance(x, AdapterError) for x in eg.exceptions)
        result(errors=errors, actual=[x.device for x in lio.actual_exports()], left=ours(UNIT),
               foreign=os.path.isdir(os.path.join(CFS, "iscsi",
                                                  "iqn.2026-11.org.dvsan:unit-z:vda1")))
    """))
    assert len(out["errors"]) == 2, out
    assert "no such block device" in out["errors"][0][1]
    assert "not under this unit's prefix" in out["errors"][1][1]
    # The good action in the same batch still happened; the failed ones left nothing behind.
    assert out["actual"] == ["vda2"]
    assert out["left"]["targets"] == [f"iqn.2026-11.org.dvsan:{UNIT}:vda2"]
    assert not out["foreign"]
