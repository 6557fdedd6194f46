"""unit_agent.lio without a kernel: its ACL and CHAP handling. Reading is checked on a configfs-like
tree in a temporary directory; writing against a fake rtslib that records what was set."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from dvsan.errors import AdapterError
from dvsan.model import Export
from dvsan.reconcile import CreateExport, SetInitiators
from unit_agent import lio

UNIT = "unit-a"
IQN = "iqn.2026-11.org.dvsan:unit-a:vda2"
H1 = "iqn.2026-11.org.example:host-1"
H2 = "iqn.2026-11.org.example:host-2"
SECRET = "s3cret-s3cret-0123"


def bare_lio(fabric: Path | None = None) -> lio.Lio:
    """A Lio object without opening the kernel's LIO (its __init__ needs configfs)."""
    obj = object.__new__(lio.Lio)
    obj.unit, obj.prefix = UNIT, lio.unit_target_prefix(UNIT)
    obj.portal_ip, obj.portal_port = "10.0.0.1", 3260
    obj._lock = lio.threading.Lock()
    obj._exports, obj._broken, obj._orphans, obj._portals = {}, {}, {}, {}

    class Fabric:
        path = str(fabric or "/nonexistent")

    obj._fabric = Fabric()  # type: ignore[assignment]
    return obj


def write(p: Path, text: str) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text + "\n")


def target_tree(root: Path, acls: dict[str, tuple[str, str]], auth: str, *,
                attrs: dict[str, str] | None = None, map_lun: bool = True) -> Path:
    """A whole export of /dev/vda2 as configfs shows it: acls maps initiator -> (userid, password)."""
    so = root / "core" / "iblock_0" / "dvsan_vda2"
    write(so / "udev_path", "/dev/vda2")
    write(so / "wwn" / "vpd_unit_serial", "T10 VPD Unit Serial Number: 5e4d-0001")
    tpg = root / "iscsi" / IQN / "tpgt_1"
    write(tpg / "enable", "1")
    for k, v in {**lio.TPG_ATTRIBUTES, "authentication": auth, **(attrs or {})}.items():
        write(tpg / "attrib" / k, v)
    (tpg / "np" / "10.0.0.1:3260").mkdir(parents=True)
    (tpg / "lun" / "lun_0").mkdir(parents=True)
    os.symlink(so, tpg / "lun" / "lun_0" / "storage")
    (tpg / "acls").mkdir()
    for name, (user, password) in acls.items():
        write(tpg / "acls" / name / "auth" / "userid", user)
        write(tpg / "acls" / name / "auth" / "password", password)
        (tpg / "acls" / name / "lun_0").mkdir()
        if map_lun:
            os.symlink(tpg / "lun" / "lun_0", tpg / "acls" / name / "lun_0" / "mapped")
    return root / "iscsi" / IQN


# --- reading an export back from configfs ------------------------------------------------------
def test_gp_an_export_with_chap_reads_back_whole(tmp_path: Path) -> None:
    tdir = target_tree(tmp_path, {H2: ("host-user", SECRET), H1: ("host-user", SECRET)}, "1")
    agent = bare_lio(tmp_path / "iscsi")
    got = agent._read_export(tdir)
    assert got == Export(device="vda2", target_iqn=IQN, initiators=(H1, H2), lun=0, wwn="5e4d-0001",
                         chap_user="host-user", chap_secret=SECRET)
    assert got.chap_secret == SECRET
    assert agent._portals == {IQN: {"10.0.0.1:3260"}}


def test_gp_an_export_without_chap_reads_back_with_empty_credentials(tmp_path: Path) -> None:
    tdir = target_tree(tmp_path, {H1: ("", "")}, "0")
    got = bare_lio()._read_export(tdir)
    assert (got.initiators, got.chap_user, got.chap_secret) == ((H1,), "", "")
    bare = target_tree(tmp_path / "no-acl", {}, "0")
    assert bare_lio()._read_export(bare).initiators == ()


@pytest.mark.parametrize("acls, auth, why", [
    ({H1: ("host-user", SECRET), H2: ("host-user", "another-secret-99")}, "1",
     "its ACLs hold different CHAP credentials"),
    ({H1: ("host-user", SECRET), H2: ("", "")}, "1", "its ACLs hold different CHAP credentials"),
    ({H1: ("host-user", SECRET)}, "0", "TPG authentication=0 with CHAP credentials"),
    ({H1: ("", "")}, "1", "TPG authentication=1 without CHAP credentials"),
    ({}, "1", "TPG authentication=1 without CHAP credentials"),
])
def test_ep_an_export_whose_acls_and_authentication_disagree_is_incomplete(
        tmp_path: Path, acls: dict[str, tuple[str, str]], auth: str, why: str) -> None:
    tdir = target_tree(tmp_path, acls, auth)
    with pytest.raises(lio._Incomplete) as e:
        bare_lio()._read_export(tdir)
    assert str(e.value) == why


