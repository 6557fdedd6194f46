"""Taking a volume off this host without pulling it from under a user.

Refuse while its block device or anything stacked on it is mounted, held, swapped on or open;
otherwise flush, delete the SCSI devices, log out of every session to the target on every portal,
delete its node records, and verify that no session, node record or device is left. Used by
`release` and by `sync` (for records the station no longer has).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from dvsan.errors import AdapterError, Conflict, DvsanError
from host_agent.blockdev import BlockDeviceError, DeviceInUse
from host_agent.iscsiadm import DiscoveredTarget, NodeRecord, Session

log = logging.getLogger(__name__)
Record = dict[str, Any]


class IscsiPort(Protocol):
    """What the host agent asks of open-iscsi (host_agent.iscsiadm.Iscsiadm; fakes in tests)."""

    def discover(self, portal_ip: str, port: int) -> list[DiscoveredTarget]: ...
    def login(self, target_iqn: str, portal_ip: str, port: int) -> None: ...
    def set_chap(self, target_iqn: str, portal_ip: str, port: int, username: str, password: str,
                 mutual: tuple[str, str] | None = None) -> None: ...
    def wait_for_device(self, target_iqn: str, portal_ip: str, lun: int, timeout: float) -> str: ...
    def logout(self, target_iqn: str, portal_ip: str, port: int) -> None: ...
    def logout_session(self, sid: int) -> None: ...
    def remove_session(self, session: Session) -> None: ...
    def delete_node(self, target_iqn: str, portal_ip: str, port: int) -> None: ...
    def node_records(self) -> list[NodeRecord]: ...
    def sessions(self) -> list[Session]: ...
    def session_devices(self, target_iqn: str) -> list[str]: ...


class BlockPort(Protocol):
    """What the host agent asks of the block layer (host_agent.blockdev.BlockDevices)."""

    def users(self, name: str) -> list[str]: ...
    def flush(self, name: str) -> None: ...
    def delete_scsi_device(self, name: str) -> None: ...


class LeftBehind(AdapterError):
    """After logout, a session, node record or device of the target is still there."""


def portals_of(held: Record) -> list[tuple[str, int]]:
    """Every portal this host knows for a record: the one it logged in to first, then any added."""
    first = (str(held.get("portal_address") or held["unit_address"]), int(held["portal_port"]))
    more = [(str(a), int(p)) for a, p in held.get("portals", [])]
    return list(dict.fromkeys([first, *more]))


def check_not_in_use(held: Record, iscsi: IscsiPort, block: BlockPort) -> list[str]:
    """The target's block devices; DeviceInUse naming what holds them, or Conflict if we cannot tell."""
    devices = iscsi.session_devices(held["target_iqn"])
    users: list[str] = []
    for dev in devices:
        try:
            users += block.users(dev)
        except BlockDeviceError as e:
            raise Conflict(f"refusing to take assignment {held['id']} off this host: {e} "
                           "(--force to go ahead anyway)") from e
    if users:
        raise DeviceInUse(", ".join(devices), [*users, "unmount or stop them first, or use --force"])
    return devices


def detach(held: Record, iscsi: IscsiPort, block: BlockPort, force: bool = False) -> list[str]:
    """Take the record's target off this host; the warnings `--force` went past.

    Without `force` nothing is changed when the device is in use or a step before logout fails.
    """
    target = held["target_iqn"]
    warnings: list[str] = []
    if force:
        devices = iscsi.session_devices(target)
        for dev in devices:
            try:
                users = block.users(dev)
            except BlockDeviceError as e:
                users = [str(e)]
            warnings += [f"--force: going ahead although {u}" for u in users]
    else:
        devices = check_not_in_use(held, iscsi, block)
    for step, fn in (("flush", block.flush), ("delete SCSI device", block.delete_scsi_device)):
        for dev in devices:
            try:
                fn(dev)
            except DvsanError as e:
                if not force:
                    raise
                warnings.append(f"--force: {step} of {dev} failed: {e}")
    errors: list[DvsanError] = []
    portals = portals_of(held)
    for ip, port in portals:
        try:
            iscsi.logout(target, ip, port)
        except DvsanError as e:
            errors.append(e)
    for s in [s for s in iscsi.sessions() if s.target_iqn == target]:
        try:
            if force:
                iscsi.remove_session(s)
            else:
                iscsi.logout_session(s.sid)
        except DvsanError as e:
            errors.append(e)
    records = [(r.portal_ip, r.port) for r in iscsi.node_records() if r.target_iqn == target]
    for ip, port in dict.fromkeys([*portals, *records]):
        try:
            iscsi.delete_node(target, ip, port)
        except DvsanError as e:
            errors.append(e)
    _verify_gone(held, iscsi, errors, force)
    for w in warnings:
        log.warning("assignment %s: %s", held["id"], w)
    return warnings


def _verify_gone(held: Record, iscsi: IscsiPort, errors: Sequence[DvsanError], force: bool) -> None:
    """NOTE: iscsiadm's "no matching session" (exit 21) only says one record had none: look."""
    target = held["target_iqn"]
    left = [f"session {s.sid} at {s.portal_ip}:{s.port}" for s in iscsi.sessions() if s.target_iqn == target]
    left += [f"node record at {r.portal_ip}:{r.port}" for r in iscsi.node_records() if r.target_iqn == target]
    left += [f"block device /dev/{d}" for d in iscsi.session_devices(target)]
    if left:
        why = "; ".join(str(e) for e in errors) or "no step reported a failure"
        hint = "" if force else " (`release --force` removes a session stuck reconnecting to a dead unit)"
        raise LeftBehind(f"assignment {held['id']}: {target} is not gone from this host: "
                         f"{', '.join(left)} remain ({why}){hint}")
    for e in errors:
        log.info("assignment %s: %s (nothing is left, so this was harmless)", held["id"], e)
