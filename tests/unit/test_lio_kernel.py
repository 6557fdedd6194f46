"""unit_agent.lio against a fake kernel: a configfs-like tree in a temporary directory that a fake
rtslib writes the way LIO lays it out (targets, TPGs, LUN links, ACLs with CHAP, portals, block
backstores whose `info` says ACTIVATED while a LUN links them). What the adapter makes is read
back by the adapter itself (`rescan`, a fresh `Lio` as after a restart): an export must come back
whole, a leftover must be named and pruned, a backstore in use must never be removed."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest

from dvsan.errors import AdapterError, InvalidInput
from dvsan.model import Export
from dvsan.reconcile import CreateExport, DeleteExport, SetInitiators
from unit_agent import lio

UNIT = "unit-a"
PREFIX = "iqn.2026-11.org.dvsan:unit-a:"
IQN = PREFIX + "vda2"
IQN3 = PREFIX + "vda3"
FOREIGN = "iqn.2026-11.org.dvsan:unit-b:vda2"
H1 = "iqn.2026-11.org.example:host-1"
H2 = "iqn.2026-11.org.example:host-2"
SECRET = "s3cret-s3cret-0123"
WWN = "5e4d0001-0000-4000-8000-000000000002"


def write(p: Path, text: str) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text + "\n")


def read(p: Path) -> str:
    return p.read_text().strip()


class Kernel:
    """The tree, the block devices that exist, and operations made to fail on purpose."""

    def __init__(self, root: Path) -> None:
        self.root, self.iscsi, self.core = root, root / "iscsi", root / "core"
        self.iscsi.mkdir(parents=True)
        self.core.mkdir()
        self.devices = {"/dev/vda2", "/dev/vda3"}
        self.fail: dict[tuple[Any, ...], Exception] = {}
        self.calls: list[tuple[Any, ...]] = []

    def check(self, *key: Any) -> None:
        self.calls.append(key)
        if key in self.fail:
            raise self.fail[key]

    def mode(self, mode: Any) -> None:
        """rtslib's CFSNode refuses any other mode (rtslib_fb/node.py _create_in_cfs_ine)."""
        if mode not in ("any", "lookup", "create"):
            raise lio.RTSLibError(f"Invalid mode: {mode}")

    def sync(self) -> None:
        """The kernel's own bookkeeping: a backstore is ACTIVATED while a LUN links it."""
        linked = {os.path.realpath(p) for p in self.iscsi.glob("*/tpgt_*/lun/lun_*/*") if p.is_symlink()}
        for so in self.core.glob("iblock_*/*"):
            status = "ACTIVATED" if os.path.realpath(so) in linked else "DEACTIVATED"
            write(so / "info", f"Status: {status}  Max Queue Depth: 0  SectorSize: 512")

    def backstores(self) -> list[str]:
        return sorted(p.name for p in self.core.glob("iblock_*/*"))

    def targets(self) -> list[str]:
        return sorted(p.name for p in self.iscsi.iterdir())

    def backstore(self, name: str, dev: str, serial: str = WWN) -> Path:
        """A backstore made by hand (a leftover), in the next free iblock HBA."""
        i = 0
        while (self.core / f"iblock_{i}").exists():
            i += 1
        so = self.core / f"iblock_{i}" / name
        write(so / "udev_path", dev)
        write(so / "wwn" / "vpd_unit_serial", f"T10 VPD Unit Serial Number: {serial}")
        self.sync()
        return so


K: Kernel


class Fabric:
    def __init__(self, name: str) -> None:
        K.check("FabricModule", name)
        self.path = str(K.iscsi)


class FTarget:
    def __init__(self, fabric: Any, wwn: str, mode: str = "any") -> None:
        K.check("Target", wwn, mode)
        K.mode(mode)
        self.wwn, self.path = wwn, Path(fabric.path, wwn)
        if mode == "lookup" and not self.path.is_dir():
            raise lio.RTSLibNotInCFSError(f"no target {wwn}")
        if mode == "create" and self.path.exists():
            raise lio.RTSLibError(f"target {wwn} exists")
        self.path.mkdir(exist_ok=True)

    def delete(self) -> None:
        K.check("delete target", self.wwn)
        shutil.rmtree(self.path)
        K.sync()


class FTPG:
    def __init__(self, target: FTarget, tag: int, mode: str = "any") -> None:
        K.check("TPG", target.wwn, tag, mode)
        K.mode(mode)
        self.path = target.path / f"tpgt_{tag}"
        if mode == "lookup" and not self.path.is_dir():
            raise lio.RTSLibNotInCFSError("no TPG")
        if not self.path.exists():
            write(self.path / "enable", "0")
            for attr, value in {"generate_node_acls": "0", "demo_mode_write_protect": "1",
                                "authentication": "1"}.items():     # the kernel's defaults
                write(self.path / "attrib" / attr, value)
            for d in ("acls", "lun", "np"):
                (self.path / d).mkdir()

    def set_attribute(self, name: str, value: str) -> None:
        K.check("set_attribute", name, value)
        write(self.path / "attrib" / name, value)

    @property
    def enable(self) -> bool:
        return read(self.path / "enable") == "1"

    @enable.setter
    def enable(self, value: bool) -> None:
        K.check("enable", value)
        write(self.path / "enable", "1" if value else "0")


class FLUN:
    def __init__(self, tpg: FTPG, lun: int, storage_object: Any = None) -> None:
        K.check("LUN", lun, "create" if storage_object is not None else "lookup")
        self.path = tpg.path / "lun" / f"lun_{lun}"
        if storage_object is None:
            if not self.path.is_dir():
                raise lio.RTSLibNotInCFSError("no LUN")
            return
        self.path.mkdir()
        os.symlink(storage_object.path, self.path / "storage")
        K.sync()


