"""A host's mirrors: make, heal, report and take down the RAID1 array over two member volumes.

The members are ordinary assignment records (with `mirror_id`, and `md_uuid` once this host made
the array); every kernel step goes through `host_agent.mdadm` and `host_agent.iscsiadm`. What to
do to an array is decided by the pure `sync.plan_mirror`; this module gathers its inputs and
carries it out, applying what it can and reporting the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dvsan.errors import Conflict, DvsanError
from host_agent.blockdev import BlockDeviceError, DeviceInUse
from host_agent.detach import BlockPort, IscsiPort, check_not_in_use, detach
from host_agent.mdadm import ArrayView, OtherSignature, Superblock, md_path
from host_agent.sync import MirrorPlan, plan_mirror

log = logging.getLogger(__name__)
Record = dict[str, Any]


class MdPort(Protocol):
    """What the host agent asks of md (host_agent.mdadm.Mdadm; fakes in tests)."""

    def examine(self, device: str) -> Superblock | OtherSignature | None: ...
    def create(self, mirror_id: int, devices: Sequence[str]) -> None: ...
    def assemble(self, mirror_id: int, devices: Sequence[str]) -> None: ...
    def add(self, mirror_id: int, device: str, kernel_name: str | None = None) -> None: ...
    def fail_remove(self, mirror_id: int, device: str, kernel_name: str | None = None) -> None: ...
    def stop(self, mirror_id: int, kernel_name: str | None = None) -> None: ...
    def kernel_name(self, mirror_id: int) -> str | None: ...
    def array_of(self, device: str) -> str | None: ...
    def view(self, kernel_name: str) -> ArrayView | None: ...


def members_by_mirror(records: dict[str, Record] | list[Record]) -> dict[int, list[Record]]:
    """Records (or station assignments) of mirror members, by mirror id, each list in id order."""
    recs = records.values() if isinstance(records, dict) else records
    out: dict[int, list[Record]] = {}
    for r in recs:
        if r.get("mirror_id") is not None:
            out.setdefault(int(r["mirror_id"]), []).append(r)
    return {k: sorted(v, key=lambda r: int(r["id"])) for k, v in sorted(out.items())}


def member_device(iscsi: IscsiPort, rec: Record) -> str | None:
    """The block device (kernel name, 'sdb') this host sees now for a member: read from the
    session, never from the record (names move at boot); None when there is no session."""
    devs = iscsi.session_devices(rec["target_iqn"])
    return devs[0] if devs else None


def find_array(md: MdPort, mirror_id: int, devices: Sequence[str | None]) -> ArrayView | None:
    """The array of mirror `mirror_id`: by its /dev/md/ name, else the md holder of a member."""
    kn = md.kernel_name(mirror_id)
    if kn is None:
        kn = next((h for d in devices if d for h in [md.array_of(d)] if h), None)
    return md.view(kn) if kn else None


def uuid_of(records: Sequence[Record]) -> str | None:
    """The array UUID this host recorded when it made the array (any member has it)."""
    return next((str(r["md_uuid"]) for r in records if r.get("md_uuid")), None)


def create_array(md: MdPort, mirror_id: int, devices: Sequence[str]) -> str:
    """Make the array over two blank devices; its UUID (to record). Refuses (Conflict, nothing
    changed) when either carries a superblock or a partition table."""
    for dev in devices:
        sb = md.examine(dev)
        if sb is not None:
            what = (f"an md superblock ({sb.name or 'no name'}, uuid {sb.uuid})"
                    if isinstance(sb, Superblock) else sb.what)
            raise Conflict(f"mirror {mirror_id}: {dev} already carries {what}: not creating an "
                           "array over it (release the mirror and request again)")
    md.create(mirror_id, devices)
    sb = md.examine(devices[0])
    if not isinstance(sb, Superblock):
        raise DvsanError(f"mirror {mirror_id}: mdadm --create succeeded but {devices[0]} shows no "
                         "md superblock")
    return sb.uuid


@dataclass
class MirrorSyncResult:
    """What reconcile did to one mirror (`actions`: readable lines) and what it left (`problems`)."""

    mirror_id: int
    actions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    detached: list[str] = field(default_factory=list)     # member ids logged out and forgettable
    uuid: str | None = None       # the array's UUID, when this run created or first assembled it


def reconcile(mirror_id: int, wanted: list[Record], dropped: list[Record], iscsi: IscsiPort,
              block: BlockPort, md: MdPort) -> MirrorSyncResult:
    """Bring one mirror's array in line with the station: assemble or create it, add a new member,
    fail+remove a dropped one before its logout, stop the array of a mirror the station no longer
    has (when nothing uses it). `wanted`: the station's members (as held records); `dropped`:
    records of members the station no longer has."""
    res = MirrorSyncResult(mirror_id)
    wdev = {str(r["id"]): member_device(iscsi, r) for r in wanted}
    ddev = {str(r["id"]): member_device(iscsi, r) for r in dropped}
    try:
        array = find_array(md, mirror_id, [*wdev.values(), *ddev.values()])
        in_array = {m.device for m in array.members} if array is not None and array.running else set()
        supers = {dev: md.examine(dev) for dev in [*wdev.values(), *ddev.values()]
                  if dev is not None and dev not in in_array}
    except DvsanError as e:
        res.problems.append(f"mirror {mirror_id}: cannot read its members or array: {e}")
        return res
    todo = plan_mirror(mirror_id, wdev, ddev, supers, array, uuid_of([*wanted, *dropped]))
    res.problems += todo.problems
    if not _carry_out(todo, mirror_id, array, block, md, res):
        return res
    if todo.assemble and not uuid_of([*wanted, *dropped]):
        sb = supers.get(todo.assemble[0])
        res.uuid = sb.uuid if isinstance(sb, Superblock) else None   # a spare host records it now
    by_id = {str(r["id"]): r for r in dropped}
    for aid in todo.detachable:
        try:
            # NOTE: out of the array, a dropped member carries nothing anyone needs, and its unit
            # is often the dead one: check that nothing else holds it, then go ahead as --force
            # does (a session stuck reconnecting to a dead unit is removed, not waited for).
            check_not_in_use(by_id[aid], iscsi, block)
            detach(by_id[aid], iscsi, block, force=True)
        except DvsanError as e:
            res.problems.append(f"mirror {mirror_id}: member {aid} is out of the array, but its "
                                f"logout failed: {e}")
            continue
        res.detached.append(aid)
    return res


def _carry_out(todo: MirrorPlan, mirror_id: int, array: ArrayView | None, block: BlockPort,
               md: MdPort, res: MirrorSyncResult) -> bool:
    """The plan's md steps in order; False (and a problem) when one fails: the rest waits."""
    path = md_path(mirror_id)
    try:
        if todo.stop and array is not None:
            users = block.users(array.name)
            if users:
                raise DeviceInUse(array.name, users)
            md.stop(mirror_id, array.name)
            res.actions.append(f"stopped {path} ({array.name})")
        if todo.assemble:
            md.assemble(mirror_id, todo.assemble)
            res.actions.append(f"assembled {path} from {', '.join(todo.assemble)}")
        if todo.create:
            res.uuid = create_array(md, mirror_id, todo.create)
            res.actions.append(f"created {path} over {', '.join(todo.create)} (initial resync running)")
        # after a stop, assemble or create the array may have another kernel name: the link decides
        kn = array.name if array is not None and not (todo.stop or todo.assemble or todo.create) else None
        for dev in todo.add:
            md.add(mirror_id, dev, kn)
            res.actions.append(f"added {dev} to {path} (resync running)")
        for dev in todo.fail_remove:
            md.fail_remove(mirror_id, dev, kn)
            res.actions.append(f"failed and removed {dev} from {path}")
    except (DvsanError, BlockDeviceError) as e:
        res.problems.append(f"mirror {mirror_id}: {e}")
        return False
    return True


