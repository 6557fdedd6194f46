"""Pure text of dvsan-shell: one-line summaries of the station's objects, `info` pages, task
progress, and volumes grouped by their disk. No I/O here: what it prints is tested as data."""

import json
from collections.abc import Iterable
from typing import Any

from dvsan.sizes import format_size

# the fields `info` shows first, in this order; the rest follow alphabetically
FIRST = ("id", "name", "unit_name", "unit", "disk", "device", "host", "state", "role", "kind",
         "object", "size_bytes", "assigned_to", "wipe_state")
HIDDEN = ("chap_secret", "mutual_secret", "token")         # never printed by `info`


def size(n: int | None) -> str:
    return "-" if n is None else format_size(int(n))


def volume_summary(v: dict[str, Any]) -> str:
    """`unit-a vdb2 1.2 GiB online, assigned to host-b` (or `free`, or the wipe in progress)."""
    where = f"{v['unit_name']} {v['device']} {size(v['size_bytes'])} {v['state']}"
    if v.get("assigned_to"):
        return f"{where}, assigned to {v['assigned_to']}"
    wipe = v.get("wipe_state", "clean")
    if wipe == "running" and v.get("wipe_total_bytes"):
        return f"{where}, wiping {100 * v['wipe_done_bytes'] // v['wipe_total_bytes']}%"
    if wipe != "clean":
        return f"{where}, wipe {wipe}"
    return f"{where}, free" if v["state"] == "online" else where


def unit_summary(u: dict[str, Any]) -> str:
    out = f"{u['state']} {u['portal_address']}:{u['portal_port']}"
    if u.get("health", "ok") != "ok":
        out += f", {u['health']}"
    return out


def disk_summary(d: dict[str, Any]) -> str:
    """`gpt, 2.0 GiB, 4 partitions, 3 volumes (2 free), 1.0 GiB unpartitioned` when the unit
    reported the disk; `3 volumes (2 free), 56.0 MiB` when only its volumes tell of it."""
    parts = []
    reported = "partitions" in d
    if reported:
        n = len(d["partitions"])
        parts += [d.get("label") or "no partition table", size(d.get("size_bytes")),
                  f"{n} partition{'s' if n != 1 else ''}"]
    n = d.get("volumes", 0)
    parts.append(f"{n} volume{'s' if n != 1 else ''} ({d.get('free_volumes', 0)} free)")
    if not reported:
        parts.append(size(d.get("volume_bytes", 0)))
    unpartitioned = sum(r.get("size_bytes", 0) for r in d.get("free") or [] if isinstance(r, dict))
    if unpartitioned:
        parts.append(f"{size(unpartitioned)} unpartitioned")
    if d.get("system"):
        parts.append("system disk")
    return ", ".join(parts)


def partition_summary(p: dict[str, Any]) -> str:
    """A partition outside the pool: `partition 4, 1.0 GiB, LBA 2048-2099199, not in the pool
    (in use: mounted on /srv)`."""
    out = (f"partition {p.get('number')}, {size(p.get('size_bytes'))}, LBA {p.get('start_lba')}-"
           f"{p.get('end_lba')}, not in the pool")
    return out + (f" (in use: {'; '.join(p['in_use'])})" if p.get("in_use") else "")


def host_summary(h: dict[str, Any]) -> str:
    iqns = h.get("initiator_iqns", [])
    return iqns[0] + (f" (+{len(iqns) - 1})" if len(iqns) > 1 else "") if iqns else ""


def assignment_summary(a: dict[str, Any]) -> str:
    return (f"volume {a['volume_id']} {a['unit']} {a['device']} {size(a['size_bytes'])}, "
            f"{a.get('export_state', '')}")


def task_summary(t: dict[str, Any]) -> str:
    return f"{t['kind']} {t['object']} {t['state']}{' ' + progress(t) if t['state'] == 'running' else ''}"


def user_summary(u: dict[str, Any]) -> str:
    return u["role"] + (f", locked until {u['locked_until']}" if u.get("locked_until") else "")


def audit_summary(e: dict[str, Any]) -> str:
    return f"{e['at'][:19]} {e['principal']} {e['action']} {e['outcome']}"


def progress(t: dict[str, Any]) -> str:
    """`45% (7.0 MiB of 16.0 MiB)` for a wipe (its steps are bytes), `step 1/2` otherwise."""
    step, total = int(t.get("step", 0)), max(1, int(t.get("total_steps", 1)))
    if t.get("kind") == "wipe":
        return f"{100 * step // total}% ({size(step)} of {size(total)})"
    return f"step {step}/{total}"


def task_line(t: dict[str, Any]) -> str:
    """One line of a followed task: `task 7 wipe /volumes/3: running 50% (8.0 MiB of 16.0 MiB): zeroing`."""
    head = f"task {t['id']} {t['kind']} {t['object']}: {t['state']}"
    if t["state"] == "running":
        head += " " + progress(t)
    msg = t.get("error") if t["state"] in ("failed", "cancelled", "interrupted") else t.get("message")
    return f"{head}: {msg}" if msg and msg != t["state"] else head


def value_text(key: str, value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
        return "".join("\n    " + " ".join(f"{k}={value_text(k, v)}" for k, v in x.items()) for x in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and key.endswith("_bytes"):
        return f"{size(value)} ({value} bytes)"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(x) for x in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def info(d: dict[str, Any], hide: Iterable[str] = HIDDEN) -> str:
    """`key: value` lines, the important fields first, secrets left out, sizes for people."""
    keys = [k for k in FIRST if k in d] + sorted(k for k in d if k not in FIRST)
    keys = [k for k in keys if k not in hide]
    width = max((len(k) for k in keys), default=0)
    return "\n".join(f"{k.ljust(width)}  {value_text(k, d[k])}" for k in keys)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True)


def disks_of(volumes: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A unit's disks as its volumes tell them (when the station has no disks route): per disk,
    its volumes, their bytes, how many are free."""
    out: dict[str, dict[str, Any]] = {}
    for v in volumes:
        d = out.setdefault(v["disk"], {"name": v["disk"], "unit": v["unit_name"], "volumes": 0,
                                       "volume_bytes": 0, "free_volumes": 0, "devices": []})
        d["volumes"] += 1
        d["volume_bytes"] += v["size_bytes"]
        d["free_volumes"] += bool(v["state"] == "online" and not v.get("assigned_to")
                          and v.get("wipe_state", "clean") == "clean")
        d["devices"].append(v["device"])
    return out


def dots(prefix: str, name: str, summary: str, width: int) -> str:
    """`prefix name ....... [summary]` in `width` columns, the last left free (targetcli's look)."""
    if not summary:
        return f"{prefix}{name}"
    pad = width - 1 - len(prefix) - len(name) - len(summary) - 4     # one column spare: no wrap
    return f"{prefix}{name} {'.' * max(pad, 1)} [{summary}]"
