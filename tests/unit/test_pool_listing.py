"""Listing the pool costs a fixed number of queries whatever its size: the volumes, then their
assignments in one more (the listing shows whom each volume is assigned to). It was one query per
volume: 1,000 volumes took half a second of the station's time for each `GET /api/v1/volumes`."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from station.db import Database
from station.db.tables import AssignmentRow, UnitRow, VolumeRow
from station.services import pool


def seeded(where: Path, n: int) -> Database:
    """A migrated database with one unit, `n` volumes, and every third one assigned."""
    db = Database(f"sqlite:///{where / 'station.db'}")
    db.migrate()
    now = datetime.now(UTC)
    with db.session() as s:
        s.add(UnitRow(name="unit-a", control_host="127.0.0.1", control_port=7479, portal_address="127.0.0.1",
                      portal_port=3260, agent_version="t", state="online", last_seen=now))
        for i in range(1, n + 1):
            s.add(VolumeRow(id=i, unit_name="unit-a", device=f"sdb{i}", disk="sdb", number=i, start_lba=2048 * i,
                            length_blocks=2048, end_lba=2048 * i + 2047, block_size=512, size_bytes=2048 * 512,
                            state="online", updated_at=now))
        s.flush()
        for i in range(3, n + 1, 3):
            s.add(AssignmentRow(volume_id=i, host_name=f"host-{i}", initiator_iqn=f"iqn.2026-11.org.t:h{i}",
                                host_address="127.0.0.2", requested_bytes=1, target_iqn=f"iqn.2026-11.org.dvsan:unit-a:sdb{i}"))
    return db


def listed(db: Database) -> tuple[int, dict[int, str | None]]:
    """How many statements one listing (with whom each volume is assigned to) sends, and what it shows."""
    count = 0

    def counted(*_: Any) -> None:
        nonlocal count
        count += 1
    event.listen(db.engine, "before_cursor_execute", counted)
    try:
        with db.session() as s:
            shown = {v.id: (v.assignment.host_name if v.assignment else None) for v in pool.list_volumes(s)}
    finally:
        event.remove(db.engine, "before_cursor_execute", counted)
    return count, shown


@pytest.mark.parametrize("n", [6, 300])
def test_gp_listing_the_pool_is_two_queries_whatever_its_size(tmp_path, n):
    db = seeded(tmp_path, n)
    try:
        count, shown = listed(db)
        assert count <= 2, f"{count} statements to list {n} volumes"
        assert len(shown) == n
        assert shown[3] == "host-3" and shown[1] is None
        assert sum(h is not None for h in shown.values()) == n // 3
    finally:
        db.dispose()
