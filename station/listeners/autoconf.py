"""The station's listener of the automatic configuration protocol (signed UDP): decode, delegate.

Sequence: unit STARTUP -> station stores unit, ACKs, sends NEED_STORAGE_INFO -> unit sends
STORAGE_INFO -> station updates the pool, ACKs, sends EXPORTS (the unit's desired state).
SHUTDOWN -> the unit's volumes go offline. What each message means lives in
station/services/units.py; this module only checks the message's shape and who sent it.
"""

import logging
from typing import Any

from dvsan import __version__
from dvsan.endpoint import Endpoint, Peer, Verifier
from dvsan.errors import IdentityRefused, InvalidInput
from dvsan.identity import Signer
from dvsan.model import Partition
from dvsan.naming import check_unit_name
from dvsan.protocol import Message, MsgType
from station.db.tables import UnitState
from station.services.disks import PartitionService, parse_reports
from station.services.stats import StatsService
from station.services.units import UnitService
from station.services.wipes import WipeService

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


class AutoconfListener:
    """Owns the station's UDP endpoint; is the services' Messenger to units."""

    def __init__(self, key: bytes, *, signer: Signer | None = None, verifier: Verifier | None = None):
        # signer: the station's key (every message and ACK is signed); verifier: the enrolment
        # gate (station/services/enrolment.py), which names the key a unit's messages must be signed with
        self.key, self.signer, self.verifier = key, signer, verifier
        self.endpoint: Endpoint | None = None
        self.units: UnitService | None = None
        self.wipes: WipeService | None = None
        self.monitor: StatsService | None = None     # takes STATS (monitoring samples)
        self.partitions: PartitionService | None = None   # set by the app: PARTITION_STATUS

    async def start(self, units: UnitService, wipes: WipeService, host: str, port: int) -> None:
        self.units, self.wipes = units, wipes
        self.endpoint = await Endpoint.open(self.key, self.handle, host, port, name="station",
                                            signer=self.signer, verifier=self.verifier)
        log.info("auto-configuration protocol listening on udp %s:%d", *self.endpoint.address)

    def stop(self) -> None:
        if self.endpoint:
            self.endpoint.close()

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.endpoint.stats) if self.endpoint else {}

    async def send(self, peer: Peer, mtype: MsgType, body: dict[str, Any], *,
                   timeout: float | None = 10.0) -> dict[str, Any]:
        assert self.endpoint is not None, "the listener is not started"
        return await self.endpoint.send(peer, mtype, body, timeout=timeout)

    async def handle(self, msg: Message, peer: Peer) -> dict[str, Any] | None:
        assert self.units is not None and self.wipes is not None
        unit = check_unit_name(_str(msg.body, "unit") or "")
        if self.verifier is not None and unit != msg.sender:
            # NOTE: a unit speaks only for itself: its enrolled key signed the message, so the
            # message must be about that unit and no other.
            raise IdentityRefused("not-own-name", f"unit {msg.sender} may not speak for unit {unit}")
        if msg.type == MsgType.STARTUP:
            await self.units.unit_started(
                unit, peer, _str(msg.body, "portal_address") or "", _port(msg.body, "portal_port", 3260),
                _str(msg.body, "dns_name", required=False), str(msg.body.get("agent_version", ""))[:32])
            return {"station_version": __version__}
        if msg.type == MsgType.STORAGE_INFO:
            disks = parse_reports(msg.body["disks"]) if "disks" in msg.body else None
            change = await self.units.storage_info(unit, _partitions(msg.body), disks)
            return {"online": change.online, "added": change.added, "missing": change.missing,
                    "changed": change.changed}
        if msg.type == MsgType.HEARTBEAT:
            health = msg.body.get("health", "ok")
            if health not in ("ok", "degraded"):
                raise InvalidInput("field 'health' must be 'ok' or 'degraded'")
            detail = msg.body.get("health_detail")
            if detail is not None and not isinstance(detail, str):
                raise InvalidInput("field 'health_detail' must be a string")
            return {"state": await self.units.heartbeat(unit, health, detail[:255] if detail else None)}
        if msg.type == MsgType.WIPE_STATUS:
            return await self.wipes.status(unit, msg.body)
        if msg.type == MsgType.STATS and self.monitor is not None:
            return await self.monitor.report(unit, msg.body)
        if msg.type == MsgType.PARTITION_STATUS and self.partitions is not None:
            return await self.partitions.status(unit, msg.body)
        if msg.type == MsgType.SHUTDOWN:
            return {"offline": await self.units.unit_down(unit, UnitState.OFFLINE)}
        raise InvalidInput(f"the station does not take {msg.type.name} messages")


def _partitions(body: dict[str, Any]) -> list[Partition]:
    raw = body.get("partitions")
    if not isinstance(raw, list):
        raise InvalidInput("field 'partitions' must be a list")
    parts = [Partition.from_wire(p) for p in raw]
    if len({p.device for p in parts}) != len(parts):
        raise InvalidInput("storage info lists a device twice")
    return parts
