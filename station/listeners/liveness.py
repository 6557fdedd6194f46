"""The liveness check: an online unit silent for longer than the timeout becomes unreachable."""

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from dvsan.errors import DvsanError
from station.db.tables import UnitState
from station.services.units import UnitService

log = logging.getLogger(__name__)


async def watch(units: UnitService, timeout: float) -> None:
    """Run forever: mark online units that stopped sending heartbeats unreachable (assignments kept)."""
    period = max(0.2, timeout / 10)
    while True:
        await asyncio.sleep(period)
        cutoff = datetime.now(UTC) - timedelta(seconds=timeout)
        try:
            for unit in await units.silent_units(cutoff):
                log.warning("unit %s silent for over %.0f s: unreachable", unit, timeout)
                await units.unit_down(unit, UnitState.UNREACHABLE)
        except DvsanError as e:
            log.warning("liveness check failed: %s", e)
