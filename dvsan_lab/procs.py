"""Finding and stopping the lab's own processes through /proc, never by a broad name."""

import os
import signal
import time
from pathlib import Path


def cmdline(pid: int) -> str:
    """The process's arguments joined by spaces; empty if it is gone or a zombie."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # NOTE: the command name in parentheses may contain spaces; the fields after the last ')' do not.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def group_members(pgid: int, marker: str) -> list[int]:
    """Live processes in process group `pgid` whose arguments mention `marker` (proof they are ours)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        st = _stat(pid)
        if st and st[1] == pgid and st[0] not in ("Z", "X") and marker in cmdline(pid):
            members.append(pid)
    return members


def terminate(pids: list[int], grace: float = 5.0) -> list[int]:
    """SIGTERM, wait up to `grace` seconds, SIGKILL what is left; returns the PIDs that were killed."""
    pids = [p for p in pids if alive(p)]
    for p in pids:
        _signal(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    for p in pids:
        if alive(p):
            _signal(p, signal.SIGKILL)
    return pids


def wait_gone(pids: list[int], timeout: float) -> bool:
    """True once none of `pids` is alive, False if some still are after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
