"""host_agent.state: one writer at a time, atomic replace, 0600, and loud errors on a bad file."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import stat
from pathlib import Path

import pytest

from host_agent.state import HostState, StateFileError

WRITES = 200


def _writer(path: str, first_id: int, start: mp.synchronize.Event) -> None:   # type: ignore[name-defined]
    state = HostState(Path(path))
    start.wait(30)
    for i in range(first_id, first_id + WRITES):
        state.put({"id": i, "target_iqn": f"iqn.2026-11.org.dvsan:unit-a:vd{i}"})


def test_gp_two_processes_200_writes_each_lose_nothing(tmp_path: Path) -> None:
    """Item 10: without the lock (or with one shared temp name) records are lost or the file breaks."""
    path = tmp_path / "host" / "assignments.json"
    ctx = mp.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(path), first, start)) for first in (0, 10_000)]
    for p in procs:
        p.start()
    start.set()   # both begin together, so their read-modify-writes overlap
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    data = json.loads(path.read_text())
    assert sorted(int(k) for k in data) == [*range(WRITES), *range(10_000, 10_000 + WRITES)]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # no temp file left behind
    assert sorted(p.name for p in path.parent.iterdir()) == [".assignments.json.lock", "assignments.json"]


def test_gp_lock_is_reentrant_and_a_missing_file_is_empty(tmp_path: Path) -> None:
    state = HostState(tmp_path / "s.json")
    assert state.load() == {}
    with state.locked():
        state.put({"id": 1})
        with state.locked():
            state.put({"id": 2})
        state.remove(1)
    assert state.load() == {"2": {"id": 2}}
    assert state.get(2) == {"id": 2} and state.get("9") is None


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2]", '{"1": "not a record"}', '"x"'])
def test_ep_corrupt_state_file_is_a_clear_error_never_empty(tmp_path: Path, text: str) -> None:
    path = tmp_path / "s.json"
    path.write_text(text)
    state = HostState(path)
    with pytest.raises(StateFileError, match=str(path)):
        state.load()
    # a write refuses too, and the file is left as it was for the operator
    with pytest.raises(StateFileError, match=str(path)):
        state.put({"id": 3})
    assert path.read_text() == text


def test_ep_unreadable_state_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.mkdir()   # a directory where the file should be: unreadable as a file, even for root
    with pytest.raises(StateFileError, match=f"state file {path} is unreadable"):
        HostState(path).load()


def test_ep_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    state = HostState(blocker / "s.json")   # its directory is a file
    with pytest.raises(StateFileError, match="s.json"):
        state.put({"id": 1})
