"""`sync`: the pure diff between the station's assignments of this host and the host's records.

`plan(station, held, resolve)` says what to add (the station has it, this host does not: a crash
between the station's answer and the state write), what to drop (this host has it, the station no
longer does: released elsewhere, or a lost answer), and which portals to add beside the known
ones (a unit's new address; the old portal is never dropped here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dvsan.errors import InvalidInput
from host_agent.detach import portals_of
from host_agent.mdadm import ArrayView, OtherSignature, Superblock

Record = dict[str, Any]
Portal = tuple[str, int]


@dataclass
class SyncPlan:
    add: list[Record] = field(default_factory=list)
    drop: list[Record] = field(default_factory=list)
    new_portals: list[tuple[Record, list[Portal]]] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)   # left alone, reported


def station_portals(a: Record, primary: str) -> list[Portal]:
    """The portals the station names for an assignment: `primary` (the unit's address as this
    host resolves it) at `portal_port`, then each `{address, port}` of `portals` if present."""
    out: list[Portal] = [(primary, int(a["portal_port"]))]
    extra = a.get("portals") or []
    if not isinstance(extra, list):
        raise InvalidInput(f"assignment {a.get('id')}: 'portals' is not a list: {extra!r}")
    for p in extra:
        if not (isinstance(p, dict) and isinstance(p.get("address"), str) and p["address"]
                and isinstance(p.get("port"), int) and 0 < p["port"] < 65536):
            raise InvalidInput(f"assignment {a.get('id')}: bad portal {p!r} (want {{address, port}})")
        out.append((p["address"], p["port"]))
    return list(dict.fromkeys(out))


def plan(station: list[Record], held: dict[str, Record], host: str,
         resolve: Callable[[Record], str]) -> SyncPlan:
    """What `sync` does; `resolve(a)` is the address this host logs in to for a's unit."""
    out = SyncPlan()
    mine = {str(a["id"]): a for a in station if a.get("host") == host}
    for aid, a in sorted(mine.items(), key=_by_id):
        rec = held.get(aid)
        if rec is None:
            out.add.append(a)
            continue
        if rec.get("target_iqn") != a["target_iqn"]:
            out.conflicts.append(f"assignment {aid}: this host holds {rec.get('target_iqn')}, the "
                                 f"station says {a['target_iqn']}; not touching it (release it and "
                                 "request again, or move the state file aside)")
            continue
        try:
            new = [p for p in station_portals(a, resolve(a)) if p not in set(portals_of(rec))]
        except InvalidInput as e:
            out.conflicts.append(str(e))
            continue
        if new:
            out.new_portals.append((rec, new))
    out.drop = [rec for aid, rec in sorted(held.items(), key=_by_id) if aid not in mine]
    return out


def _by_id(kv: tuple[str, Record]) -> tuple[int, str]:
    return len(kv[0]), kv[0]   # numeric order for numeric ids, without trusting them to be


# ---- mirrors ---------------------------------------------------------------------------------

@dataclass
class MirrorPlan:
    """What `sync` does to one mirror's array, in this order: stop (an inactive leftover, or the
    array of a mirror the station no longer has), assemble or create, add, fail+remove; then the
    members in `detachable` may be logged out. `problems` are reported and left alone."""

    stop: bool = False
    assemble: list[str] = field(default_factory=list)
    create: list[str] = field(default_factory=list)
    add: list[str] = field(default_factory=list)
    fail_remove: list[str] = field(default_factory=list)
    detachable: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def plan_mirror(mirror_id: int, wanted: dict[str, str | None], dropped: dict[str, str | None],
                superblocks: dict[str, Superblock | OtherSignature | None], array: ArrayView | None,
                uuid: str | None) -> MirrorPlan:
    """What to do to mirror `mirror_id`'s array, from plain data.

    `wanted`: the station's members of this mirror (assignment id -> the block device this host
    sees for it, None when it has none: not logged in, or its unit is gone); `dropped`: members
    this host holds that the station no longer has (released, replaced); `superblocks`: what
    `mdadm --examine` found on each device that is not in the running array; `array`: the array's
    sysfs view (None: no array); `uuid`: the array UUID recorded when this host created it.

    Never creates over a device that carries any superblock or signature, nor when this host
    already made the array once; never fails the last active member; a device with another
    array's superblock is refused and reported.
    """
    out = MirrorPlan()
    name = f"mirror {mirror_id}"
    if array is not None and array.running:
        in_array = {m.device for m in array.members}
        for aid, dev in sorted(dropped.items()):
            if dev is None or dev not in in_array:
                out.detachable.append(aid)
                continue
            if not [d for d in array.active() if d != dev and d not in out.fail_remove]:
                out.problems.append(f"{name}: member {aid} ({dev}) is gone from the station, but it "
                                    "is the last active member of the array: not removing it (add "
                                    "a replacement first, or release the mirror)")
                continue
            out.fail_remove.append(dev)
            out.detachable.append(aid)
        for aid, dev in sorted(wanted.items()):
            if dev is None or dev in in_array:
                continue
            sb = superblocks.get(dev)
            if sb is None or _is_ours(sb, mirror_id, uuid):
                out.add.append(dev)
            else:
                out.problems.append(_foreign(name, aid, dev, sb))
        if not wanted and dropped:
            out.stop, out.fail_remove, out.detachable = True, [], sorted(dropped)
            out.problems = []
        return out
    if array is not None:          # assembled but not started: start over from the members
        out.stop = True
    if not wanted:
        out.detachable = sorted(dropped)
        return out
    present = {aid: dev for aid, dev in sorted(wanted.items()) if dev is not None}
    if not present:
        out.problems.append(f"{name}: no member is present on this host (assignments "
                            f"{', '.join(sorted(wanted))}): the array cannot start")
        return out
    ours, blank = [], []
    for aid, dev in present.items():
        sb = superblocks.get(dev)
        if sb is None:
            blank.append(dev)
        elif _is_ours(sb, mirror_id, uuid):
            ours.append(dev)
        else:
            out.problems.append(_foreign(name, aid, dev, sb))
    if ours:
        out.assemble, out.add = ours, blank
    elif blank and len(blank) == len(wanted) == 2 and not out.problems:
        old = [dev for dev in dropped.values() if dev is not None and _is_ours(superblocks.get(dev), mirror_id, uuid)]
        if uuid or old:
            where = f"uuid {uuid}" if uuid else "its data is on " + ", ".join(old)
            out.problems.append(f"{name}: neither member carries the array's superblock, but this "
                                f"host made it before ({where}): not creating a new, empty one over it")
        else:
            out.create = blank
    elif blank and not out.problems:
        out.problems.append(f"{name}: waiting for every member before creating the array (have "
                            f"{', '.join(blank)}, {len(wanted) - len(blank)} missing)")
    out.detachable = sorted(dropped)
    return out


def _foreign(name: str, aid: str, dev: str, sb: Superblock | OtherSignature | None) -> str:
    what = (f"the superblock of another array ({sb.name or 'no name'}, uuid {sb.uuid})"
            if isinstance(sb, Superblock) else f"{sb.what if sb else 'something'}")
    return (f"{name}: member {aid} ({dev}) carries {what}: refusing to use it (not this "
            "mirror's; wipe it or ask the station for a replacement)")


def _is_ours(sb: Superblock | OtherSignature | None, mirror_id: int, uuid: str | None) -> bool:
    return isinstance(sb, Superblock) and sb.is_mirror(mirror_id, uuid)
