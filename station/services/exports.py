"""Export pushes: send a unit its complete desired state, one push at a time per unit."""

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from dvsan.endpoint import Peer
from dvsan.errors import Conflict, DvsanError, Unavailable
from dvsan.protocol import MsgType
from station.db import Database
from station.db.tables import UnitState
from station.services import pool
from station.services.chap import ChapVault
from station.services.messenger import Messenger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushResult:
    """What a unit answered to a push: the exports it refused (target IQN -> reason)."""

    refused: dict[str, str] = field(default_factory=dict)


class ExportPusher:
    """Owns one lock per unit, so a later push always carries a state at least as new."""

    def __init__(self, db: Database, messenger: Messenger, timeout: float = 15.0, vault: ChapVault | None = None):
        self.db, self.messenger, self.timeout, self.vault = db, messenger, timeout, vault
        self._locks: dict[str, asyncio.Lock] = {}

    async def push(self, unit: str) -> PushResult:
        """Send `unit` its desired state and wait until it has applied what it can.

        The desired state is read inside the unit's lock. Refused exports are recorded on their
        assignments. Raises Conflict if the unit refused the whole message or is not online,
        Unavailable if it did not answer or is busy.
        """
        lock = self._locks.setdefault(unit, asyncio.Lock())
        async with lock:
            def read() -> tuple[Peer, str, pool.DesiredState]:
                with self.db.session() as s:
                    u = pool.get_unit(s, unit)
                    if u.state != UnitState.ONLINE:
                        raise Conflict(f"unit {unit} is {u.state}")
                    return (u.control_host, u.control_port), u.portal_address, pool.desired_state(s, unit, self.vault.reveal if self.vault else None)

            control, portal, state = await asyncio.to_thread(read)
            body = {"unit": unit, "pool_id": state.pool_id, "generation": state.generation,
                    "portal_address": portal, "exports": [e.to_wire(self.vault.wire if self.vault else None) for e in state.exports],
                    "drop": state.drop}
            ack = await self.messenger.send(control, MsgType.EXPORTS, body, timeout=self.timeout)
            if ack.get("status") != "ok":
                error = ack.get("error", "unknown error")
                if ack.get("busy"):
                    raise Unavailable(f"unit {unit} is busy: {error}")
                raise Conflict(f"unit {unit} could not apply its exports: {error}")
            refused = refusals(ack)
            for target, reason in refused.items():
                log.warning("unit %s refused export %s: %s", unit, target, reason)

            def record() -> None:
                with self.db.session() as s:
                    pool.record_export_results(s, unit, state, refused)
            await asyncio.to_thread(record)
            return PushResult(refused)

    async def push_quietly(self, unit: str) -> None:
        """A push nobody waits for: a failure is logged; the unit's next report reconciles it."""
        try:
            await self.push(unit)
        except DvsanError as e:
            log.warning("could not push exports to unit %s: %s", unit, e)


def refusals(ack: dict[str, Any]) -> dict[str, str]:
    """target IQN -> reason, from an EXPORTS ACK's 'refused' list (malformed entries ignored)."""
    out: dict[str, str] = {}
    raw = ack.get("refused", [])
    for r in raw if isinstance(raw, list) else []:
        if isinstance(r, dict) and isinstance(r.get("target_iqn"), str):
            out[r["target_iqn"]] = str(r.get("reason", "no reason given"))
    return out
