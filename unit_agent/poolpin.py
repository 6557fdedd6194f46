"""The pool a unit belongs to, pinned in a local file: which station's EXPORTS it obeys.

The file (JSON, mode 0600, replaced atomically) holds the pool identity and the newest export
generation the unit has applied. An EXPORTS message from another pool (a second station, or a
station on a fresh database) or with an older generation (a station restored from an old
backup) is refused before anything is changed: neither may unexport volumes under live hosts.
To move a unit to another pool on purpose, an operator removes the file (`dvsan-unit forget-pool`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path

from dvsan.errors import AdapterError, Conflict, InvalidInput

log = logging.getLogger(__name__)

_POOL_ID_MAX = 64


def check_pool_fields(body: object) -> tuple[str, int]:
    """The pool id and generation of an EXPORTS body; InvalidInput if missing or malformed."""
    if not isinstance(body, dict):
        raise InvalidInput("the pool fields must be in an object")
    pool_id, generation = body.get("pool_id"), body.get("generation")
    if not isinstance(pool_id, str) or not 0 < len(pool_id) <= _POOL_ID_MAX:
        raise InvalidInput("field 'pool_id' must be a non-empty string: the station is too old "
                           "for this unit, or the message was not made by a station")
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise InvalidInput("field 'generation' must be a non-negative integer")
    return pool_id, generation


class PoolPin:
    """The pinned (pool id, generation) of this unit; `admit` checks and advances it."""

    def __init__(self, path: Path | None):
        """`path` None keeps the pin in memory only (tests, and a unit with no state directory)."""
        self.path = path
        self._lock = threading.Lock()
        self.pool_id: str | None = None
        self.generation = -1
        # Partitions this pool has exported (by partition uid; by device name only when the
        # partition has no uid): the inventory offers them whatever signature they now hold.
        self.owned: frozenset[str] = frozenset()
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text())
                self.pool_id, self.generation = check_pool_fields(data)
                owned = data.get("owned", [])
                if not isinstance(owned, list) or not all(isinstance(o, str) for o in owned):
                    raise InvalidInput("'owned' must be a list of names")
                self.owned = frozenset(owned)
            except (OSError, ValueError, InvalidInput) as e:
                # NOTE: fail closed: a unit that cannot tell which pool it belongs to obeys none.
                raise AdapterError(f"cannot read the pool pin {path}: {e}; fix or remove it "
                                   "(dvsan-unit forget-pool) to let a station take this unit") from e

    def admit(self, pool_id: str, generation: int) -> None:
        """Accept an EXPORTS of this pool at this generation (pinning a first pool), else Conflict."""
        with self._lock:
            if self.pool_id is not None and pool_id != self.pool_id:
                raise Conflict(f"EXPORTS from pool {pool_id} refused: this unit belongs to pool "
                               f"{self.pool_id} (a second station, or one on a fresh database?); "
                               "an operator moves it with 'dvsan-unit forget-pool'")
            if pool_id == self.pool_id and generation < self.generation:
                raise Conflict(f"EXPORTS of generation {generation} refused: this unit already applied "
                               f"generation {self.generation} of pool {pool_id} (a station restored "
                               "from an older database?)")
            if (pool_id, generation) != (self.pool_id, self.generation):
                if self.pool_id is None:
                    log.info("this unit now belongs to pool %s", pool_id)
                self._store(pool_id, generation)
                self.pool_id, self.generation = pool_id, generation

    def own(self, names: set[str]) -> None:
        """Remember partitions this pool exports (see `owned`); written only when it grows."""
        with self._lock:
            if names <= self.owned or self.pool_id is None:
                return
            self.owned = self.owned | names
            self._store(self.pool_id, self.generation)

    def _store(self, pool_id: str, generation: int) -> None:
        if self.path is None:
            return
        data = json.dumps({"pool_id": pool_id, "generation": generation,
                           "owned": sorted(self.owned)}).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".pool.", suffix=".tmp")
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            raise AdapterError(f"cannot write the pool pin {self.path}: {e}") from e
