"""station.services.units: an "up" and a "down" of one unit that cross (a coldStart trap, then a
linkDown trap a moment later): the storage report that answers the up must not undo the down that
arrived after it. Real migrated SQLite; a fake messenger stands in for the UDP listener."""

import asyncio
from pathlib import Path
from typing import Any

from dvsan.protocol import MsgType
from station.db.tables import UnitState
from station.services import pool
from station.services.exports import ExportPusher
from station.services.units import UnitService
from station.services.wipes import WipeService
from tests.unit.test_allocation_stateful import Vol, migrated_db, partition


class Messenger:
    def __init__(self) -> None:
        self.sent: list[MsgType] = []

    async def send(self, peer: Any, mtype: MsgType, body: dict[str, Any], *, timeout: float | None = 10.0
                   ) -> dict[str, Any]:
        self.sent.append(mtype)
        await asyncio.sleep(0)
        return {"status": "ok"}


def state(db: Any) -> str:
    with db.session() as s:
        return pool.get_unit(s, "unit-a").state


def test_ep_a_report_answering_an_up_that_a_down_overtook_leaves_the_unit_down(tmp_path: Path):
    db = migrated_db(tmp_path)
    parts = [partition(Vol("unit-a", "vdq1", 64 << 20), 1)]

    async def run() -> None:
        m = Messenger()
        units = UnitService(db, m, ExportPusher(db, m), WipeService(db, m))
        await units.unit_started("unit-a", ("127.0.0.1", 7478), "127.0.0.1")
        await units.storage_info("unit-a", parts)
        assert state(db) == UnitState.ONLINE
        # coldStart arrives, then linkDown while the coldStart is still being handled
        await asyncio.gather(units.unit_trap_up("unit-a"), units.unit_down("unit-a", UnitState.LINK_DOWN))
        await asyncio.sleep(0.05)
        assert MsgType.NEED_STORAGE_INFO in m.sent
        await units.storage_info("unit-a", parts)          # the answer to the coldStart's question
        assert state(db) == UnitState.LINK_DOWN
        # a later up (heard after the down) does bring it back
        await units.unit_trap_up("unit-a")
        await asyncio.sleep(0.05)
        await units.storage_info("unit-a", parts)
        assert state(db) == UnitState.ONLINE
        await units.stop()

    asyncio.run(run())
    db.dispose()
