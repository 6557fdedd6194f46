"""The station's SNMP notification receiver (pysnmp): units' coldStart/linkUp/linkDown drive the pool.

A coldStart or linkUp carrying a unit's identity (DVSAN-MIB) takes the same path as the UDP
STARTUP message: the station asks the unit for its storage info at the trap's source address
and the unit's control port. A linkDown marks the unit's volumes offline. Traps that fail
authentication (unknown community, unknown v3 user, wrong key) are rejected by pysnmp and
counted here; traps that authenticate but are not a dvsan unit's, or carry bad values, are
counted and ignored. Neither ever changes the pool.
"""

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

from pyasn1.codec.ber import decoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ
from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import ntfrcv
from pysnmp.proto import errind, rfc1902
from pysnmp.proto.secmod.rfc3414.service import SnmpUSMSecurityModel, UsmSecurityParameters

from dvsan.endpoint import Peer
from dvsan.errors import AdapterError, DvsanError, NotFound, ProtocolError
from dvsan.traps import OID, UsmUser, Value, decode_notification

log = logging.getLogger(__name__)

# SNMP engines the station learns v3 users for; a flood of made-up engine IDs stops here.
MAX_LEARNED_ENGINES = 4096
LOG_EVERY = 60.0   # seconds between two log lines for the same (what, source)

_REJECT_REASONS: list[tuple[type, str]] = [
    (errind.UnknownCommunityName, "bad-community"),
    (errind.UnknownSecurityName, "unknown-user"),
    (errind.UnknownUserName, "unknown-user"),
    (errind.AuthenticationFailure, "bad-auth"),
    (errind.WrongDigest, "bad-auth"),
    (errind.DecryptionError, "bad-priv"),
    (errind.UnsupportedSecurityLevel, "bad-level"),
    (errind.NotInTimeWindow, "not-in-time-window"),
    (errind.UnknownEngineID, "unknown-engine"),
]


_MALFORMED_COUNTERS = [("__SNMPv2-MIB", "snmpInASNParseErrs"), ("__SNMPv2-MIB", "snmpInBadVersions"),
                       ("__SNMP-MPD-MIB", "snmpInvalidMsgs"), ("__SNMP-MPD-MIB", "snmpUnknownSecurityModels")]


def reject_reason(indication: object) -> str:
    """The counter suffix of a pysnmp error indication ('bad-community', 'bad-auth'...)."""
    return next((r for t, r in _REJECT_REASONS if isinstance(indication, t)), "other")


class UnitEvents(Protocol):
    """What the receiver drives: station.services.units.UnitService."""

    async def unit_trap_up(self, unit: str) -> None: ...

    async def unit_down(self, unit: str, state: str = "offline") -> int: ...


def plain(value: Any) -> Value:
    """A pysnmp varbind value as dvsan.traps wants it: bytes, int, OID tuple, or None."""
    if isinstance(value, univ.Null):    # also noSuchObject & co.; pyasn1 makes Null an OctetString
        return None
    if isinstance(value, univ.ObjectIdentifier):
        return tuple(value)
    if isinstance(value, univ.OctetString):
        return value.asOctets()
    if isinstance(value, univ.Integer):
        return int(value)
    return None


class _LearningUsm(SnmpUSMSecurityModel):  # type: ignore[misc]
    """USM that takes v3 notifications of a configured user from any sender's engine ID.

    NOTE: a v3 trap is authenticated with keys localized to the *sender's* engine ID (RFC 3414),
    so a receiver must know every sender's engine ID in advance (net-snmp: createUser -e). The
    station does not know units before they speak, so when a message names a configured user
    under an engine ID not seen before, the user is added for that engine ID (from the master
    keys, which are all the station holds anyway) just before pysnmp checks the message, and
    removed again if the message does not authenticate: only engines that proved they hold the
    user's keys stay, at most MAX_LEARNED_ENGINES of them.
    """

    def __init__(self, users: Sequence[UsmUser]):
        super().__init__()
        self.users = {u.name.encode(): u for u in users}
        # NOTE: turning a pass phrase into a key hashes 1 MB (RFC 3414 A.2); do it once per user,
        # so learning an engine (or refusing a forged one) only costs the cheap localization.
        self.masters = {u.name.encode(): _master_keys(u) for u in users}
        self.learned: set[tuple[bytes, bytes]] = set()
        self._full_warned = False

    def process_incoming_message(self, snmpEngine: Any, messageProcessingModel: Any, maxMessageSize: Any,
                                 securityParameters: Any, securityModel: Any, securityLevel: Any,
                                 wholeMsg: Any, msg: Any) -> Any:
        added = self._maybe_learn(snmpEngine, securityParameters)
        try:
            result = super().process_incoming_message(snmpEngine, messageProcessingModel, maxMessageSize,
                                                      securityParameters, securityModel, securityLevel,
                                                      wholeMsg, msg)
        except Exception:
            # whatever went wrong, an engine that did not authenticate is not kept
            if added is not None:
                config.delete_v3_user(snmpEngine, added[1], securityEngineId=rfc1902.OctetString(added[0]))
            raise
        if added is not None:
            self.learned.add(added)
            log.info("SNMPv3 user %s authenticated from engine 0x%s", added[1].decode(errors="replace"),
                     added[0].hex())
        return result

    def _maybe_learn(self, snmp_engine: Any, security_parameters: Any) -> tuple[bytes, bytes] | None:
        try:
            params, _ = decoder.decode(security_parameters, asn1Spec=UsmSecurityParameters())
            engine_id, user = bytes(params[0]), bytes(params[3])
        except (PyAsn1Error, TypeError, ValueError):
            return None    # pysnmp counts and drops it
        local = bytes(snmp_engine.snmpEngineID)
        if (user not in self.users or not 5 <= len(engine_id) <= 32 or engine_id == local
                or (engine_id, user) in self.learned):
            return None
        if len(self.learned) >= MAX_LEARNED_ENGINES:
            if not self._full_warned:
                log.warning("SNMPv3: %d sender engines known, not learning more", len(self.learned))
                self._full_warned = True
            return None
        auth, priv = self.masters[user]
        config.add_v3_user(snmp_engine, self.users[user].name, AUTH, auth, PRIV, priv,
                           securityEngineId=rfc1902.OctetString(engine_id),
                           authKeyType=config.USM_KEY_TYPE_MASTER, privKeyType=config.USM_KEY_TYPE_MASTER)
        return engine_id, user


