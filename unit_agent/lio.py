"""LIO through rtslib-fb: the one module on a unit that reads and writes the target's configfs."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from rtslib_fb import (
    LUN,
    TPG,
    BlockStorageObject,
    FabricModule,
    MappedLUN,
    NetworkPortal,
    NodeACL,
    RTSLibError,
    RTSLibNotInCFSError,
    RTSRoot,
    Target,
)
from rtslib_fb import tcm as _rtslib_tcm

from dvsan.errors import AdapterError, DvsanError
from dvsan.model import Export
from dvsan.naming import BACKSTORE_PREFIX, backstore_name, check_unit_name, unit_target_prefix
from dvsan.reconcile import Action, CreateExport, DeleteExport, SetInitiators

log = logging.getLogger(__name__)

CONFIGFS_TARGET = "/sys/kernel/config/target"
# NOTE: pip's rtslib-fb 2.2 refuses to set LIO's dbroot unless this directory exists. We never
# write a config file there: the station's database is the record of what a unit exports.
DBROOT = "/etc/target"
TPG_TAG = 1
STATS_LOCK_WAIT = 2.0     # seconds io_counters() waits for a configfs change before it gives up
# Set explicitly on every TPG we make. The kernel's default for `authentication` is 1 (CHAP
# required); we set it ourselves, 1 for an export with CHAP credentials and 0 without
# (`_auth_value`). `generate_node_acls` 1 would be demo mode: any initiator gets every LUN.
TPG_ATTRIBUTES: dict[str, str] = {
    "generate_node_acls": "0",
    "demo_mode_write_protect": "1",
}
_SERIAL_RE = re.compile(r"^[0-9a-f-]{1,36}$")
# Exceptions that rtslib (and pyudev under it) raise for a failed configfs or device operation.
_LIO_ERRORS = (RTSLibError, OSError, ValueError, LookupError)


class _Incomplete(Exception):
    """A target under our prefix that is not a whole export (a leftover of a failed attempt)."""


def _adapter_error(message: str, cause: BaseException) -> AdapterError:
    """An AdapterError chained to its cause, ready to be collected into an ExceptionGroup."""
    try:
        raise AdapterError(f"{message}: {cause}") from cause
    except AdapterError as err:
        return err


def _portal_dirname(ip: str, port: int) -> str:
    """The configfs directory name of a network portal ('10.0.0.1:3260', '[fe80::1]:3260')."""
    host = f"[{ip}]" if ":" in ip and not ip.startswith("[") else ip
    return f"{host}:{port}"


class Lio:
    """The exports of one unit in the kernel's LIO target; one instance per unit agent process.

    Reads configfs once at start and keeps what it found in memory, updated by every `apply`
    (rescanning the whole tree per operation does not scale, see PERFORMANCE.md). Only targets
    whose IQN starts with this unit's prefix are ever read or changed.
    """

    def __init__(self, unit: str, portal_ip: str, portal_port: int = 3260) -> None:
        """Open LIO (mounting configfs, loading target_core_mod if needed); read our exports."""
        self.unit = check_unit_name(unit)
        self.prefix = unit_target_prefix(unit)
        self.portal_ip = portal_ip
        self.portal_port = int(portal_port)
        # NOTE: rtslib and targetcli race with themselves on configfs (targetcli-fb PR 140,
        # rtslib-fb issue 179): every configfs write of this process goes through this lock.
        self._lock = threading.Lock()
        self._exports: dict[str, Export] = {}
        self._broken: dict[str, str] = {}     # target IQN -> why it is not a whole export
        self._orphans: dict[str, str] = {}    # backstore name -> why it is a leftover
        self._portals: dict[str, set[str]] = {}  # target IQN -> its portal directory names
        with self._lock:
            try:
                os.makedirs(DBROOT, exist_ok=True)
                RTSRoot()
                self._fabric = FabricModule("iscsi")
            except _LIO_ERRORS as e:
                raise _adapter_error("cannot open LIO (configfs, target_core_mod)", e) from e
            self._scan_or_raise()

    # ---- reading ---------------------------------------------------------------------------

    def actual_exports(self) -> list[Export]:
        """The whole exports of this unit as LIO holds them.

        From the in-memory cache, checked first against the kernel cheaply (one directory listing
        of this unit's targets): when a target of ours appeared or went behind our back (an
        operator's targetcli, a crash), configfs is read again, so the next plan puts it right.
        """
        with self._lock:
            fabric = Path(self._fabric.path)
            try:
                present = {n for n in os.listdir(fabric) if n.startswith(self.prefix)} if fabric.is_dir() else set()
            except OSError as e:
                raise _adapter_error("cannot list LIO's iSCSI targets", e) from e
            if present != set(self._exports) | set(self._broken):
                log.warning("LIO: this unit's targets changed behind the agent (%d held, %d expected): "
                            "reading configfs again", len(present), len(self._exports) + len(self._broken))
                self._scan_or_raise()
            return [self._exports[k] for k in sorted(self._exports)]

    def sessions(self, target_iqn: str) -> int:
        """How many initiators are logged in to a target of ours (0 if it is not there)."""
        if not target_iqn.startswith(self.prefix):
            return 0
        with self._lock:
            acls = Path(self._fabric.path, target_iqn, f"tpgt_{TPG_TAG}", "acls")
            try:
                names = os.listdir(acls)
            except FileNotFoundError:
                return 0
            except OSError as e:
                raise _adapter_error(f"cannot list the ACLs of {target_iqn}", e) from e
            # NOTE: an ACL's `info` starts "No active iSCSI Session" when nobody is logged in
            # (the same test rtslib's NodeACL.session makes).
            return sum(1 for n in names
                       if (info := _read(acls / n / "info")) and not info.startswith("No active"))

    def io_counters(self) -> dict[str, tuple[int, int, int]]:
        """Each held export's I/O totals: device -> (read bytes, write bytes, commands).

        NOTE: rtslib-fb has no accessor for LIO's statistics groups (its PR 124 was never merged):
        the files are read under each backstore's rtslib path, `statistics/scsi_lu/`. The kernel
        counts bytes in whole MiB (`read_mbytes` is the byte count >> 20) and commands of every
        kind together (`num_cmds`). A backstore made anew starts again from zero. An export that
        cannot be read now (removed meanwhile) is left out; so is everything while a configfs
        change holds the lock for more than STATS_LOCK_WAIT (a hung disk): the next round tries again.
        """
        if not self._lock.acquire(timeout=STATS_LOCK_WAIT):
            return {}
        out: dict[str, tuple[int, int, int]] = {}
        try:
            for device in sorted({e.device for e in self._exports.values()}):
                try:
                    so = BlockStorageObject(backstore_name(device))
                    lu = Path(so.path, "statistics", "scsi_lu")
                    read_mib, write_mib, cmds = (int(_read(lu / f) or "") for f in
                                                 ("read_mbytes", "write_mbytes", "num_cmds"))
                except (*_LIO_ERRORS, RTSLibNotInCFSError) as e:
                    log.debug("LIO: no statistics for %s: %s", device, e)
                    continue
                out[device] = (read_mib << 20, write_mib << 20, cmds)
        finally:
            self._lock.release()
        return out

    def session_counts(self) -> dict[str, int]:
        """Each held export's logged-in initiators (device -> count), read like `sessions`; empty
        while a configfs change holds the lock for more than STATS_LOCK_WAIT."""
        if not self._lock.acquire(timeout=STATS_LOCK_WAIT):
            return {}
        out: dict[str, int] = {}
        try:
            for e in self._exports.values():
                acls = Path(self._fabric.path, e.target_iqn, f"tpgt_{TPG_TAG}", "acls")
                try:
                    names = os.listdir(acls)
                except OSError:
                    continue
                out[e.device] = out.get(e.device, 0) + sum(
                    1 for n in names if (info := _read(acls / n / "info")) and not info.startswith("No active"))
        finally:
            self._lock.release()
        return out

    def leftovers(self) -> dict[str, str]:
        """Half-made targets and unused dvsan backstores (name -> reason); `apply` removes them."""
        with self._lock:
            return {**self._broken, **self._orphans}

    def rescan(self) -> list[Export]:
        """Re-read this unit's targets and dvsan backstores from configfs; returns the exports."""
        with self._lock:
            self._scan_or_raise()
            return [self._exports[k] for k in sorted(self._exports)]

    def _scan_or_raise(self) -> None:
        try:
            self._scan()
        except OSError as e:
            raise _adapter_error("cannot read LIO's configfs", e) from e

    def _scan(self) -> None:
        # NOTE: rtslib keeps a process-wide cache of backstore indexes; clear it so that a rescan
        # sees what others (targetcli, a crashed earlier agent) changed.
        _rtslib_tcm.bs_cache.clear()
        self._portals = {}
        exports: dict[str, Export] = {}
        broken: dict[str, str] = {}
        fabric = Path(self._fabric.path)
        names = sorted(n for n in os.listdir(fabric) if n.startswith(self.prefix)) \
            if fabric.is_dir() else []
        for iqn in names:
            try:
                exports[iqn] = self._read_export(fabric / iqn)
            except _Incomplete as e:
                broken[iqn] = f"incomplete target: {e}"
            except (OSError, DvsanError) as e:
                broken[iqn] = f"unreadable target: {e}"
        orphans: dict[str, str] = {}
        for so_dir in sorted(Path(CONFIGFS_TARGET, "core").glob(f"iblock_*/{BACKSTORE_PREFIX}*")):
            status = _info_field(so_dir / "info", "Status")
            if status != "ACTIVATED":
                # Not linked to any LUN (the kernel counts LUN links in export_count).
                orphans[so_dir.name] = f"backstore not used by any LUN (status {status})"
        self._exports, self._broken, self._orphans = exports, broken, orphans
        log.info("LIO: %d exports of unit %s, %d leftovers", len(exports), self.unit,
                 len(broken) + len(orphans))

    def _read_export(self, tdir: Path) -> Export:
        """The Export a target directory holds; raises _Incomplete for anything less than whole."""
        tpgs = sorted(p.name for p in tdir.glob("tpgt_*"))
        if tpgs != [f"tpgt_{TPG_TAG}"]:
            raise _Incomplete(f"TPGs {tpgs}, expected only tpgt_{TPG_TAG}")
        tpg = tdir / f"tpgt_{TPG_TAG}"
        if _read(tpg / "enable") != "1":
            raise _Incomplete("TPG not enabled")
        for attr, want in TPG_ATTRIBUTES.items():
            got = _read(tpg / "attrib" / attr)
            if got != want:
                raise _Incomplete(f"TPG attribute {attr}={got}, expected {want}")
        chap = {(_read(a / "auth" / "userid") or "", _read(a / "auth" / "password") or "",
                 _read(a / "auth" / "userid_mutual") or "", _read(a / "auth" / "password_mutual") or "")
                for a in (tpg / "acls").iterdir()}
        if len(chap) > 1:
            raise _Incomplete("its ACLs hold different CHAP credentials")
        chap_user, chap_secret, mutual_user, mutual_secret = chap.pop() if chap else ("", "", "", "")
        auth = _read(tpg / "attrib" / "authentication")
        if auth != ("1" if chap_user else "0"):
            raise _Incomplete(f"TPG authentication={auth} with{'' if chap_user else 'out'} CHAP credentials")
        # NOTE: any portal will do: a unit that came back on a new address keeps the old portals
        # (hosts may be logged in through them) and `apply` adds the new one beside them.
        portals = sorted(p.name for p in (tpg / "np").iterdir()) if (tpg / "np").is_dir() else []
        if not portals:
            raise _Incomplete("no network portal")
        self._portals[tdir.name] = set(portals)
        luns = sorted(p.name for p in (tpg / "lun").iterdir())
        if len(luns) != 1:
            raise _Incomplete(f"LUNs {luns}, expected exactly one")
        lun_dir = tpg / "lun" / luns[0]
        lun = int(luns[0].split("_", 1)[1])
        links = [p for p in lun_dir.iterdir() if p.is_symlink()]
        if len(links) != 1:
            raise _Incomplete(f"LUN {lun} has no storage object")
        so_dir = Path(os.path.realpath(links[0]))
        udev_path = _read(so_dir / "udev_path") or ""
        device = os.path.basename(udev_path)
        if not so_dir.parent.name.startswith("iblock_") or so_dir.name != backstore_name(device):
            raise _Incomplete(f"LUN {lun} is backed by {so_dir.parent.name}/{so_dir.name} "
                              f"({udev_path!r}), not a dvsan block backstore")
        initiators = []
        for acl in sorted(p.name for p in (tpg / "acls").iterdir()):
            mapped = tpg / "acls" / acl / f"lun_{lun}"
            if not mapped.is_dir() or not any(p.is_symlink() for p in mapped.iterdir()):
                raise _Incomplete(f"ACL {acl} has no mapped LUN {lun}")
            initiators.append(acl)
        wwn = _unit_serial(so_dir)
        return Export(device=device, target_iqn=tdir.name, initiators=tuple(initiators), lun=lun, wwn=wwn,
                      chap_user=chap_user, chap_secret=chap_secret, mutual_user=mutual_user,
                      mutual_secret=mutual_secret)

    # ---- writing ---------------------------------------------------------------------------

    def apply(self, actions: Iterable[Action]) -> None:
        """Carry out reconcile actions, then remove leftovers of earlier failed attempts.

        Every action is tried even when an earlier one fails; all failures are raised together
        as an ExceptionGroup of AdapterError, each chained to the rtslib or OS error behind it.
        """
        errors: list[AdapterError] = []
        with self._lock:
            for action in actions:
                t0, n = time.monotonic(), len(errors)
                if isinstance(action, CreateExport):
                    self._create(action.export, errors)
                elif isinstance(action, DeleteExport):
                    self._delete(action.export, errors)
                elif isinstance(action, SetInitiators):
                    self._set_initiators(action.export, action.add, action.remove, errors)
                else:
                    errors.append(AdapterError(f"unknown reconcile action {action!r}"))
                    continue
                log.info("LIO: %s %s %s in %.0f ms", type(action).__name__,
                         action.export.target_iqn, "failed" if len(errors) > n else "done",
                         (time.monotonic() - t0) * 1000)
            self._ensure_portals(errors)
            self._prune(errors)
        if errors:
            raise ExceptionGroup(f"{len(errors)} LIO operation(s) failed on unit {self.unit}",
                                 errors)

    def _check_ours(self, export: Export) -> None:
        if not export.target_iqn.startswith(self.prefix):
            raise AdapterError(f"target {export.target_iqn} is not under this unit's prefix "
                               f"{self.prefix}: refusing to touch it")

    def _create(self, export: Export, errors: list[AdapterError]) -> None:
        """Make the whole export; a no-op if it exists as asked, ACL changes if only they differ."""
        iqn = export.target_iqn
        try:
            self._check_ours(export)
        except AdapterError as e:
            errors.append(e)
            return
        have = self._exports.get(iqn)
        if have is not None:
            if have.device == export.device and have.lun == export.lun:
                add = tuple(sorted(set(export.initiators) - set(have.initiators)))
                remove = tuple(sorted(set(have.initiators) - set(export.initiators)))
                if add or remove:
                    self._set_initiators(export, add, remove, errors)
                return
            n = len(errors)
            self._delete(have, errors)
            if len(errors) > n:
                return
        if iqn in self._broken or Path(self._fabric.path, iqn).exists():
            # NOTE: a half-made target from a failed earlier attempt: remove it and start over.
            n = len(errors)
            self._delete_target(iqn, errors)
            if len(errors) > n:
                return
        try:
            so = self._ensure_backstore(export.device, export.wwn)
        except AdapterError as e:
            errors.append(e)
            return
        try:
            target = Target(self._fabric, iqn, "create")
            tpg = TPG(target, TPG_TAG, "create")
            for attr, value in TPG_ATTRIBUTES.items():
                tpg.set_attribute(attr, value)
            tpg.set_attribute("authentication", _auth_value(export))
            lun = LUN(tpg, export.lun, so)
            NetworkPortal(tpg, self.portal_ip, self.portal_port, "create")
            for initiator in export.initiators:
                acl = NodeACL(tpg, initiator, "create")
                _set_chap(acl, export)
                MappedLUN(acl, export.lun, lun)
            tpg.enable = True
            self._portals[iqn] = {_portal_dirname(self.portal_ip, self.portal_port)}
        except _LIO_ERRORS as e:
            errors.append(_adapter_error(f"cannot create export {iqn} of /dev/{export.device}", e))
            # Undo, so that no half-made target is left behind; what cannot be undone is a leftover.
            self._delete_target(iqn, errors)
            self._delete_backstore(backstore_name(export.device), errors)
            return
        self._exports[iqn] = Export(device=export.device, target_iqn=iqn,
                                    initiators=tuple(sorted(export.initiators)), lun=export.lun,
                                    wwn=export.wwn or _unit_serial(Path(so.path)),
                                    chap_user=export.chap_user, chap_secret=export.chap_secret,
                                    mutual_user=export.mutual_user, mutual_secret=export.mutual_secret)

    def _ensure_backstore(self, device: str, wwn: str = "") -> BlockStorageObject:
        """The block backstore of /dev/<device>: reused if a leftover one fits, else made anew.

        `wwn` is the unit serial the LUN must show (derived from the volume's identity); empty
        lets the kernel's random one stand.
        """
        name = backstore_name(device)
        dev = f"/dev/{device}"
        try:
            so = BlockStorageObject(name)
        except RTSLibNotInCFSError:
            so = None
        except _LIO_ERRORS as e:
            raise _adapter_error(f"cannot look up backstore {name}", e) from e
        if so is not None:
            try:
                fits = so.is_configured() and so.udev_path == dev and (not wwn or so.wwn == wwn)
                busy = so.status == "activated"
            except _LIO_ERRORS as e:
                raise _adapter_error(f"cannot read backstore {name}", e) from e
            if busy:
                raise AdapterError(f"backstore {name} of {dev} is already used by another LUN")
            if fits:
                log.info("LIO: reusing leftover backstore %s of %s", name, dev)
                self._orphans.pop(name, None)
                return so
            errs: list[AdapterError] = []
            self._delete_backstore(name, errs)
            if errs:
                raise errs[0]
        if not Path(dev).is_block_device():
            raise AdapterError(f"cannot export {dev}: no such block device")
        try:
            return BlockStorageObject(name, dev=dev, wwn=wwn or None)
        except _LIO_ERRORS as e:
            # rtslib opens the device O_EXCL: a mounted or otherwise claimed device fails here.
            raise _adapter_error(f"cannot create block backstore {name} on {dev}", e) from e

    def _delete(self, export: Export, errors: list[AdapterError]) -> None:
        """Remove a target and then its backstore; a missing one counts as removed."""
        try:
            self._check_ours(export)
        except AdapterError as e:
            errors.append(e)
            return
        n = len(errors)
        self._delete_target(export.target_iqn, errors)
        self._delete_backstore(backstore_name(export.device), errors)
        if len(errors) == n:
            self._exports.pop(export.target_iqn, None)

    def _delete_target(self, iqn: str, errors: list[AdapterError]) -> None:
        if not Path(self._fabric.path, iqn).is_dir():
            self._broken.pop(iqn, None)
            return
        backstores = _linked_backstores(Path(self._fabric.path, iqn))
        try:
            # Disables the TPG first (dropping sessions), then ACLs, LUNs, portal, TPG, target.
            Target(self._fabric, iqn, "lookup").delete()
        except _LIO_ERRORS as e:
            errors.append(_adapter_error(f"cannot delete target {iqn}", e))
            self._broken[iqn] = f"delete failed: {e}"
            return
        self._broken.pop(iqn, None)
        self._exports.pop(iqn, None)
        self._portals.pop(iqn, None)
        for so_dir in backstores:
            # Its backstore is now unused unless something else links it: a leftover to prune.
            if _info_field(so_dir / "info", "Status") == "DEACTIVATED":
                self._orphans[so_dir.name] = f"backstore of deleted target {iqn}"

    def _delete_backstore(self, name: str, errors: list[AdapterError]) -> None:
        try:
            so = BlockStorageObject(name)
        except RTSLibNotInCFSError:
            self._orphans.pop(name, None)
            return
        except _LIO_ERRORS as e:
            errors.append(_adapter_error(f"cannot look up backstore {name}", e))
            return
        try:
            busy = so.status == "activated"
        except _LIO_ERRORS as e:
            errors.append(_adapter_error(f"cannot read backstore {name}", e))
            return
        if busy:
            errors.append(AdapterError(f"backstore {name} is still used by a LUN: not deleting it"))
            self._orphans.pop(name, None)
            return
        try:
            # NOTE: StorageObject.delete() searches every LUN of every target on the system for
            # links to this object (2.8 s at 1,000 exports). Its target is gone, so no LUN links
            # to it: remove its configfs directory and its HBA directly (flat ~20 ms).
            Path(so.path).rmdir()
            so._backstore.delete()  # also drops rtslib's cached index of it
        except _LIO_ERRORS as e:
            errors.append(_adapter_error(f"cannot delete backstore {name}", e))
            self._orphans[name] = f"delete failed: {e}"
            return
        self._orphans.pop(name, None)

    def _set_initiators(self, export: Export, add: Iterable[str], remove: Iterable[str],
                        errors: list[AdapterError]) -> None:
        """Add and remove NodeACLs of a whole export in place; its LUN and other sessions stay."""
        iqn = export.target_iqn
        try:
            self._check_ours(export)
        except AdapterError as e:
            errors.append(e)
            return
        have = self._exports.get(iqn)
        if have is None:
            errors.append(AdapterError(f"cannot change initiators of {iqn}: no such export on "
                                       f"unit {self.unit}"))
            return
        current = set(have.initiators)
        try:
            tpg = TPG(Target(self._fabric, iqn, "lookup"), TPG_TAG, "lookup")
            lun = LUN(tpg, have.lun)
        except _LIO_ERRORS as e:
            errors.append(_adapter_error(f"cannot open target {iqn}", e))
            return
        failed_removals = []
        for initiator in remove:
            try:
                # Deleting the ACL also ends that initiator's session (the kernel closes it).
                NodeACL(tpg, initiator, "lookup").delete()
            except RTSLibNotInCFSError:
                pass
            except _LIO_ERRORS as e:
                errors.append(_adapter_error(f"cannot remove initiator {initiator} from {iqn}", e))
                failed_removals.append(initiator)
                continue
            current.discard(initiator)
        if failed_removals and add:
            # NOTE: never two hosts on one LUN: the new host waits until the old one is out.
            errors.append(AdapterError(
                f"not adding {', '.join(add)} to {iqn}: removing {', '.join(failed_removals)} failed"))
            add = ()
        for initiator in add:
            try:
                acl = NodeACL(tpg, initiator, "any")
                _set_chap(acl, have)
                if not Path(acl.path, f"lun_{have.lun}").is_dir():
                    MappedLUN(acl, have.lun, lun)
            except _LIO_ERRORS as e:
                errors.append(_adapter_error(f"cannot add initiator {initiator} to {iqn}", e))
                continue
            current.add(initiator)
        self._exports[iqn] = Export(device=have.device, target_iqn=iqn,
                                    initiators=tuple(sorted(current)), lun=have.lun, wwn=have.wwn,
                                    chap_user=have.chap_user, chap_secret=have.chap_secret,
                                    mutual_user=have.mutual_user, mutual_secret=have.mutual_secret)

    def _ensure_portals(self, errors: list[AdapterError]) -> None:
        """Give every held export this agent's portal, beside any it had (never removing one)."""
        mine = _portal_dirname(self.portal_ip, self.portal_port)
        for iqn in sorted(self._exports):
            have = self._portals.setdefault(iqn, set())
            if mine in have:
                continue
            try:
                tpg = TPG(Target(self._fabric, iqn, "lookup"), TPG_TAG, "lookup")
                NetworkPortal(tpg, self.portal_ip, self.portal_port, "create")
            except _LIO_ERRORS as e:
                errors.append(_adapter_error(f"cannot add portal {mine} to {iqn}", e))
                continue
            log.info("LIO: added portal %s to %s (kept %s)", mine, iqn, ", ".join(sorted(have)) or "none")
            have.add(mine)

    def _prune(self, errors: list[AdapterError]) -> None:
        """Remove half-made targets under our prefix and dvsan backstores no LUN uses."""
        for iqn in sorted(self._broken):
            log.warning("LIO: removing leftover target %s (%s)", iqn, self._broken[iqn])
            self._delete_target(iqn, errors)
        for name in sorted(self._orphans):
            log.warning("LIO: removing leftover backstore %s (%s)", name, self._orphans[name])
            self._delete_backstore(name, errors)


def _auth_value(export: Export) -> str:
    """The TPG's `authentication`: 1 (CHAP required) when the export has credentials."""
    return "1" if export.chap_user else "0"


def _set_chap(acl: NodeACL, export: Export) -> None:
    """CHAP on a host's ACL, one-way and (if asked) mutual; secrets go to configfs, never a log."""
    if export.chap_user:
        acl.chap_userid = export.chap_user
        acl.chap_password = export.chap_secret
    if export.mutual_user:
        acl.chap_mutual_userid = export.mutual_user
        acl.chap_mutual_password = export.mutual_secret


def _read(p: Path) -> str | None:
    try:
        return p.read_text().strip()
    except OSError:
        return None


def _linked_backstores(tdir: Path) -> list[Path]:
    """The dvsan block backstore directories the LUNs of a target directory link to."""
    out = []
    for link in tdir.glob("tpgt_*/lun/lun_*/*"):
        if link.is_symlink():
            so_dir = Path(os.path.realpath(link))
            parent = so_dir.parent.name
            if parent.startswith("iblock_") and so_dir.name.startswith(BACKSTORE_PREFIX):
                out.append(so_dir)
    return out


def _unit_serial(so_dir: Path) -> str:
    """A backstore's unit serial, from its `wwn/vpd_unit_serial` ("T10 VPD Unit Serial Number: X")."""
    text = _read(so_dir / "wwn" / "vpd_unit_serial") or ""
    serial = text.rsplit(":", 1)[-1].strip().lower() if ":" in text else ""
    # Not one dvsan would make (set by hand?): "" differs from any wanted serial, so it is remade.
    return serial if _SERIAL_RE.fullmatch(serial) else ""


def _info_field(p: Path, key: str) -> str | None:
    """One 'Key: value' field of a configfs `info` file, e.g. 'Status: ACTIVATED'."""
    words = (_read(p) or "").split()
    for i, w in enumerate(words[:-1]):
        if w == f"{key}:":
            return words[i + 1]
    return None