def FPortal(tpg: FTPG, ip: str, port: int, mode: str = "any") -> None:
    K.check("NetworkPortal", ip, port, mode)
    K.check("portal of", tpg.path.parent.name)
    K.mode(mode)
    (tpg.path / "np" / (f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")).mkdir()


class FACL:
    _files: ClassVar[dict[str, str]] = {"chap_userid": "userid", "chap_password": "password",
              "chap_mutual_userid": "userid_mutual", "chap_mutual_password": "password_mutual"}
    name: str
    path: str

    def __init__(self, tpg: FTPG, name: str, mode: str = "any") -> None:
        K.check("NodeACL", name, mode)
        K.mode(mode)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "path", str(tpg.path / "acls" / name))
        p = Path(self.path)
        if mode == "lookup" and not p.is_dir():
            raise lio.RTSLibNotInCFSError(f"no ACL {name}")
        if mode == "create" and p.exists():
            raise lio.RTSLibError(f"ACL {name} exists")
        if not p.exists():
            for f in self._files.values():
                write(p / "auth" / f, "")
            write(p / "info", "No active iSCSI Session for Initiator Endpoint: " + name)

    def __setattr__(self, attr: str, value: Any) -> None:
        K.check("set", self.name, attr)               # never the secret itself
        write(Path(self.path) / "auth" / self._files[attr], value)

    def delete(self) -> None:
        K.check("delete ACL", self.name)
        shutil.rmtree(self.path)


def FMappedLUN(acl: FACL, mapped_lun: int, tpg_lun: FLUN) -> None:
    K.check("MappedLUN", acl.name, mapped_lun)
    d = Path(acl.path) / f"lun_{mapped_lun}"
    d.mkdir()
    os.symlink(tpg_lun.path, d / "link")


class FHBA:
    def __init__(self, path: Path) -> None:
        self.path = path

    def delete(self) -> None:
        K.check("delete HBA", self.path.name)
        self.path.rmdir()


class FBlock:
    def __init__(self, name: str, dev: str | None = None, wwn: str | None = None) -> None:
        found = sorted(K.core.glob(f"iblock_*/{name}"))
        if dev is None:
            K.check("BlockStorageObject", name, "lookup")
            if not found:
                raise lio.RTSLibNotInCFSError(f"no storage object {name}")
            self._path = found[0]
        else:
            K.check("BlockStorageObject", name, dev, wwn)
            if found:
                raise lio.RTSLibError(f"storage object {name} exists")
            self._path = K.backstore(name, dev, wwn or "0f0f0f0f-aaaa-4bbb-8ccc-dddddddddddd")
        self._backstore = FHBA(self._path.parent)

    @property
    def path(self) -> str:
        return str(self._path)

    @property
    def udev_path(self) -> str:
        return read(self._path / "udev_path")

    @property
    def wwn(self) -> str:
        return read(self._path / "wwn" / "vpd_unit_serial").rsplit(": ", 1)[1]

    @property
    def status(self) -> str:
        K.check("status", self._path.name)
        return lio._info_field(self._path / "info", "Status").lower()  # type: ignore[union-attr]

    def is_configured(self) -> bool:
        return True


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Kernel:
    global K
    K = Kernel(tmp_path / "config" / "target")
    monkeypatch.setattr(lio, "CONFIGFS_TARGET", str(K.root))
    monkeypatch.setattr(lio, "DBROOT", str(tmp_path / "etc" / "target"))
    monkeypatch.setattr(lio, "RTSRoot", lambda: K.check("RTSRoot"))
    for name, fake in {"FabricModule": Fabric, "Target": FTarget, "TPG": FTPG, "LUN": FLUN,
                       "NetworkPortal": FPortal, "NodeACL": FACL, "MappedLUN": FMappedLUN,
                       "BlockStorageObject": FBlock}.items():
        monkeypatch.setattr(lio, name, fake)
    real_rmdir, real_is_block = Path.rmdir, Path.is_block_device

    def rmdir(self: Path) -> None:
        # configfs: removing an item's directory removes its attribute files with it
        if self.is_relative_to(K.core) and self.parent.parent == K.core:
            K.check("rmdir", self.name)
            shutil.rmtree(self)
            return
        real_rmdir(self)

    def is_block_device(self: Path) -> bool:
        return str(self) in K.devices if str(self).startswith("/dev/") else real_is_block(self)

    monkeypatch.setattr(Path, "rmdir", rmdir)
    monkeypatch.setattr(Path, "is_block_device", is_block_device)
    return K


def export(device: str = "vda2", *initiators: str, **over: Any) -> Export:
    fields: dict[str, Any] = {"device": device, "target_iqn": PREFIX + device,
                              "initiators": tuple(initiators or (H1,)), "lun": 0, "wwn": WWN}
    return Export(**{**fields, **over})


def opened(portal_ip: str = "10.0.0.1") -> lio.Lio:
    return lio.Lio(UNIT, portal_ip)


def made(*exports: Export) -> lio.Lio:
    agent = opened()
    agent.apply([CreateExport(e) for e in exports])
    return agent


def failures(agent: lio.Lio, actions: list[Any]) -> list[str]:
    with pytest.raises(ExceptionGroup) as e:
        agent.apply(actions)
    assert e.value.message == f"{len(e.value.exceptions)} LIO operation(s) failed on unit unit-a"
    assert all(isinstance(x, AdapterError) for x in e.value.exceptions)
    return [str(x) for x in e.value.exceptions]


# --- opening LIO -------------------------------------------------------------------------------
def test_gp_opening_lio_makes_its_dbroot_and_finds_nothing_on_a_fresh_kernel(tmp_path: Path, kernel: Kernel) -> None:
    (tmp_path / "etc").mkdir()
    agent = lio.Lio(UNIT, "10.0.0.1", "3261")  # type: ignore[arg-type]
    assert (tmp_path / "etc" / "target").is_dir()
    assert (agent.unit, agent.prefix, agent.portal_ip, agent.portal_port) == (UNIT, PREFIX, "10.0.0.1", 3261)
    assert kernel.calls[:2] == [("RTSRoot",), ("FabricModule", "iscsi")]
    assert agent.actual_exports() == [] and agent.leftovers() == {}
    lio.Lio(UNIT, "10.0.0.1")                      # the directory exists already: fine


@pytest.mark.parametrize("where", [("RTSRoot",), ("FabricModule", "iscsi")])
def test_ep_lio_that_cannot_be_opened_says_so(kernel: Kernel, where: tuple[str, ...]) -> None:
    kernel.fail[where] = lio.RTSLibError("configfs not mounted")
    with pytest.raises(AdapterError) as e:
        opened()
    assert str(e.value) == "cannot open LIO (configfs, target_core_mod): configfs not mounted"
    assert isinstance(e.value.__cause__, lio.RTSLibError)


def test_ep_a_bad_unit_name_is_refused_before_lio_is_touched(kernel: Kernel) -> None:
    with pytest.raises(InvalidInput, match="invalid name 'Unit A'"):
        lio.Lio("Unit A", "10.0.0.1")
    assert kernel.calls == []


def test_ep_an_unreadable_configfs_is_an_adapter_error(kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = opened()
    (kernel.iscsi / IQN).mkdir()

    def denied(path: Any) -> list[str]:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(lio.os, "listdir", denied)
    with pytest.raises(AdapterError, match="^cannot read LIO's configfs: .*Permission denied"):
        agent.rescan()
    with pytest.raises(AdapterError, match="^cannot list LIO's iSCSI targets: .*Permission denied"):
        agent.actual_exports()


# --- making exports and reading them back ------------------------------------------------------
@pytest.mark.parametrize("chap", [{}, {"chap_user": "host-user", "chap_secret": SECRET},
                                  {"chap_user": "host-user", "chap_secret": SECRET,
                                   "mutual_user": "unit-user", "mutual_secret": "unit-s3cret-4567"}])
def test_gp_an_export_made_reads_back_whole_after_a_restart(kernel: Kernel, chap: dict[str, str]) -> None:
    want = export("vda2", H2, H1, **chap)
    agent = made(want)
    held = export("vda2", H1, H2, **chap)                 # initiators sorted
    assert agent.actual_exports() == [held]
    again = opened()                                      # the agent restarted: configfs is the record
    assert again.actual_exports() == [held] and again.leftovers() == {}
    assert again.rescan() == [held]
    tpg = kernel.iscsi / IQN / "tpgt_1"
    assert read(tpg / "attrib" / "authentication") == ("1" if chap else "0")
    assert (read(tpg / "attrib" / "generate_node_acls"), read(tpg / "attrib" / "demo_mode_write_protect")) == ("0", "1")
    assert read(tpg / "enable") == "1"
    assert kernel.calls.index(("enable", True)) > max(i for i, c in enumerate(kernel.calls) if c[0] == "MappedLUN")
    assert sorted(p.name for p in (tpg / "np").iterdir()) == ["10.0.0.1:3260"]
    for h in (H1, H2):
        assert read(tpg / "acls" / h / "auth" / "password") == chap.get("chap_secret", "")
        assert read(tpg / "acls" / h / "auth" / "password_mutual") == chap.get("mutual_secret", "")
    assert kernel.backstores() == ["dvsan_vda2"]
    assert ("BlockStorageObject", "dvsan_vda2", "/dev/vda2", WWN) in kernel.calls


def test_gp_an_export_without_a_wwn_takes_the_kernels_serial(kernel: Kernel) -> None:
    agent = made(export(wwn=""))
    assert ("BlockStorageObject", "dvsan_vda2", "/dev/vda2", None) in kernel.calls
    assert agent.actual_exports()[0].wwn == "0f0f0f0f-aaaa-4bbb-8ccc-dddddddddddd" == opened().actual_exports()[0].wwn


def test_gp_an_export_made_twice_changes_nothing_the_second_time(kernel: Kernel) -> None:
    agent = made(export())
    n = len(kernel.calls)
    agent.apply([CreateExport(export())])
    assert [c for c in kernel.calls[n:] if c[0] not in ("status",)] == []
    assert agent.actual_exports() == [export()]


def test_gp_an_export_asked_again_with_other_hosts_only_changes_its_acls(kernel: Kernel) -> None:
    agent = made(export("vda2", H1))
    n = len(kernel.calls)
    agent.apply([CreateExport(export("vda2", H2))])
    new = kernel.calls[n:]
    assert ("delete ACL", H1) in new and ("NodeACL", H2, "any") in new
    assert not [c for c in new if c[-1] == "create" or c[0] in ("delete target", "rmdir")]
    assert agent.actual_exports() == [export("vda2", H2)] == opened().actual_exports()


def test_gp_an_export_asked_again_on_another_lun_is_remade(kernel: Kernel) -> None:
    agent = made(export())
    agent.apply([CreateExport(export(lun=3))])
    assert agent.actual_exports() == [export(lun=3)] == opened().actual_exports()
    assert ("delete target", IQN) in kernel.calls and kernel.backstores() == ["dvsan_vda2"]


def test_gp_a_host_added_in_place_keeps_the_lun_and_gets_the_chap_credentials(kernel: Kernel) -> None:
    chap = {"chap_user": "host-user", "chap_secret": SECRET}
    agent = made(export("vda2", H1, **chap))
    agent.apply([SetInitiators(export("vda2", H1, H2, **chap), add=(H2,), remove=())])
    assert agent.actual_exports() == [export("vda2", H1, H2, **chap)] == opened().actual_exports()
    assert read(kernel.iscsi / IQN / "tpgt_1" / "acls" / H2 / "auth" / "password") == SECRET


def test_gp_a_host_whose_acl_already_maps_the_lun_is_not_mapped_twice(kernel: Kernel) -> None:
    agent = made(export("vda2", H1))
    agent.apply([SetInitiators(export("vda2", H1), add=(H1,), remove=())])
    assert [c for c in kernel.calls if c[0] == "MappedLUN"] == [("MappedLUN", H1, 0)]
    assert agent.actual_exports() == [export("vda2", H1)]


def test_ep_a_host_change_on_a_target_gone_from_the_kernel_is_an_error(kernel: Kernel) -> None:
    agent = made(export("vda2", H1))
    shutil.rmtree(kernel.iscsi / IQN)
    errs = failures(agent, [SetInitiators(export("vda2", H2), add=(H2,), remove=(H1,))])
    assert errs[0] == f"cannot open target {IQN}: no target {IQN}"


def test_ep_a_host_that_cannot_be_added_is_not_counted_as_held(kernel: Kernel) -> None:
    agent = made(export("vda2", H1))
    kernel.fail[("NodeACL", H2, "any")] = lio.RTSLibError("ACL quota")
    errs = failures(agent, [SetInitiators(export("vda2", H1, H2), add=(H2,), remove=())])
    assert errs == [f"cannot add initiator {H2} to {IQN}: ACL quota"]
    assert agent._exports[IQN].initiators == (H1,)


# --- failures while making an export: nothing half-made is left --------------------------------
@pytest.mark.parametrize("step", [("NodeACL", H1, "create"), ("enable", True), ("MappedLUN", H1, 0)])
def test_ep_a_failed_create_is_undone_whole(kernel: Kernel, step: tuple[Any, ...]) -> None:
    kernel.fail[step] = lio.RTSLibError("boom")
    agent = opened()
    assert failures(agent, [CreateExport(export())]) == [f"cannot create export {IQN} of /dev/vda2: boom"]
    assert kernel.targets() == [] and kernel.backstores() == []
    assert agent.actual_exports() == [] and agent.leftovers() == {}
    del kernel.fail[step]
    agent.apply([CreateExport(export())])                 # the next push makes it
    assert opened().actual_exports() == [export()]


def test_ep_a_device_that_is_not_a_block_device_is_refused(kernel: Kernel) -> None:
    kernel.devices.clear()
    agent = opened()
    assert failures(agent, [CreateExport(export())]) == ["cannot export /dev/vda2: no such block device"]
    assert kernel.targets() == [] and kernel.backstores() == []


def test_ep_a_device_the_kernel_will_not_open_is_refused(kernel: Kernel) -> None:
    kernel.fail[("BlockStorageObject", "dvsan_vda2", "/dev/vda2", WWN)] = OSError(16, "Device or resource busy")
    errs = failures(opened(), [CreateExport(export())])
    assert errs == ["cannot create block backstore dvsan_vda2 on /dev/vda2: [Errno 16] Device or resource busy"]
    assert kernel.targets() == []


def test_ep_a_backstore_lookup_that_fails_is_an_error(kernel: Kernel) -> None:
    kernel.fail[("BlockStorageObject", "dvsan_vda2", "lookup")] = lio.RTSLibError("EIO")
    errs = failures(opened(), [CreateExport(export())])
    assert errs[0] == "cannot look up backstore dvsan_vda2: EIO"
    assert kernel.targets() == []


def test_gp_a_leftover_backstore_that_fits_is_reused(kernel: Kernel, caplog: pytest.LogCaptureFixture) -> None:
    kernel.backstore("dvsan_vda2", "/dev/vda2")
    agent = opened()
    assert agent.leftovers() == {"dvsan_vda2": "backstore not used by any LUN (status DEACTIVATED)"}
    with caplog.at_level(logging.INFO, logger="unit_agent.lio"):
        agent.apply([CreateExport(export())])
    assert not [c for c in kernel.calls if c[0] == "BlockStorageObject" and len(c) == 4]
    assert "LIO: reusing leftover backstore dvsan_vda2 of /dev/vda2" in caplog.messages
    assert agent.leftovers() == {} and kernel.backstores() == ["dvsan_vda2"]
    assert opened().actual_exports() == [export()]


@pytest.mark.parametrize("dev, serial", [("/dev/vda3", WWN), ("/dev/vda2", "0b0b0b0b-0000-4000-8000-000000000000")])
def test_gp_a_leftover_backstore_that_does_not_fit_is_remade(kernel: Kernel, dev: str, serial: str) -> None:
    kernel.backstore("dvsan_vda2", dev, serial)
    agent = opened()
    agent.apply([CreateExport(export())])
    assert ("BlockStorageObject", "dvsan_vda2", "/dev/vda2", WWN) in kernel.calls
    assert opened().actual_exports() == [export()] and agent.leftovers() == {}


def test_gp_a_leftover_backstore_is_reused_whatever_its_serial_when_none_is_asked(kernel: Kernel) -> None:
    kernel.backstore("dvsan_vda2", "/dev/vda2", "0b0b0b0b-0000-4000-8000-000000000000")
    agent = opened()
    agent.apply([CreateExport(export(wwn=""))])
    assert agent.actual_exports()[0].wwn == "0b0b0b0b-0000-4000-8000-000000000000"


def test_ep_a_backstore_another_lun_uses_is_never_taken(kernel: Kernel) -> None:
    so = kernel.backstore("dvsan_vda2", "/dev/vda2")
    lun = kernel.iscsi / "iqn.2026-11.org.example:by-hand" / "tpgt_1" / "lun" / "lun_0"
    lun.mkdir(parents=True)
    os.symlink(so, lun / "storage")
    kernel.sync()
    agent = opened()
    assert agent.leftovers() == {}
    assert failures(agent, [CreateExport(export())]) == [
        "backstore dvsan_vda2 of /dev/vda2 is already used by another LUN"]
    assert kernel.backstores() == ["dvsan_vda2"] and (lun / "storage").is_symlink()


def test_ep_a_leftover_backstore_that_cannot_be_read_is_an_error(kernel: Kernel) -> None:
    kernel.backstore("dvsan_vda2", "/dev/vda2")
    agent = opened()
    kernel.fail[("status", "dvsan_vda2")] = lio.RTSLibError("EIO")
    errs = failures(agent, [CreateExport(export())])
    assert errs[0] == "cannot read backstore dvsan_vda2: EIO"


def test_ep_a_leftover_backstore_that_cannot_be_removed_stops_the_create(kernel: Kernel) -> None:
    kernel.backstore("dvsan_vda2", "/dev/vda3")
    agent = opened()
    kernel.fail[("rmdir", "dvsan_vda2")] = OSError(16, "Device or resource busy")
    errs = failures(agent, [CreateExport(export())])
    assert errs[0] == "cannot delete backstore dvsan_vda2: [Errno 16] Device or resource busy"
    assert kernel.targets() == []
    assert agent.leftovers() == {"dvsan_vda2": "delete failed: [Errno 16] Device or resource busy"}


def test_ep_a_half_made_target_in_the_way_is_removed_first(kernel: Kernel) -> None:
    (kernel.iscsi / IQN / "tpgt_1").mkdir(parents=True)
    agent = opened()
    agent._broken.clear()                                 # as if it appeared after the scan
    agent.apply([CreateExport(export())])
    assert opened().actual_exports() == [export()]
    assert kernel.calls.index(("delete target", IQN)) < kernel.calls.index(("Target", IQN, "create"))


def test_ep_a_half_made_target_that_cannot_be_removed_stops_the_create(kernel: Kernel) -> None:
    (kernel.iscsi / IQN / "tpgt_1").mkdir(parents=True)
    agent = opened()
    kernel.fail[("delete target", IQN)] = lio.RTSLibError("busy")
    errs = failures(agent, [CreateExport(export())])
    assert errs[0] == f"cannot delete target {IQN}: busy"
    assert ("Target", IQN, "create") not in kernel.calls and kernel.backstores() == []


def test_ep_an_export_on_another_device_that_cannot_be_removed_is_not_remade(kernel: Kernel) -> None:
    agent = made(export())
    kernel.fail[("delete target", IQN)] = lio.RTSLibError("busy")
    errs = failures(agent, [CreateExport(export(lun=2))])
    assert errs[0] == f"cannot delete target {IQN}: busy"
    assert ("LUN", 2, "create") not in kernel.calls


# --- deleting ----------------------------------------------------------------------------------
def test_gp_deleting_an_export_removes_its_target_and_its_backstore(kernel: Kernel) -> None:
    agent = made(export("vda2"), export("vda3"))
    agent.apply([DeleteExport(export("vda2"))])
    assert kernel.targets() == [IQN3] and kernel.backstores() == ["dvsan_vda3"]
    assert not (kernel.core / "iblock_0").exists()         # its HBA went with it
    assert agent.actual_exports() == [export("vda3")] == opened().actual_exports()
    assert agent.leftovers() == {}
    agent.apply([DeleteExport(export("vda2"))])            # already gone: nothing to do
    assert agent.actual_exports() == [export("vda3")]


def test_ep_a_target_that_cannot_be_deleted_is_kept_as_a_leftover_and_retried(kernel: Kernel) -> None:
    agent = made(export())
    kernel.fail[("delete target", IQN)] = lio.RTSLibError("busy")
    errs = failures(agent, [DeleteExport(export())])
    assert errs[0] == f"cannot delete target {IQN}: busy"
    assert errs[1] == "backstore dvsan_vda2 is still used by a LUN: not deleting it"
    assert agent.leftovers() == {IQN: "delete failed: busy"} and kernel.backstores() == ["dvsan_vda2"]
    assert agent.actual_exports() == [export()]
    del kernel.fail[("delete target", IQN)]
    agent.apply([])                                       # the next apply prunes it
    assert kernel.targets() == [] and kernel.backstores() == [] and agent.leftovers() == {}


@pytest.mark.parametrize("where, why", [
    (("status", "dvsan_vda2"), "cannot read backstore dvsan_vda2: EIO"),
    (("BlockStorageObject", "dvsan_vda2", "lookup"), "cannot look up backstore dvsan_vda2: EIO"),
    (("rmdir", "dvsan_vda2"), "cannot delete backstore dvsan_vda2: EIO"),
    (("delete HBA", "iblock_0"), "cannot delete backstore dvsan_vda2: EIO"),
])
def test_ep_a_backstore_that_cannot_be_deleted_is_an_error_and_the_export_goes(
        kernel: Kernel, where: tuple[str, ...], why: str) -> None:
    agent = made(export())
    kernel.fail[where] = lio.RTSLibError("EIO")
    errs = failures(agent, [DeleteExport(export())])
    assert errs[0] == why
    assert kernel.targets() == [] and agent.actual_exports() == []


def test_ep_a_backstore_still_linked_is_never_deleted(kernel: Kernel) -> None:
    agent = made(export())
    errs: list[AdapterError] = []
    agent._delete_backstore("dvsan_vda2", errs)
    assert [str(e) for e in errs] == ["backstore dvsan_vda2 is still used by a LUN: not deleting it"]
    assert kernel.backstores() == ["dvsan_vda2"] and ("rmdir", "dvsan_vda2") not in kernel.calls
    assert opened().actual_exports() == [export()]


def test_ep_exports_outside_this_units_prefix_are_never_touched(kernel: Kernel) -> None:
    agent = made(export())
    other = Export(device="vda2", target_iqn=FOREIGN, initiators=(H1,))
    n = len(kernel.calls)
    errs = failures(agent, [DeleteExport(other), SetInitiators(other, add=(H2,), remove=(H1,))])
    refusal = f"target {FOREIGN} is not under this unit's prefix {PREFIX}: refusing to touch it"
    assert errs == [refusal, refusal]
    assert not [c for c in kernel.calls[n:] if c[0] != "status"]
    assert opened().actual_exports() == [export()]


def test_ep_an_unknown_action_is_an_error_and_the_rest_still_runs(kernel: Kernel) -> None:
    agent = opened()
    errs = failures(agent, ["resize vda2", CreateExport(export())])
    assert errs == ["unknown reconcile action 'resize vda2'"]
    assert agent.actual_exports() == [export()]


def test_gp_each_action_is_logged_with_its_outcome(kernel: Kernel, caplog: pytest.LogCaptureFixture) -> None:
    agent = opened()
    kernel.fail[("NodeACL", H1, "create")] = lio.RTSLibError("boom")
    with caplog.at_level(logging.INFO, logger="unit_agent.lio"), pytest.raises(ExceptionGroup):
        agent.apply([CreateExport(export("vda2")), CreateExport(export("vda3", H2))])
    lines = [m for m in caplog.messages if m.startswith("LIO: CreateExport")]
    assert [m.rsplit(" in ", 1)[0] for m in lines] == [f"LIO: CreateExport {IQN} failed",
                                                      f"LIO: CreateExport {IQN3} done"]
    assert all(m.endswith(" ms") for m in lines)


# --- leftovers, portals, sessions, changes behind the agent's back ------------------------------
def half_made(kernel: Kernel, iqn: str = IQN, *, backstore: str | None = None) -> Path:
    """A target of ours whose TPG was never enabled (an agent crashed while making it)."""
    tpg = kernel.iscsi / iqn / "tpgt_1"
    write(tpg / "enable", "0")
    if backstore:
        so = kernel.backstore(backstore, "/dev/" + backstore.removeprefix("dvsan_"))
        (tpg / "lun" / "lun_0").mkdir(parents=True)
        os.symlink(so, tpg / "lun" / "lun_0" / "storage")
        kernel.sync()
    return tpg


def test_ep_leftovers_found_at_start_are_named_and_pruned_and_nothing_else_is(
        kernel: Kernel, caplog: pytest.LogCaptureFixture) -> None:
    half_made(kernel, IQN3, backstore="dvsan_vda3")
    kernel.backstore("dvsan_vdb9", "/dev/vdb9")
    kernel.backstore("mydisk", "/dev/sdz")                # not ours: never touched
    (kernel.iscsi / FOREIGN / "tpgt_1").mkdir(parents=True)   # another unit's target: never read
    (kernel.iscsi / (PREFIX + "vda4")).mkdir()            # a target with no TPG at all
    (kernel.iscsi / (PREFIX + "vda5") / "tpgt_1").mkdir(parents=True)
    write(kernel.iscsi / (PREFIX + "vda5") / "tpgt_1" / "enable", "1")
    for attr, value in lio.TPG_ATTRIBUTES.items():
        write(kernel.iscsi / (PREFIX + "vda5") / "tpgt_1" / "attrib" / attr, value)
    with caplog.at_level(logging.INFO, logger="unit_agent.lio"):
        agent = made(export("vda2"))
    assert agent.leftovers() == {}
    assert kernel.targets() == sorted([FOREIGN, IQN])
    assert kernel.backstores() == ["dvsan_vda2", "mydisk"]
    assert "LIO: 0 exports of unit unit-a, 4 leftovers" in caplog.messages
    assert f"LIO: removing leftover target {IQN3} (incomplete target: TPG not enabled)" in caplog.messages
    assert ("LIO: removing leftover backstore dvsan_vdb9 (backstore not used by any LUN (status DEACTIVATED))"
            in caplog.messages)
    assert (f"LIO: removing leftover target {PREFIX}vda4 (incomplete target: TPGs [], expected only tpgt_1)"
            in caplog.messages)
    assert next(m for m in caplog.messages if "vda5" in m).startswith(
        f"LIO: removing leftover target {PREFIX}vda5 (unreadable target: ")
    assert f"LIO: removing leftover backstore dvsan_vda3 (backstore of deleted target {IQN3})" in caplog.messages


def test_gp_the_leftovers_before_they_are_pruned(kernel: Kernel) -> None:
    half_made(kernel, IQN3, backstore="dvsan_vda3")
    kernel.backstore("dvsan_vdb9", "/dev/vdb9")
    agent = opened()
    assert agent.leftovers() == {IQN3: "incomplete target: TPG not enabled",
                                 "dvsan_vdb9": "backstore not used by any LUN (status DEACTIVATED)"}
    agent.apply([])
    assert agent.leftovers() == {} and kernel.targets() == [] and kernel.backstores() == []


def test_gp_a_target_deleted_whose_backstore_another_lun_still_uses_leaves_it_alone(kernel: Kernel) -> None:
    tpg = half_made(kernel, IQN3, backstore="dvsan_vda3")
    other = kernel.iscsi / "iqn.2026-11.org.example:by-hand" / "tpgt_1" / "lun" / "lun_0"
    other.mkdir(parents=True)
    os.symlink(os.path.realpath(tpg / "lun" / "lun_0" / "storage"), other / "storage")
    agent = opened()
    agent.apply([])
    assert IQN3 not in kernel.targets() and kernel.backstores() == ["dvsan_vda3"]
    assert agent.leftovers() == {}


@pytest.mark.parametrize("portal_ip, dirname", [("10.0.0.2", "10.0.0.2:3260"), ("fe80::2", "[fe80::2]:3260")])
def test_gp_a_unit_back_on_a_new_address_adds_its_portal_beside_the_old(
        kernel: Kernel, caplog: pytest.LogCaptureFixture, portal_ip: str, dirname: str) -> None:
    made(export("vda2"), export("vda3"))
    agent = opened(portal_ip)
    with caplog.at_level(logging.INFO, logger="unit_agent.lio"):
        agent.apply([])
    for iqn in (IQN, IQN3):
        assert sorted(p.name for p in (kernel.iscsi / iqn / "tpgt_1" / "np").iterdir()) == \
            sorted(["10.0.0.1:3260", dirname])
        assert f"LIO: added portal {dirname} to {iqn} (kept 10.0.0.1:3260)" in caplog.messages
    n = len(kernel.calls)
    agent.apply([])                                       # now present: not added twice
    assert not [c for c in kernel.calls[n:] if c[0] == "NetworkPortal"]
    assert opened(portal_ip).actual_exports() == [export("vda2"), export("vda3")]


def test_ep_a_portal_that_cannot_be_added_is_an_error_and_tried_again(kernel: Kernel) -> None:
    made(export())
    agent = opened("10.0.0.2")
    kernel.fail[("NetworkPortal", "10.0.0.2", 3260, "create")] = lio.RTSLibError("address in use")
    assert failures(agent, []) == [f"cannot add portal 10.0.0.2:3260 to {IQN}: address in use"]
    del kernel.fail[("NetworkPortal", "10.0.0.2", 3260, "create")]
    agent.apply([])
    assert (kernel.iscsi / IQN / "tpgt_1" / "np" / "10.0.0.2:3260").is_dir()


def test_gp_sessions_count_only_logged_in_initiators_of_our_own_targets(kernel: Kernel) -> None:
    agent = made(export("vda2", H1, H2))
    assert agent.sessions(IQN) == 0
    write(kernel.iscsi / IQN / "tpgt_1" / "acls" / H2 / "info",
          "InitiatorName: " + H2 + "\nLIO Session ID: 3   ISID: 0x400001370000  TARGET_SESSION_STATE_LOGGED_IN")
    assert agent.sessions(IQN) == 1
    (kernel.iscsi / IQN / "tpgt_1" / "acls" / H1 / "info").unlink()   # unreadable: not counted
    assert agent.sessions(IQN) == 1
    assert agent.sessions(IQN3) == 0                       # no such target
    (kernel.iscsi / FOREIGN / "tpgt_1" / "acls" / H1).mkdir(parents=True)
    write(kernel.iscsi / FOREIGN / "tpgt_1" / "acls" / H1 / "info", "LIO Session ID: 1")
    assert agent.sessions(FOREIGN) == 0                    # not ours: never read


def test_ep_sessions_that_cannot_be_listed_are_an_error(kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = made(export())

    def denied(path: Any) -> list[str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(lio.os, "listdir", denied)
    with pytest.raises(AdapterError) as e:
        agent.sessions(IQN)
    assert str(e.value) == f"cannot list the ACLs of {IQN}: [Errno 13] Permission denied"


def test_gp_targets_changed_behind_the_agents_back_are_read_again(
        kernel: Kernel, caplog: pytest.LogCaptureFixture) -> None:
    agent = made(export("vda2"), export("vda3"))
    (kernel.iscsi / FOREIGN).mkdir()                      # another unit's: no reason to read again
    with caplog.at_level(logging.WARNING, logger="unit_agent.lio"):
        assert agent.actual_exports() == [export("vda2"), export("vda3")]
        assert caplog.messages == []
        shutil.rmtree(kernel.iscsi / IQN3)                 # an operator's targetcli
        kernel.sync()
        assert agent.actual_exports() == [export("vda2")]
    assert caplog.messages == [("LIO: this unit's targets changed behind the agent (1 held, 2 expected): "
                                "reading configfs again")]
    half_made(kernel, IQN3)
    assert agent.actual_exports() == [export("vda2")]
    assert agent.leftovers() == {IQN3: "incomplete target: TPG not enabled",
                                 "dvsan_vda3": "backstore not used by any LUN (status DEACTIVATED)"}


def test_gp_a_missing_fabric_directory_means_no_targets(kernel: Kernel) -> None:
    agent = opened()
    shutil.rmtree(kernel.iscsi)
    assert agent.actual_exports() == [] and agent.rescan() == []


# --- reading: the reasons a target of ours is not a whole export -------------------------------
def _break(kernel: Kernel, how: str) -> None:
    tpg = kernel.iscsi / IQN / "tpgt_1"
    if how == "two TPGs":
        (kernel.iscsi / IQN / "tpgt_2").mkdir()
    elif how == "no portal":
        shutil.rmtree(tpg / "np")
    elif how == "empty portals":
        (tpg / "np" / "10.0.0.1:3260").rmdir()
    elif how == "two LUNs":
        (tpg / "lun" / "lun_1").mkdir()
    elif how == "no storage":
        (tpg / "lun" / "lun_0" / "storage").unlink()
    elif how == "foreign storage":
        so = kernel.backstore("mydisk", "/dev/vda2")
        (tpg / "lun" / "lun_0" / "storage").unlink()
        os.symlink(so, tpg / "lun" / "lun_0" / "storage")
    elif how == "fileio storage":
        so = kernel.core / "fileio_0" / "dvsan_vda2"
        write(so / "udev_path", "/dev/vda2")
        (tpg / "lun" / "lun_0" / "storage").unlink()
        os.symlink(so, tpg / "lun" / "lun_0" / "storage")
    elif how == "unmapped":
        (tpg / "acls" / H1 / "lun_0" / "link").unlink()
    elif how == "disabled":
        write(tpg / "enable", "0")
    elif how == "no enable":
        (tpg / "enable").unlink()


@pytest.mark.parametrize("how, why", [
    ("two TPGs", "incomplete target: TPGs ['tpgt_1', 'tpgt_2'], expected only tpgt_1"),
    ("no portal", "incomplete target: no network portal"),
    ("empty portals", "incomplete target: no network portal"),
    ("two LUNs", "incomplete target: LUNs ['lun_0', 'lun_1'], expected exactly one"),
    ("no storage", "incomplete target: LUN 0 has no storage object"),
    ("foreign storage", ("incomplete target: LUN 0 is backed by iblock_1/mydisk ('/dev/vda2'), "
                         "not a dvsan block backstore")),
    ("fileio storage", ("incomplete target: LUN 0 is backed by fileio_0/dvsan_vda2 ('/dev/vda2'), "
                        "not a dvsan block backstore")),
    ("unmapped", f"incomplete target: ACL {H1} has no mapped LUN 0"),
    ("disabled", "incomplete target: TPG not enabled"),
    ("no enable", "incomplete target: TPG not enabled"),
])
def test_ep_a_target_that_is_not_a_whole_export_is_a_named_leftover(kernel: Kernel, how: str, why: str) -> None:
    made(export("vda2", H1, H2))
    _break(kernel, how)
    agent = opened()
    assert agent.actual_exports() == [] and agent.leftovers()[IQN] == why


def test_gp_an_export_on_another_lun_number_reads_back_with_it(kernel: Kernel) -> None:
    made(export(lun=7))
    assert opened().actual_exports() == [export(lun=7)]


def test_gp_an_export_whose_target_went_behind_the_agents_back_is_forgotten_once_its_backstore_goes(
        kernel: Kernel) -> None:
    agent = made(export("vda2"), export("vda3"))
    shutil.rmtree(kernel.iscsi / IQN)
    kernel.sync()
    kernel.fail[("rmdir", "dvsan_vda2")] = lio.RTSLibError("EIO")
    failures(agent, [DeleteExport(export("vda2"))])
    assert IQN in agent._exports, "forgotten while its backstore is still there"
    del kernel.fail[("rmdir", "dvsan_vda2")]
    agent.apply([DeleteExport(export("vda2"))])
    assert set(agent._exports) == {IQN3} and kernel.backstores() == ["dvsan_vda3"]


def test_gp_a_backstore_already_gone_or_in_use_again_is_no_longer_a_leftover(kernel: Kernel) -> None:
    gone = kernel.backstore("dvsan_vda2", "/dev/vda2")
    used = kernel.backstore("dvsan_vda3", "/dev/vda3")
    agent = opened()
    assert set(agent.leftovers()) == {"dvsan_vda2", "dvsan_vda3"}
    shutil.rmtree(gone.parent)                            # removed by hand
    lun = kernel.iscsi / "iqn.2026-11.org.example:by-hand" / "tpgt_1" / "lun" / "lun_0"
    lun.mkdir(parents=True)
    os.symlink(used, lun / "storage")                     # taken by an operator's own target
    kernel.sync()
    assert failures(agent, []) == ["backstore dvsan_vda3 is still used by a LUN: not deleting it"]
    assert agent.leftovers() == {} and kernel.backstores() == ["dvsan_vda3"]
    agent.apply([])


def test_gp_a_half_made_target_already_gone_is_no_longer_a_leftover(kernel: Kernel) -> None:
    half_made(kernel, IQN3)
    agent = opened()
    assert set(agent.leftovers()) == {IQN3}
    shutil.rmtree(kernel.iscsi / IQN3)
    agent.apply([])
    assert agent.leftovers() == {}


def test_gp_a_leftover_backstore_that_appeared_after_the_scan_is_replaced(kernel: Kernel) -> None:
    agent = opened()
    kernel.backstore("dvsan_vda2", "/dev/vda3")           # not of this device: remade
    agent.apply([CreateExport(export())])
    assert opened().actual_exports() == [export()] and agent.leftovers() == {}


def test_gp_an_export_pruned_after_a_failed_delete_can_be_made_again(kernel: Kernel) -> None:
    agent = made(export())
    kernel.fail[("delete target", IQN)] = lio.RTSLibError("busy")
    failures(agent, [DeleteExport(export())])
    del kernel.fail[("delete target", IQN)]
    agent.apply([])                                       # pruned: the target is gone
    assert kernel.targets() == []
    agent.apply([CreateExport(export())])                 # and it is made again, not taken as held
    assert kernel.targets() == [IQN] and opened().actual_exports() == [export()]


def test_gp_a_host_change_keeps_the_lun_and_every_credential(kernel: Kernel) -> None:
    chap = {"chap_user": "host-user", "chap_secret": SECRET, "mutual_user": "unit-user",
            "mutual_secret": "unit-s3cret-4567"}
    agent = made(export("vda2", H1, lun=5, **chap))
    agent.apply([SetInitiators(export("vda2", H1, H2, lun=5, **chap), add=(H2,), remove=())])
    assert agent.actual_exports() == [export("vda2", H1, H2, lun=5, **chap)] == opened().actual_exports()
    assert read(kernel.iscsi / IQN / "tpgt_1" / "acls" / H2 / "auth" / "password_mutual") == "unit-s3cret-4567"


H3 = "iqn.2026-11.org.example:host-3"


def test_ep_one_host_that_cannot_be_removed_does_not_keep_the_others(kernel: Kernel) -> None:
    agent = made(export("vda2", H1, H2))
    kernel.fail[("delete ACL", H1)] = lio.RTSLibError("busy")
    errs = failures(agent, [SetInitiators(export("vda2", H3), add=(H2, H3), remove=(H1, H2))])
    assert errs == [f"cannot remove initiator {H1} from {IQN}: busy",
                    f"not adding {H2}, {H3} to {IQN}: removing {H1} failed"]
    assert agent.actual_exports() == [export("vda2", H1)]


def test_ep_every_failed_removal_is_named(kernel: Kernel) -> None:
    agent = made(export("vda2", H1, H2))
    kernel.fail[("delete ACL", H1)] = lio.RTSLibError("busy")
    kernel.fail[("delete ACL", H2)] = lio.RTSLibError("busy")
    errs = failures(agent, [SetInitiators(export("vda2", H3), add=(H3,), remove=(H1, H2))])
    assert errs[-1] == f"not adding {H3} to {IQN}: removing {H1}, {H2} failed"


def test_ep_one_host_that_cannot_be_added_does_not_keep_the_others_out(kernel: Kernel) -> None:
    agent = made(export("vda2", H1))
    kernel.fail[("NodeACL", H2, "any")] = lio.RTSLibError("ACL quota")
    failures(agent, [SetInitiators(export("vda2", H1, H2, H3), add=(H2, H3), remove=())])
    assert agent.actual_exports() == [export("vda2", H1, H3)]


def test_gp_the_warning_about_targets_changed_counts_the_leftovers_too(
        kernel: Kernel, caplog: pytest.LogCaptureFixture) -> None:
    agent = made(export("vda2"))
    half_made(kernel, IQN3)
    agent.rescan()
    shutil.rmtree(kernel.iscsi / IQN)
    with caplog.at_level(logging.WARNING, logger="unit_agent.lio"):
        agent.actual_exports()
    assert caplog.messages == [("LIO: this unit's targets changed behind the agent (1 held, 2 expected): "
                                "reading configfs again")]


@pytest.mark.parametrize("hosts", [(H1, H2), ()])
def test_gp_an_export_asked_again_with_a_host_more_or_fewer_gets_just_that(kernel: Kernel, hosts: tuple[str, ...]) -> None:
    agent = made(export("vda2", H1))
    want = export("vda2", *hosts) if hosts else export("vda2", initiators=())
    agent.apply([CreateExport(want)])
    assert agent.actual_exports() == [want] == opened().actual_exports()
    assert ("delete target", IQN) not in kernel.calls


def test_ep_a_host_that_cannot_be_added_to_a_held_export_is_an_error(kernel: Kernel) -> None:
    agent = made(export("vda2", H1))
    kernel.fail[("NodeACL", H2, "any")] = lio.RTSLibError("ACL quota")
    assert failures(agent, [CreateExport(export("vda2", H1, H2))]) == [
        f"cannot add initiator {H2} to {IQN}: ACL quota"]
    assert agent.actual_exports() == [export("vda2", H1)]


def test_gp_a_half_made_target_removed_by_hand_before_the_create_does_not_take_the_new_one_with_it(
        kernel: Kernel) -> None:
    half_made(kernel, IQN)
    agent = opened()
    assert set(agent.leftovers()) == {IQN}
    shutil.rmtree(kernel.iscsi / IQN)
    agent.apply([CreateExport(export())])
    assert kernel.targets() == [IQN] and agent.leftovers() == {}
    assert opened().actual_exports() == [export()]


def test_gp_a_fitting_backstore_that_appeared_after_the_scan_is_reused(kernel: Kernel) -> None:
    agent = opened()
    kernel.backstore("dvsan_vda2", "/dev/vda2")
    agent.apply([CreateExport(export())])
    assert not [c for c in kernel.calls if c[0] == "BlockStorageObject" and len(c) == 4]
    assert opened().actual_exports() == [export()]


@pytest.mark.parametrize("undo, why, left", [
    (("delete target", IQN), f"cannot delete target {IQN}: busy", {IQN: "delete failed: busy"}),
    (("rmdir", "dvsan_vda2"), "cannot delete backstore dvsan_vda2: busy", {"dvsan_vda2": "delete failed: busy"}),
])
def test_ep_a_failed_create_whose_undo_fails_too_says_both_and_keeps_the_leftover(
        kernel: Kernel, undo: tuple[str, ...], why: str, left: dict[str, str]) -> None:
    agent = opened()
    kernel.fail[("enable", True)] = lio.RTSLibError("boom")
    kernel.fail[undo] = lio.RTSLibError("busy")
    errs = failures(agent, [CreateExport(export())])
    assert errs[:2] == [f"cannot create export {IQN} of /dev/vda2: boom", why]
    assert agent.leftovers() == left and agent.actual_exports() == []


def test_gp_every_export_missing_the_portal_gets_it_whatever_comes_before(kernel: Kernel) -> None:
    made(export("vda3"))                                  # made while the unit was on 10.0.0.1
    agent = opened("10.0.0.2")
    agent.apply([CreateExport(export("vda2"))])           # vda2 has 10.0.0.2 from its creation
    assert sorted(p.name for p in (kernel.iscsi / IQN3 / "tpgt_1" / "np").iterdir()) == \
        ["10.0.0.1:3260", "10.0.0.2:3260"]


def test_ep_a_portal_that_fails_on_one_export_is_still_added_to_the_next(kernel: Kernel) -> None:
    made(export("vda2"), export("vda3"))
    agent = opened("10.0.0.2")
    kernel.fail[("portal of", IQN)] = lio.RTSLibError("address in use")
    assert failures(agent, []) == [f"cannot add portal 10.0.0.2:3260 to {IQN}: address in use"]
    assert (kernel.iscsi / IQN3 / "tpgt_1" / "np" / "10.0.0.2:3260").is_dir()


def test_ep_a_portal_is_never_added_to_a_target_gone_behind_the_agents_back(kernel: Kernel) -> None:
    made(export())
    agent = opened("10.0.0.2")
    shutil.rmtree(kernel.iscsi / IQN)
    assert failures(agent, []) == [f"cannot add portal 10.0.0.2:3260 to {IQN}: no target {IQN}"]
    assert kernel.targets() == []


# --- monitoring: I/O totals and logged-in initiators of each held export ----------------------
def _stats(kernel: Kernel, device: str, read_mib: str, write_mib: str, cmds: str) -> None:
    lu = next(kernel.core.glob(f"iblock_*/dvsan_{device}")) / "statistics" / "scsi_lu"
    for name, value in (("read_mbytes", read_mib), ("write_mbytes", write_mib), ("num_cmds", cmds)):
        write(lu / name, value)


def test_gp_io_counters_are_each_held_exports_totals_in_bytes(kernel: Kernel) -> None:
    agent = made(export("vda2"), export("vda3"))
    _stats(kernel, "vda2", "3", "5", "42")
    _stats(kernel, "vda3", "0", "1", "7")
    assert agent.io_counters() == {"vda2": (3 << 20, 5 << 20, 42), "vda3": (0, 1 << 20, 7)}


@pytest.mark.parametrize("how, why", [
    ("no statistics", "invalid literal for int() with base 10: ''"),
    ("garbled", "invalid literal for int() with base 10: 'x'"),
    ("backstore gone", "gone"),
])
def test_ep_an_export_whose_counters_cannot_be_read_is_left_out_and_the_rest_read(
        kernel: Kernel, how: str, why: str, caplog: pytest.LogCaptureFixture) -> None:
    agent = made(export("vda2"), export("vda3"))
    _stats(kernel, "vda3", "3", "5", "42")
    if how == "garbled":
        _stats(kernel, "vda2", "1", "x", "7")
    elif how == "backstore gone":
        _stats(kernel, "vda2", "1", "1", "7")
        kernel.fail[("BlockStorageObject", "dvsan_vda2", "lookup")] = lio.RTSLibNotInCFSError("gone")
    with caplog.at_level(logging.DEBUG, logger="unit_agent.lio"):
        assert agent.io_counters() == {"vda3": (3 << 20, 5 << 20, 42)}
    assert caplog.messages == [f"LIO: no statistics for vda2: {why}"]


def test_gp_session_counts_are_each_held_exports_logged_in_initiators(kernel: Kernel) -> None:
    agent = made(export("vda2", H1, H2), export("vda3", H1))
    write(kernel.iscsi / IQN / "tpgt_1" / "acls" / H2 / "info", "LIO Session ID: 3  TARGET_SESSION_STATE_LOGGED_IN")
    write(kernel.iscsi / IQN3 / "tpgt_1" / "acls" / H1 / "info", "LIO Session ID: 4  TARGET_SESSION_STATE_LOGGED_IN")
    (kernel.iscsi / IQN / "tpgt_1" / "acls" / H1 / "info").unlink()
    assert agent.session_counts() == {"vda2": 1, "vda3": 1}
    shutil.rmtree(kernel.iscsi / IQN)                     # gone meanwhile: left out, the rest counted
    assert agent.session_counts() == {"vda3": 1}


def test_ep_monitoring_gives_up_while_a_configfs_change_holds_the_lock(
        kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = made(export("vda2"))
    _stats(kernel, "vda2", "1", "2", "3")
    monkeypatch.setattr(lio, "STATS_LOCK_WAIT", 0.01)
    with agent._lock:
        assert agent.io_counters() == {} and agent.session_counts() == {}
    assert agent.io_counters() == {"vda2": (1 << 20, 2 << 20, 3)} and agent.session_counts() == {"vda2": 0}
    assert not agent._lock.locked()