AUTH, PRIV = config.USM_AUTH_HMAC96_SHA, config.USM_PRIV_CFB128_AES


def _master_keys(user: UsmUser) -> tuple[Any, Any]:
    return (config.AUTH_SERVICES[AUTH].hash_passphrase(user.auth_key.encode()),
            config.PRIV_SERVICES[PRIV].hash_passphrase(AUTH, user.priv_key.encode()))


class _GuardedUdp(udp.UdpAsyncioTransport):  # type: ignore[misc]
    """pysnmp's UDP server transport, with whatever pysnmp raises on a datagram caught and counted.

    NOTE: some malformed datagrams make pyasn1 raise TypeError inside pysnmp's receive path
    (pysnmp 7.1), which would otherwise end as an asyncio 'Exception in callback' traceback.
    """

    on_error: Any = None

    def datagram_received(self, datagram: bytes, transportAddress: Any) -> None:
        self.loop.call_soon(self._deliver, transportAddress, datagram)

    def _deliver(self, address: Any, datagram: bytes) -> None:
        try:
            self._callback_function(self, address, datagram)
        except Exception as e:  # noqa: BLE001 - a peer's bytes must never stop the receiver
            if self.on_error is not None:
                self.on_error(address, e)


class _GuardedUdp6(_GuardedUdp, udp6.Udp6AsyncioTransport):  # type: ignore[misc]
    pass