@pytest.mark.parametrize("attr, value", [("generate_node_acls", "1"), ("demo_mode_write_protect", "0")])
def test_ep_a_target_in_demo_mode_is_incomplete(tmp_path: Path, attr: str, value: str) -> None:
    tdir = target_tree(tmp_path, {H1: ("", "")}, "0", attrs={attr: value})
    with pytest.raises(lio._Incomplete) as e:
        bare_lio()._read_export(tdir)
    want = lio.TPG_ATTRIBUTES[attr]
    assert str(e.value) == f"TPG attribute {attr}={value}, expected {want}"


def test_ep_an_acl_without_the_mapped_lun_is_incomplete(tmp_path: Path) -> None:
    tdir = target_tree(tmp_path, {H1: ("", "")}, "0", map_lun=False)
    with pytest.raises(lio._Incomplete) as e:
        bare_lio()._read_export(tdir)
    assert str(e.value) == f"ACL {H1} has no mapped LUN 0"


def test_gp_the_demo_mode_guard_is_what_lio_must_hold() -> None:
    assert lio.TPG_ATTRIBUTES == {"generate_node_acls": "0", "demo_mode_write_protect": "1"}


# --- pure helpers ------------------------------------------------------------------------------
def test_gp_authentication_follows_the_chap_user() -> None:
    assert lio._auth_value(Export(device="vda2", target_iqn=IQN, chap_user="host-user",
                                  chap_secret=SECRET)) == "1"
    assert lio._auth_value(Export(device="vda2", target_iqn=IQN)) == "0"


def test_gp_portal_directory_names() -> None:
    assert lio._portal_dirname("10.0.0.1", 3260) == "10.0.0.1:3260"
    assert lio._portal_dirname("fe80::1", 3261) == "[fe80::1]:3261"
    assert lio._portal_dirname("[fe80::1]", 3260) == "[fe80::1]:3260"


@pytest.mark.parametrize("text, serial", [
    ("T10 VPD Unit Serial Number: 5E4D-0001", "5e4d-0001"),
    ("T10 VPD Unit Serial Number: a:b", "b"),
    ("no colon here", ""),
    ("T10 VPD Unit Serial Number: not/ours", ""),
    ("T10 VPD Unit Serial Number: " + "a" * 37, ""),
])
def test_gp_unit_serial_is_read_only_when_it_is_one_dvsan_makes(tmp_path: Path, text: str, serial: str) -> None:
    write(tmp_path / "wwn" / "vpd_unit_serial", text)
    assert lio._unit_serial(tmp_path) == serial


def test_gp_info_fields_and_unreadable_files(tmp_path: Path) -> None:
    write(tmp_path / "info", "Status: ACTIVATED  Max Queue Depth: 0  SectorSize: 512")
    assert lio._info_field(tmp_path / "info", "Status") == "ACTIVATED"
    assert lio._info_field(tmp_path / "info", "SectorSize") == "512"
    assert lio._info_field(tmp_path / "info", "Missing") is None
    write(tmp_path / "last", "Status:")
    assert lio._info_field(tmp_path / "last", "Status") is None
    assert lio._info_field(tmp_path / "nope", "Status") is None
    assert lio._read(tmp_path / "nope") is None


def test_gp_linked_backstores_are_only_dvsan_block_ones(tmp_path: Path) -> None:
    ours = tmp_path / "core" / "iblock_0" / "dvsan_vda2"
    other = tmp_path / "core" / "fileio_1" / "dvsan_file"
    foreign = tmp_path / "core" / "iblock_2" / "mydisk"
    for d in (ours, other, foreign):
        d.mkdir(parents=True)
    tdir = tmp_path / "iscsi" / IQN
    for i, d in enumerate((ours, other, foreign)):
        (tdir / "tpgt_1" / "lun" / f"lun_{i}").mkdir(parents=True)
        os.symlink(d, tdir / "tpgt_1" / "lun" / f"lun_{i}" / "so")
    (tdir / "tpgt_1" / "lun" / "lun_0" / "plain").mkdir()
    assert lio._linked_backstores(tdir) == [ours]


