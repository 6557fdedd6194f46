"""The station's side of the automatic configuration protocol: listener, handlers, export pushes.

Sequence: unit STARTUP -> station stores unit, ACKs, sends NEED_STORAGE_INFO -> unit sends
STORAGE_INFO -> station updates the pool, ACKs, sends EXPORTS (the unit's desired state).
SHUTDOWN -> the unit's volumes go offline. Database work runs in worker threads.
"""

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool

from dvsan import __version__
from dvsan.endpoint import Endpoint, Peer, Verifier
from dvsan.errors import Conflict, DvsanError, IdentityRefused, InvalidInput, NotFound, Unavailable
from dvsan.identity import Signer
from dvsan.model import Partition
from dvsan.naming import check_unit_name
from dvsan.protocol import Message, MsgType
from station import pool
from station.db import Database

log = logging.getLogger(__name__)


def _str(body: dict[str, Any], key: str, required: bool = True) -> str | None:
    v = body.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        raise InvalidInput(f"field {key!r} must be a non-empty string")
    return v


def _port(body: dict[str, Any], key: str, default: int) -> int:
    v = body.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65535:
        raise InvalidInput(f"field {key!r} must be a port number")
    return v


class AutoconfServer:
    """Owns the station's UDP endpoint and one lock per unit for export pushes."""

    def __init__(self, db: Database, key: bytes, export_timeout: float = 15.0,
                 liveness_timeout: float = 30.0, *, signer: Signer | None = None,
                 verifier: Verifier | None = None):
        # signer: the station's key (every message and ACK is signed); verifier: the enrolment
        # gate (station/enrolment.py), which names the key a unit's messages must be signed with
        self.signer, self.verifier = signer, verifier
        self.db = db
        self.key = key
        self.export_timeout = export_timeout
        self.liveness_timeout = liveness_timeout
        self.endpoint: Endpoint | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._asked: dict[str, float] = {}     # unit -> when we last asked for its storage info
        self._downed: dict[str, float] = {}    # unit -> when it last went down
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self, host: str, port: int) -> None:
        self.endpoint = await Endpoint.open(self.key, self.handle, host, port, name="station",
                                            signer=self.signer, verifier=self.verifier)
        log.info("auto-configuration protocol listening on udp %s:%d", *self.endpoint.address)
        if self.liveness_timeout > 0:
            self._background(self._liveness())

    async def _liveness(self) -> None:
        """Mark online units that stopped sending heartbeats as unreachable (assignments kept)."""
        period = max(0.2, self.liveness_timeout / 10)
        while True:
            await asyncio.sleep(period)
            cutoff = datetime.now(UTC) - timedelta(seconds=self.liveness_timeout)
            try:
                silent = await run_in_threadpool(self._in_tx, pool.silent_units, cutoff)
                for unit in silent:
                    log.warning("unit %s silent for over %.0f s: unreachable", unit, self.liveness_timeout)
                    await self.unit_down(unit, "unreachable")
            except DvsanError as e:
                log.warning("liveness check failed: %s", e)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self.endpoint:
            self.endpoint.close()

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.endpoint.stats) if self.endpoint else {}

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, msg: Message, peer: Peer) -> dict[str, Any] | None:
        unit = check_unit_name(_str(msg.body, "unit") or "")
        if self.verifier is not None and unit != msg.sender:
            # NOTE: a unit speaks only for itself: its enrolled key signed the message, so the
            # message must be about that unit and no other.
            raise IdentityRefused("not-own-name", f"unit {msg.sender} may not speak for unit {unit}")
        if msg.type == MsgType.STARTUP:
            return await self._startup(unit, msg.body, peer)
        if msg.type == MsgType.STORAGE_INFO:
            return await self._storage_info(unit, msg.body)
        if msg.type == MsgType.HEARTBEAT:
            return {"state": await self._heartbeat(unit, msg.body)}
        if msg.type == MsgType.SHUTDOWN:
            return {"offline": await self.unit_down(unit, "offline")}
        raise InvalidInput(f"the station does not take {msg.type.name} messages")

    async def _heartbeat(self, unit: str, body: dict[str, Any]) -> str:
        health = body.get("health", "ok")
        if health not in ("ok", "degraded"):
            raise InvalidInput("field 'health' must be 'ok' or 'degraded'")
        detail = body.get("health_detail")
        if detail is not None and not isinstance(detail, str):
            raise InvalidInput("field 'health_detail' must be a string")
        state: str = await run_in_threadpool(self._in_tx, pool.record_heartbeat, unit, health,
                                             detail[:255] if detail else None)
        return state

    def _in_tx(self, fn: Any, *args: Any) -> Any:
        with self.db.session() as s:
            return fn(s, *args)

    async def _startup(self, unit: str, body: dict[str, Any], peer: Peer) -> dict[str, Any]:
        portal = _str(body, "portal_address") or ""
        portal_port = _port(body, "portal_port", 3260)
        dns_name = _str(body, "dns_name", required=False)
        version = str(body.get("agent_version", ""))[:32]
        await self.unit_started(unit, peer, portal, portal_port, dns_name, version)
        return {"station_version": __version__}

    async def unit_started(self, unit: str, control: Peer, portal_address: str, portal_port: int = 3260,
                           dns_name: str | None = None, agent_version: str = "") -> None:
        """A unit is up (UDP STARTUP, or an SNMP coldStart/linkUp): store it, ask for its storage info.

        The one path every "unit is up" announcement takes, whatever carried it.
        """
        check_unit_name(unit)
        await run_in_threadpool(self._in_tx, pool.record_startup, unit, control, portal_address,
                                portal_port, dns_name, agent_version)
        log.info("unit %s started (control %s:%d, portal %s:%d); asking for its storage info",
                 unit, control[0], control[1], portal_address, portal_port)
        self._background(self._ask_storage_info(unit, control))

    async def unit_trap_up(self, unit: str) -> None:
        """An SNMP coldStart/linkUp named a known unit: ask it, at the control address the signed
        protocol gave, for its storage info. A trap never changes a unit's addresses or names
        (v2c is spoofable); the unit's signed answer is what brings it back online."""
        def control() -> Peer:
            with self.db.session() as s:
                u = pool.get_unit(s, unit)
                return (u.control_host, u.control_port)

        peer = await run_in_threadpool(control)
        log.info("SNMP says unit %s is up; asking it for its storage info at %s:%d", unit, *peer)
        self._background(self._ask_storage_info(unit, peer))

    async def unit_down(self, unit: str, state: str = "offline") -> int:
        """A unit went away (UDP SHUTDOWN, SNMP linkDown, liveness): its volumes go offline, kept."""
        self._downed[unit] = time.monotonic()
        n: int = await run_in_threadpool(self._in_tx, pool.record_shutdown, unit, state)
        log.info("unit %s is %s: %d volumes offline", unit, state, n)
        return n

    async def _ask_storage_info(self, unit: str, peer: Peer) -> None:
        assert self.endpoint is not None
        self._asked[unit] = time.monotonic()
        try:
            await self.endpoint.send(peer, MsgType.NEED_STORAGE_INFO, {"unit": unit}, timeout=30)
        except DvsanError as e:
            log.warning("unit %s did not take NEED_STORAGE_INFO: %s", unit, e)

    async def _storage_info(self, unit: str, body: dict[str, Any]) -> dict[str, Any]:
        raw = body.get("partitions")
        if not isinstance(raw, list):
            raise InvalidInput("field 'partitions' must be a list")
        parts = [Partition.from_wire(p) for p in raw]
        if len({p.device for p in parts}) != len(parts):
            raise InvalidInput("storage info lists a device twice")
        # NOTE: a report asked for before the unit went down (a linkDown trap or SHUTDOWN that
        # overtook it) must not bring the unit back online: only a newer request can.
        fresh = self._asked.get(unit, -1.0) >= self._downed.get(unit, -1.0)
        change = await run_in_threadpool(self._in_tx, pool.record_storage_info, unit, parts, fresh)
        log.info("pool updated from unit %s: %d online (%d new), %d missing, %d changed under an "
                 "assignment", unit, change.online, change.added, change.missing, change.changed)
        self._background(self._push_quietly(unit))
        return {"online": change.online, "added": change.added, "missing": change.missing,
                "changed": change.changed}

    async def _push_quietly(self, unit: str) -> None:
        try:
            await self.push_exports(unit)
        except DvsanError as e:
            log.warning("could not push exports to unit %s: %s", unit, e)

    async def push_exports(self, unit: str) -> dict[str, Any]:
        """Send a unit its complete desired state and wait until it has applied what it can.

        Serialised per unit: the desired state is read inside the lock, so a later push always
        carries a state at least as new as an earlier one. The ACK lists the exports the unit
        refused (each with its reason); they are recorded on their assignments. Raises Conflict
        if the unit refused the whole message, Unavailable if it did not answer or is busy.
        """
        assert self.endpoint is not None
        lock = self._locks.setdefault(unit, asyncio.Lock())
        async with lock:
            def read() -> tuple[Peer, str, pool.DesiredState]:
                with self.db.session() as s:
                    u = pool.get_unit(s, unit)
                    if u.state != "online":
                        raise Conflict(f"unit {unit} is {u.state}")
                    return (u.control_host, u.control_port), u.portal_address, pool.desired_state(s, unit)

            control, portal, state = await run_in_threadpool(read)
            body = {"unit": unit, "pool_id": state.pool_id, "generation": state.generation,
                    "portal_address": portal, "exports": [e.to_wire() for e in state.exports],
                    "drop": state.drop}
            ack = await self.endpoint.send(control, MsgType.EXPORTS, body, timeout=self.export_timeout)
            if ack.get("status") != "ok":
                error = ack.get("error", "unknown error")
                if ack.get("busy"):
                    raise Unavailable(f"unit {unit} is busy: {error}")
                raise Conflict(f"unit {unit} could not apply its exports: {error}")
            refused = _refusals(ack)
            for target, reason in refused.items():
                log.warning("unit %s refused export %s: %s", unit, target, reason)
            await run_in_threadpool(self._in_tx, pool.record_export_results, unit, state, refused)
            return {**ack, "refused": refused}


def _refusals(ack: dict[str, Any]) -> dict[str, str]:
    """target IQN -> reason, from an EXPORTS ACK's 'refused' list (malformed entries ignored)."""
    out: dict[str, str] = {}
    raw = ack.get("refused", [])
    for r in raw if isinstance(raw, list) else []:
        if isinstance(r, dict) and isinstance(r.get("target_iqn"), str):
            out[r["target_iqn"]] = str(r.get("reason", "no reason given"))
    return out


__all__ = ["AutoconfServer", "NotFound"]