class TrapReceiver:
    """A pysnmp notification receiver on one UDP port, feeding unit up/down events to `events`."""

    def __init__(self, events: UnitEvents, communities: Sequence[str] = (),
                 users: Sequence[UsmUser] = ()):
        if not communities and not users:
            raise AdapterError("an SNMP receiver needs a community or an SNMPv3 user")
        self.events = events
        self.communities = list(communities)
        self.users = list(users)
        self.address: Peer | None = None
        self.counts: Counter[str] = Counter()
        self._engine: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._logged: dict[tuple[str, str], float] = {}

    async def start(self, host: str, port: int) -> None:
        """Bind `host:port` (UDP) and take notifications; AdapterError if the port cannot be had."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)" if port < 1024 else ""
            raise AdapterError(f"cannot listen for SNMP traps on udp {host}:{port}: {e.strerror}{hint}") from e
        sock.setblocking(False)
        self.address = sock.getsockname()[:2]
        eng = engine.SnmpEngine()
        usm = _LearningUsm(self.users)
        eng.security_models[usm.SECURITY_MODEL_ID] = usm
        transport = (_GuardedUdp6 if family == socket.AF_INET6 else _GuardedUdp)()
        transport.on_error = self._malformed
        domain = udp6.DOMAIN_NAME if family == socket.AF_INET6 else udp.DOMAIN_NAME
        config.add_transport(eng, domain, transport.open_server_mode(sock=sock))
        for i, community in enumerate(self.communities):
            config.add_v1_system(eng, f"dvsan-community-{i}", community)
        for user in self.users:
            # for informs, whose authoritative engine is the station's own
            config.add_v3_user(eng, user.name, AUTH, user.auth_key, PRIV, user.priv_key)
        eng.observer.register_observer(self._rejected, "rfc2576.prepareDataElements:sm-failure",
                                       "rfc3412.prepareDataElements:sm-failure")
        ntfrcv.NotificationReceiver(eng, self._received)
        self._engine = eng
        log.info("SNMP notification receiver on udp %s:%d (%d community(ies), SNMPv3 users: %s)",
                 self.address[0], self.address[1], len(self.communities),
                 ", ".join(u.name for u in self.users) or "none")

    async def stop(self) -> None:
        """Stop listening; notifications being acted on are cancelled."""
        for t in list(self._tasks):
            t.cancel()
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None

    @property
    def stats(self) -> dict[str, int]:
        """Counters, all prefixed snmp_: received, accepted, rejected(_reason), ignored(_reason)."""
        out = {"snmp_listening": int(self._engine is not None)}
        out.update({f"snmp_{k}": v for k, v in sorted(self.counts.items())})
        # pysnmp counts the messages it cannot parse or place in its own MIB, not through an
        # observer: bad BER, unknown version, bad msgFlags, unknown security model
        parse_errors = sum(self._mib_counter(module, name) for module, name in _MALFORMED_COUNTERS)
        if parse_errors:
            out["snmp_rejected_malformed"] = out.get("snmp_rejected_malformed", 0) + parse_errors
        out["snmp_rejected"] = self.counts["rejected"] + parse_errors
        for k in ("received", "accepted", "ignored"):
            out.setdefault(f"snmp_{k}", 0)
        return out

    def _mib_counter(self, module: str, name: str) -> int:
        if self._engine is None:
            return 0
        try:
            (sym,) = self._engine.get_mib_builder().import_symbols(module, name)
            return int(sym.syntax)
        except Exception:  # noqa: BLE001 - a missing counter must not break the stats route
            return 0

    def _log(self, what: str, source: str, level: int, msg: str, *args: Any) -> None:
        # Once per (what, source) a minute: a noisy or hostile sender must not flood the log.
        now = time.monotonic()
        key = (what, source)
        if now - self._logged.get(key, -LOG_EVERY) >= LOG_EVERY:
            self._logged[key] = now
            if len(self._logged) > 10_000:
                self._logged.clear()
            log.log(level, msg, *args)

    def _malformed(self, address: Any, e: Exception) -> None:
        self.counts["rejected"] += 1
        self.counts["rejected_malformed"] += 1
        source = _host(address)
        self._log("rejected-malformed", source, logging.WARNING,
                  "SNMP datagram from %s rejected (malformed): %s", source, type(e).__name__)

    def _rejected(self, snmp_engine: Any, execpoint: str, variables: dict[str, Any], cb_ctx: Any) -> None:
        info = variables.get("statusInformation") or {}
        indication = info.get("errorIndication") if hasattr(info, "get") else None
        reason = reject_reason(indication)
        self.counts["rejected"] += 1
        self.counts[f"rejected_{reason}"] += 1
        source = _host(variables.get("transportAddress"))
        self._log(f"rejected-{reason}", source, logging.WARNING,
                  "SNMP message from %s rejected (%s): %s", source, reason, indication)

    def _received(self, snmp_engine: Any, state_reference: Any, context_engine_id: Any, context_name: Any,
                  var_binds: Any, cb_ctx: Any) -> None:
        ctx = snmp_engine.observer.get_execution_context("rfc3412.receiveMessage:request")
        source = _host(ctx.get("transportAddress"))
        self.counts["received"] += 1
        try:
            vbs: list[tuple[OID, Value]] = [(tuple(oid), plain(val)) for oid, val in var_binds]
            event = decode_notification(vbs)
        except ProtocolError as e:
            self._ignored(e.reason, source, str(e).removeprefix(f"{e.reason}: "))
            return
        except Exception as e:  # noqa: BLE001 - whatever a peer sends must not stop the receiver
            self._ignored("bad-value", source, f"undecodable notification: {e}")
            return
        task = asyncio.ensure_future(self._act(event, source))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ignored(self, reason: str, source: str, detail: str) -> None:
        self.counts["ignored"] += 1
        self.counts[f"ignored_{reason}"] += 1
        self._log(f"ignored-{reason}", source, logging.WARNING,
                  "SNMP notification from %s ignored (%s): %s", source, reason, detail)

    async def _act(self, event: Any, source: str) -> None:
        try:
            if event.identity is not None:
                # NOTE: only the unit's name is taken from a trap (v2c is clear text and its source
                # spoofable): addresses, ports and names come from the signed protocol alone.
                u = event.identity
                log.info("SNMP %s from unit %s at %s", event.trap, u.name, source)
                await self.events.unit_trap_up(u.name)
            else:
                log.info("SNMP %s from unit %s at %s: unit %s", event.trap, event.unit, source, event.state)
                await self.events.unit_down(event.unit, event.state)
        except DvsanError as e:
            reason = "unknown-unit" if isinstance(e, NotFound) else "refused"
            self._ignored(reason, source, f"{event.trap} from unit {event.unit}: {e}")
            return
        self.counts["accepted"] += 1
        self.counts[f"accepted_{event.trap}"] += 1


def _host(address: Any) -> str:
    try:
        return str(address[0])
    except (TypeError, IndexError):
        return "?"