# --- writing through a fake rtslib -------------------------------------------------------------
class Rec:
    """What the fake rtslib was asked to do, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.acls: dict[str, FakeACL] = {}
        self.fail_delete: set[str] = set()


class FakeTPG:
    def __init__(self, rec: Rec, target: Any, tag: int, mode: str = "any") -> None:
        self.rec = rec
        self.attrs: dict[str, str] = {}
        rec.calls.append(("TPG", tag, mode))
        rec.tpg = self  # type: ignore[attr-defined]

    def set_attribute(self, name: str, value: str) -> None:
        self.attrs[name] = value

    @property
    def enable(self) -> bool:
        return False

    @enable.setter
    def enable(self, value: bool) -> None:
        self.rec.calls.append(("enable", value))


class FakeACL:
    def __init__(self, rec: Rec, tpg: Any, name: str, mode: str) -> None:
        self.rec, self.name, self.path = rec, name, f"/nonexistent/acls/{name}"
        rec.calls.append(("NodeACL", name, mode))
        if mode == "lookup" and name in rec.fail_delete:
            raise lio.RTSLibError(f"cannot delete {name}: busy")
        if mode == "lookup" and name not in rec.acls:
            raise lio.RTSLibNotInCFSError("no such ACL")
        rec.acls.setdefault(name, self)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("chap_"):
            self.rec.calls.append(("set", self.name, name, value))
        object.__setattr__(self, name, value)

    def delete(self) -> None:
        self.rec.calls.append(("delete ACL", self.name))
        self.rec.acls.pop(self.name, None)


@pytest.fixture
def fake_rtslib(monkeypatch: pytest.MonkeyPatch) -> Rec:
    rec = Rec()
    def target(fabric: Any, iqn: str, mode: str) -> str:
        rec.calls.append(("Target", iqn, mode))
        return iqn

    def tpg_lun(tpg: Any, lun: int, so: Any = None) -> str:
        rec.calls.append(("LUN", lun))
        return f"lun_{lun}"

    monkeypatch.setattr(lio, "Target", target)
    monkeypatch.setattr(lio, "TPG", lambda target, tag, mode="any": FakeTPG(rec, target, tag, mode))
    monkeypatch.setattr(lio, "LUN", tpg_lun)
    monkeypatch.setattr(lio, "NetworkPortal",
                        lambda tpg, ip, port, mode: rec.calls.append(("NetworkPortal", ip, port, mode)))
    monkeypatch.setattr(lio, "NodeACL", lambda tpg, name, mode: FakeACL(rec, tpg, name, mode))
    monkeypatch.setattr(lio, "MappedLUN",
                        lambda acl, lun, tpg_lun: rec.calls.append(("MappedLUN", acl.name, lun, tpg_lun)))
    return rec


def creating(fake_rtslib: Rec, export: Export, monkeypatch: pytest.MonkeyPatch) -> lio.Lio:
    agent = bare_lio()

    class SO:
        path = "/nonexistent/core/iblock_0/dvsan_vda2"

    monkeypatch.setattr(agent, "_ensure_backstore", lambda device, wwn="": SO())
    monkeypatch.setattr(agent, "_ensure_portals", lambda errors: None)
    monkeypatch.setattr(agent, "_prune", lambda errors: None)
    agent.apply([CreateExport(export)])
    return agent


def test_gp_an_export_with_chap_is_made_with_authentication_and_chap_on_every_acl(
        fake_rtslib: Rec, monkeypatch: pytest.MonkeyPatch) -> None:
    export = Export(device="vda2", target_iqn=IQN, initiators=(H2, H1), wwn="5e4d-0001",
                    chap_user="host-user", chap_secret=SECRET)
    agent = creating(fake_rtslib, export, monkeypatch)
    tpg = fake_rtslib.tpg  # type: ignore[attr-defined]
    assert tpg.attrs == {"generate_node_acls": "0", "demo_mode_write_protect": "1", "authentication": "1"}
    sets = [c for c in fake_rtslib.calls if c[0] == "set"]
    assert sets == [("set", H2, "chap_userid", "host-user"), ("set", H2, "chap_password", SECRET),
                    ("set", H1, "chap_userid", "host-user"), ("set", H1, "chap_password", SECRET)]
    assert [c for c in fake_rtslib.calls if c[0] == "MappedLUN"] == [("MappedLUN", H2, 0, "lun_0"),
                                                                    ("MappedLUN", H1, 0, "lun_0")]
    assert ("NetworkPortal", "10.0.0.1", 3260, "create") in fake_rtslib.calls
    assert fake_rtslib.calls[-1] == ("enable", True)
    assert agent._exports[IQN] == Export(device="vda2", target_iqn=IQN, initiators=(H1, H2), wwn="5e4d-0001",
                                         chap_user="host-user", chap_secret=SECRET)
    assert agent._exports[IQN].chap_secret == SECRET
    assert agent._portals == {IQN: {"10.0.0.1:3260"}}


def test_gp_an_export_without_chap_sets_no_credentials_and_no_authentication(
        fake_rtslib: Rec, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = creating(fake_rtslib, Export(device="vda2", target_iqn=IQN, initiators=(H1,)), monkeypatch)
    assert fake_rtslib.tpg.attrs["authentication"] == "0"  # type: ignore[attr-defined]
    assert fake_rtslib.tpg.attrs["generate_node_acls"] == "0"  # type: ignore[attr-defined]
    assert not [c for c in fake_rtslib.calls if c[0] == "set"]
    assert ("NodeACL", H1, "create") in fake_rtslib.calls
    assert agent._exports[IQN].chap_user == ""


def test_ep_an_export_outside_this_units_prefix_is_refused(fake_rtslib: Rec) -> None:
    agent = bare_lio()
    foreign = Export(device="vda2", target_iqn="iqn.2026-11.org.dvsan:unit-b:vda2")
    with pytest.raises(ExceptionGroup) as e:
        agent.apply([CreateExport(foreign)])
    assert [str(x) for x in e.value.exceptions] == [(
        "target iqn.2026-11.org.dvsan:unit-b:vda2 is not under this unit's prefix "
        "iqn.2026-11.org.dvsan:unit-a:: refusing to touch it")]
    assert e.value.message == "1 LIO operation(s) failed on unit unit-a"
    assert fake_rtslib.calls == []


def _held(agent: lio.Lio, fake_rtslib: Rec, *initiators: str, chap: bool = True) -> Export:
    have = Export(device="vda2", target_iqn=IQN, initiators=tuple(initiators), wwn="5e4d-0001",
                  chap_user="host-user" if chap else "", chap_secret=SECRET if chap else "")
    agent._exports[IQN] = have
    agent._portals[IQN] = {"10.0.0.1:3260"}
    for i in initiators:
        fake_rtslib.acls[i] = object.__new__(FakeACL)
    return have


def test_gp_a_host_added_to_an_export_gets_its_chap_credentials(fake_rtslib: Rec) -> None:
    agent = bare_lio()
    have = _held(agent, fake_rtslib, H1)
    errs: list[AdapterError] = []
    agent._set_initiators(have, (H2,), (H1,), errs)
    assert errs == []
    assert ("delete ACL", H1) in fake_rtslib.calls
    assert ("NodeACL", H2, "any") in fake_rtslib.calls
    assert [c for c in fake_rtslib.calls if c[0] == "set"] == [
        ("set", H2, "chap_userid", "host-user"), ("set", H2, "chap_password", SECRET)]
    assert ("MappedLUN", H2, 0, "lun_0") in fake_rtslib.calls
    assert agent._exports[IQN] == Export(device="vda2", target_iqn=IQN, initiators=(H2,), wwn="5e4d-0001",
                                         chap_user="host-user", chap_secret=SECRET)


def test_ep_a_host_is_not_added_while_the_old_one_could_not_be_removed(fake_rtslib: Rec) -> None:
    agent = bare_lio()
    have = _held(agent, fake_rtslib, H1)
    fake_rtslib.fail_delete.add(H1)
    errs: list[AdapterError] = []
    agent._set_initiators(have, (H2,), (H1,), errs)
    assert [str(e) for e in errs] == [f"cannot remove initiator {H1} from {IQN}: cannot delete {H1}: busy",
                                      f"not adding {H2} to {IQN}: removing {H1} failed"]
    assert ("NodeACL", H2, "any") not in fake_rtslib.calls
    assert agent._exports[IQN].initiators == (H1,)


def test_gp_removing_a_host_whose_acl_is_already_gone_counts_as_removed(fake_rtslib: Rec) -> None:
    agent = bare_lio()
    have = _held(agent, fake_rtslib, H1)
    fake_rtslib.acls.clear()
    errs: list[AdapterError] = []
    agent._set_initiators(have, (), (H1,), errs)
    assert errs == [] and agent._exports[IQN].initiators == ()


def test_ep_changing_the_hosts_of_an_export_not_held_is_an_error(fake_rtslib: Rec) -> None:
    agent = bare_lio()
    errs: list[AdapterError] = []
    agent._set_initiators(Export(device="vda2", target_iqn=IQN), (H1,), (), errs)
    assert [str(e) for e in errs] == [f"cannot change initiators of {IQN}: no such export on unit unit-a"]
    assert fake_rtslib.calls == []


def test_gp_recreating_a_held_export_with_other_hosts_only_changes_its_acls(
        fake_rtslib: Rec, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = bare_lio()
    _held(agent, fake_rtslib, H1)
    monkeypatch.setattr(agent, "_ensure_portals", lambda errors: None)
    monkeypatch.setattr(agent, "_prune", lambda errors: None)
    agent.apply([SetInitiators(Export(device="vda2", target_iqn=IQN, initiators=(H1, H2), wwn="5e4d-0001",
                                      chap_user="host-user", chap_secret=SECRET), add=(H2,), remove=())])
    assert not [c for c in fake_rtslib.calls if c[0] in ("Target", "TPG") and c[-1] == "create"]
    assert agent._exports[IQN].initiators == (H1, H2)
