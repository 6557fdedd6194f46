"""The host agent's local record of the volumes it holds: one JSON file, one writer at a time.

Each command holds an exclusive `flock` on a lock file beside the state file for its whole
read-modify-write (`with state.locked(): ...`), so two commands at once never lose a record. A
write goes to a unique temp file in the same directory (mode 0600), is fsynced, renamed over the
state file, and the directory is fsynced, so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dvsan.errors import InvalidInput

Record = dict[str, Any]


class StateFileError(InvalidInput):
    """The state file (or its lock) cannot be read, parsed or written; the message names the file."""


class HostState:
    """assignment id -> what the host needs to log out and release without asking the station."""

    def __init__(self, path: Path):
        self.path = path
        self.lock_path = path.with_name(f".{path.name}.lock")
        self._lock_fd: int | None = None
        self._depth = 0

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the exclusive lock of the state file (re-entrant within this object).

        NOTE: flock locks belong to an open file description: a second open of the lock file in
        this process would block on our own lock, hence the depth counter instead of re-locking.
        """
        if self._depth == 0:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise StateFileError(f"cannot open the lock file {self.lock_path} of state file "
                                     f"{self.path}: {e.strerror}") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:
                os.close(fd)
                raise StateFileError(f"cannot lock state file {self.path} ({self.lock_path}): "
                                     f"{e.strerror}") from e
            self._lock_fd = fd
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None

    def load(self) -> dict[str, Record]:
        """Every record; a missing file is no record, an unreadable or corrupt one is an error."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as e:
            raise StateFileError(f"state file {self.path} is unreadable: {e}; nothing was changed "
                                 "(fix its permissions, or move it aside and run 'sync')") from e
        try:
            data = json.loads(text)
        except ValueError as e:
            raise StateFileError(f"state file {self.path} is not valid JSON ({e}); nothing was "
                                 "changed (move it aside and run 'sync' to rebuild it from the "
                                 "station)") from e
        if not isinstance(data, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) for k, v in data.items()):
            raise StateFileError(f"state file {self.path} does not hold an object of assignment "
                                 "records; nothing was changed (move it aside and run 'sync')")
        return data

    def get(self, assignment_id: int | str) -> Record | None:
        return self.load().get(str(assignment_id))

    def save(self, data: dict[str, Record]) -> None:
        """Atomic replace: unique temp file (0600), fsync, rename, fsync of the directory."""
        with self.locked():
            directory = self.path.parent
            try:
                directory.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
            except OSError as e:
                raise StateFileError(f"cannot write state file {self.path}: {e.strerror}") from e
            try:
                with os.fdopen(fd, "w") as f:   # mkstemp makes it 0600
                    json.dump(data, f, indent=2, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except OSError as e:
                Path(tmp).unlink(missing_ok=True)
                raise StateFileError(f"cannot write state file {self.path}: {e}") from e
            _fsync_dir(directory)

    def put(self, assignment: Record) -> None:
        with self.locked():
            data = self.load()
            data[str(assignment["id"])] = assignment
            self.save(data)

    def remove(self, assignment_id: int | str) -> None:
        with self.locked():
            data = self.load()
            data.pop(str(assignment_id), None)
            self.save(data)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