def health(mirror_id: int, records: list[Record], iscsi: IscsiPort, md: MdPort) -> dict[str, Any]:
    """The body of PUT /api/v1/mirrors/ID/health for one mirror, from what this host sees:
    `{state, sync_percent, detail, members: {"<assignment id>": member_state}}`."""
    devs = {str(r["id"]): member_device(iscsi, r) for r in records}
    try:
        array = find_array(md, mirror_id, list(devs.values()))
    except DvsanError as e:
        return {"state": "unknown", "sync_percent": None, "detail": f"cannot read the array: {e}"[:255],
                "members": {aid: "unknown" for aid in devs}}
    members: dict[str, str] = {}
    for aid, dev in devs.items():
        m = array.member(dev) if array is not None and dev else None
        members[aid] = m.state(array.sync_action) if m is not None and array is not None else "missing"
    if array is None:
        return {"state": "failed", "sync_percent": None, "members": members,
                "detail": f"{md_path(mirror_id)} is not running on this host"}
    active = len(array.active())
    detail = (f"{array.name} {array.array_state}, {active}/{array.raid_disks} active"
              + (f", {array.sync_action} {array.sync_percent}%" if array.sync_percent is not None else ""))
    return {"state": array.health(), "sync_percent": array.sync_percent, "members": members,
            "detail": detail}


def take_down(mirror_id: int, records: list[Record], iscsi: IscsiPort, block: BlockPort, md: MdPort,
              force: bool = False) -> list[str]:
    """Stop the array and log out of every member (for `release --mirror`); the warnings --force
    went past. Without `force` nothing changes while the array (or anything on it) is in use."""
    warnings: list[str] = []
    array = find_array(md, mirror_id, [member_device(iscsi, r) for r in records])
    if array is not None:
        try:
            users = block.users(array.name)
        except BlockDeviceError as e:
            if not force:
                raise Conflict(f"refusing to release mirror {mirror_id}: {e} (--force to go ahead "
                               "anyway)") from e
            users = [str(e)]
        if users and not force:
            raise DeviceInUse(f"{array.name} ({md_path(mirror_id)})",
                              [*users, "unmount or stop them first, or use --force"])
        warnings += [f"--force: going ahead although {u}" for u in users]
        try:
            md.stop(mirror_id, array.name)
        except DvsanError as e:
            if not force:
                raise
            warnings.append(f"--force: stopping {md_path(mirror_id)} failed: {e}")
    errors: list[DvsanError] = []
    for r in records:
        try:
            warnings += detach(r, iscsi, block, force=force)
        except DvsanError as e:
            errors.append(e)
    if errors:
        raise DvsanError(f"mirror {mirror_id}: {'; '.join(str(e) for e in errors)}") from errors[0]
    return warnings
