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
