"""The unit agent's SNMP notifications (pysnmp): coldStart, linkUp and linkDown to every destination."""

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence

from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity.rfc3413 import ntforg
from pysnmp.error import PySnmpError
from pysnmp.hlapi.v3arch.asyncio import (
    USM_AUTH_HMAC96_SHA,
    USM_PRIV_CFB128_AES,
    CommunityData,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
)
from pysnmp.hlapi.v3arch.asyncio.lcd import NotificationOriginatorLcdConfigurator
from pysnmp.proto import rfc1902

from dvsan.errors import InvalidInput, Unavailable
from dvsan.traps import (
    Interface,
    TrapName,
    TrapSecurity,
    UnitEvent,
    UnitIdentity,
    Varbind,
    notification,
)

log = logging.getLogger(__name__)

# NOTE: pysnmp's hlapi send_notification() resolves every varbind through a MIB view (and, with
# pysmi installed, a MIB compiler): 0.4 s for the first trap, for nothing, since dvsan.traps
# already holds the OIDs and types. So the agent does what send_notification does underneath:
# the hlapi's own target configurator, then the notification originator with raw varbinds.
_LCD = NotificationOriginatorLcdConfigurator()


def _pysnmp_value(kind: str, value: object) -> object:
    if kind == "octets":
        return rfc1902.OctetString(str(value).encode())
    if kind == "unsigned":
        return rfc1902.Unsigned32(int(value))  # type: ignore[call-overload]
    if kind == "integer":
        return rfc1902.Integer32(int(value))  # type: ignore[call-overload]
    return rfc1902.ObjectIdentifier(value)


class TrapSender:
    """Sends dvsan's notifications to a list of destinations (the station, a site's monitoring).

    The API the rest of the agent uses: `send_cold_start()` once the agent's protocol endpoint is
    open, `send_link_up()` / `send_link_down()` when the storage link changes (link watch), and
    `send_link_down(shutdown=True)` as the unit goes down; then `aclose()`.
    Traps are unacknowledged UDP: a destination that is down simply misses them.
    """

    def __init__(self, destinations: Sequence[tuple[str, int]], security: TrapSecurity,
                 identity: Callable[[], UnitIdentity], engine_id: bytes,
                 interface: str | None = None, source_host: str | None = None):
        if not destinations:
            raise InvalidInput("no SNMP trap destination")
        if not 5 <= len(engine_id) <= 32:
            raise InvalidInput("an SNMP engine ID is 5-32 octets")
        self.destinations = list(destinations)
        self.security = security
        self.identity = identity
        self.engine_id = engine_id
        self.interface = interface          # the storage interface, for linkUp/linkDown varbinds
        self.source_host = source_host if source_host not in (None, "", "0.0.0.0", "::") else None
        self.sent = 0
        self._engine: SnmpEngine | None = None

    def describe(self) -> str:
        """For logs: where the notifications go and how they are signed (no secrets)."""
        dests = ", ".join(f"{h}:{p}" for h, p in self.destinations)
        return f"{dests} ({self.security.describe()}, engine ID 0x{self.engine_id.hex()})"

    def _auth(self) -> CommunityData | UsmUserData:
        user = self.security.user
        if user is None:
            return CommunityData(self.security.community, mpModel=1)    # 1: SNMPv2c
        return UsmUserData(user.name, authKey=user.auth_key, privKey=user.priv_key,
                           authProtocol=USM_AUTH_HMAC96_SHA, privProtocol=USM_PRIV_CFB128_AES)

    def _interface(self, ifname: str | None) -> Interface | None:
        name = ifname or self.interface
        if not name:
            return None
        try:
            return Interface(socket.if_nametoindex(name), name)
        except OSError:
            log.warning("storage interface %s not found: link notification without IF-MIB varbinds", name)
            return None

    async def send_cold_start(self) -> int:
        """SNMPv2-MIB coldStart: the agent has (re)started. Returns how many destinations took it."""
        return await self._send("coldStart", UnitEvent.BOOT)

    async def send_link_up(self, ifname: str | None = None) -> int:
        """IF-MIB linkUp: the storage link is back (the station asks for the unit's storage again)."""
        return await self._send("linkUp", UnitEvent.LINK_UP, ifname)

    async def send_link_down(self, ifname: str | None = None, shutdown: bool = False) -> int:
        """IF-MIB linkDown: the storage link went down, or (`shutdown`) the unit is going down."""
        return await self._send("linkDown", UnitEvent.SHUTDOWN if shutdown else UnitEvent.LINK_DOWN, ifname)

    async def _send(self, trap: TrapName, event: UnitEvent, ifname: str | None = None) -> int:
        unit = self.identity()
        varbinds = [(oid, _pysnmp_value(kind, value)) for oid, kind, value in self._varbinds(trap, unit, event, ifname)]
        if self._engine is None:
            self._engine = SnmpEngine(snmpEngineID=rfc1902.OctetString(self.engine_id))
        failures: list[str] = []
        for host, port in self.destinations:
            errors: list[object] = []
            try:
                target = await UdpTransportTarget.create((host, port), timeout=1, retries=0)
                if self.source_host:
                    target.set_local_address((self.source_host, 0))
                name = _LCD.configure(self._engine, self._auth(), target, "trap", b"")
                # a trap has no answer: the callback runs only if sending failed
                ntforg.NotificationOriginator().send_varbinds(
                    self._engine, name, None, b"", varbinds, lambda *a, out=errors: out.append(a[2]))
            except (PySnmpError, OSError) as e:
                errors.append(e)
            if errors:
                failures.append(f"{host}:{port}: {errors[0]}")
                continue
            self.sent += 1
        await self._flush()
        n = len(self.destinations) - len(failures)
        log.info("%s (%s) of unit %s sent to %d of %d destination(s)", trap, event.name.lower(),
                 unit.name, n, len(self.destinations))
        if failures:
            log.warning("%s not sent to: %s", trap, "; ".join(failures))
            if n == 0:
                raise Unavailable(f"{trap} reached no destination: {'; '.join(failures)}")
        return n

    def _varbinds(self, trap: TrapName, unit: UnitIdentity, event: UnitEvent,
                  ifname: str | None) -> list[Varbind]:
        return notification(trap, unit, event, self._interface(ifname) if trap != "coldStart" else None)

    async def _flush(self) -> None:
        # NOTE: pysnmp opens its client socket in the background and queues what is sent before
        # the socket exists; wait for it so a trap sent just before exit really leaves.
        assert self._engine is not None
        dispatcher = self._engine.transport_dispatcher
        transport = dispatcher.get_transport(udp.DOMAIN_NAME) if dispatcher is not None else None
        opening = getattr(transport, "_lport", None)
        if isinstance(opening, asyncio.Future) and not opening.done():
            try:
                await asyncio.wait_for(asyncio.shield(opening), 2.0)
            except (TimeoutError, OSError) as e:
                log.warning("SNMP socket did not open: %s", e)

    async def aclose(self) -> None:
        """Close the SNMP socket (after the last notification has left)."""
        if self._engine is not None:
            await self._flush()
            self._engine.close_dispatcher()
            self._engine = None
