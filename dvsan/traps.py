"""dvsan's SNMP notifications as pure data: DVSAN-MIB object identifiers, varbinds out, events in."""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import ip_address
from pathlib import Path
from typing import Literal

from dvsan.addresses import parse_hostport
from dvsan.errors import InvalidInput, ProtocolError
from dvsan.naming import check_unit_name

OID = tuple[int, ...]
# A varbind value as the adapters hand it over: OCTET STRING -> bytes, any integer type -> int,
# OBJECT IDENTIFIER -> tuple of ints, anything else (NULL, noSuchObject...) -> None.
Value = bytes | int | OID | None
# What a sender puts on the wire: (oid, SMI type, value); the adapter picks the pysnmp class.
Kind = Literal["octets", "unsigned", "integer", "oid"]
Varbind = tuple[OID, Kind, str | int | OID]

MIB_DIR = Path(__file__).with_name("mibs")
"""Folder of DVSAN-MIB.txt and the IETF/IANA modules it and the notifications need (net-snmp: -M +DIR)."""

# NOTE: provisional arc: 32473 is RFC 5612's enterprise number for documentation (dvsan has no
# IANA Private Enterprise Number yet); 7479 is dvsan's protocol port. See DVSAN-MIB's DESCRIPTION.
PROVISIONAL_PEN = 32473
DVSAN_MIB: OID = (1, 3, 6, 1, 4, 1, PROVISIONAL_PEN, 7479)
DVSAN_UNIT: OID = DVSAN_MIB + (1, 1)
# Scalars sent with instance suffix .0
UNIT_NAME: OID = DVSAN_UNIT + (1, 0)
UNIT_STORAGE_ADDRESS: OID = DVSAN_UNIT + (2, 0)
UNIT_PORTAL_PORT: OID = DVSAN_UNIT + (3, 0)
UNIT_CONTROL_PORT: OID = DVSAN_UNIT + (4, 0)
UNIT_AGENT_VERSION: OID = DVSAN_UNIT + (5, 0)
UNIT_DNS_NAME: OID = DVSAN_UNIT + (6, 0)
UNIT_EVENT: OID = DVSAN_UNIT + (7, 0)

# SNMPv2-MIB (RFC 3418) and IF-MIB (RFC 2863)
SYS_UPTIME: OID = (1, 3, 6, 1, 2, 1, 1, 3, 0)
SNMP_TRAP_OID: OID = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)
COLD_START: OID = (1, 3, 6, 1, 6, 3, 1, 1, 5, 1)
LINK_DOWN: OID = (1, 3, 6, 1, 6, 3, 1, 1, 5, 3)
LINK_UP: OID = (1, 3, 6, 1, 6, 3, 1, 1, 5, 4)
IF_ENTRY: OID = (1, 3, 6, 1, 2, 1, 2, 2, 1)
IF_INDEX, IF_DESCR, IF_ADMIN_STATUS, IF_OPER_STATUS = (IF_ENTRY + (c,) for c in (1, 2, 7, 8))
IF_STATUS_UP, IF_STATUS_DOWN = 1, 2

TrapName = Literal["coldStart", "linkUp", "linkDown"]
TRAP_NAMES: dict[OID, TrapName] = {COLD_START: "coldStart", LINK_UP: "linkUp", LINK_DOWN: "linkDown"}


class UnitEvent(IntEnum):
    """DVSAN-MIB dvsanUnitEvent: why the unit sent a notification."""

    BOOT = 1
    LINK_UP = 2
    LINK_DOWN = 3
    SHUTDOWN = 4


@dataclass(frozen=True)
class UnitIdentity:
    """What a notification says about the unit that sent it."""

    name: str
    storage_address: str
    portal_port: int = 3260
    control_port: int = 7478
    agent_version: str = ""
    dns_name: str | None = None


@dataclass(frozen=True)
class Interface:
    """The unit's storage interface, for the IF-MIB varbinds of linkUp/linkDown."""

    index: int
    name: str


@dataclass(frozen=True)
class TrapEvent:
    """A dvsan notification understood: a unit is up (ask its storage info) or down (`state`)."""

    trap: TrapName
    unit: str
    identity: UnitIdentity | None     # complete for coldStart/linkUp; None for linkDown
    state: str | None = None          # linkDown: 'link-down' or 'offline' (the unit shuts down)


def notification(trap: TrapName, unit: UnitIdentity, event: UnitEvent,
                 interface: Interface | None = None) -> list[Varbind]:
    """The varbinds of one notification, snmpTrapOID first (the sender adds sysUpTime before it).

    linkUp/linkDown carry IF-MIB's ifIndex, ifAdminStatus, ifOperStatus (the notification's
    OBJECTS) and ifDescr of the storage interface when it is known, then the dvsan objects.
    """
    trap_oid = {"coldStart": COLD_START, "linkUp": LINK_UP, "linkDown": LINK_DOWN}[trap]
    vbs: list[Varbind] = [(SNMP_TRAP_OID, "oid", trap_oid)]
    if trap != "coldStart" and interface is not None:
        status = IF_STATUS_UP if trap == "linkUp" else IF_STATUS_DOWN
        i = (interface.index,)
        vbs += [(IF_INDEX + i, "integer", interface.index),
                (IF_ADMIN_STATUS + i, "integer", status),
                (IF_OPER_STATUS + i, "integer", status),
                (IF_DESCR + i, "octets", interface.name)]
    vbs += [(UNIT_NAME, "octets", unit.name),
            (UNIT_STORAGE_ADDRESS, "octets", unit.storage_address),
            (UNIT_PORTAL_PORT, "unsigned", unit.portal_port),
            (UNIT_CONTROL_PORT, "unsigned", unit.control_port),
            (UNIT_AGENT_VERSION, "octets", unit.agent_version[:32]),
            (UNIT_EVENT, "integer", int(event))]
    if unit.dns_name:
        vbs.append((UNIT_DNS_NAME, "octets", unit.dns_name))
    return vbs


def _text(vbs: dict[OID, Value], oid: OID, what: str, max_len: int, min_len: int = 1) -> str | None:
    if oid not in vbs:
        return None
    v = vbs[oid]
    if not isinstance(v, bytes):
        raise ProtocolError("bad-value", f"{what} is not an OCTET STRING")
    try:
        text = v.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError("bad-value", f"{what} is not UTF-8 text") from e
    if not min_len <= len(text) <= max_len or not text.isprintable():
        raise ProtocolError("bad-value", f"{what} {text[:80]!r} is empty, too long or not printable")
    return text


def _port(vbs: dict[OID, Value], oid: OID, what: str) -> int | None:
    if oid not in vbs:
        return None
    v = vbs[oid]
    if not isinstance(v, int) or not 1 <= v <= 65535:
        raise ProtocolError("bad-value", f"{what} {v!r} is not a port number")
    return v


def decode_notification(varbinds: Sequence[tuple[OID, Value]]) -> TrapEvent:
    """Understand the varbinds of a received SNMPv2 notification (or raise ProtocolError).

    Reasons: 'not-dvsan' (no snmpTrapOID, or no dvsanUnitName: someone else's trap),
    'other-trap' (a dvsan unit's notification other than coldStart/linkUp/linkDown),
    'bad-value' (a dvsan varbind missing, repeated, of the wrong type or out of range).

    Sample (net-snmp: snmptrap -v 2c -c public STATION '' SNMPv2-MIB::coldStart
    DVSAN-MIB::dvsanUnitName.0 s unit-z DVSAN-MIB::dvsanUnitStorageAddress.0 s 192.0.2.7
    DVSAN-MIB::dvsanUnitControlPort.0 u 7478) arrives as
    [(sysUpTime.0, 123), (snmpTrapOID.0, (1,3,6,1,6,3,1,1,5,1)), (dvsanUnitName.0, b'unit-z'),
    (dvsanUnitStorageAddress.0, b'192.0.2.7'), (dvsanUnitControlPort.0, 7478)].
    """
    vbs: dict[OID, Value] = {}
    for oid, value in varbinds:
        oid = tuple(oid)
        if oid in vbs and oid[:len(DVSAN_MIB)] == DVSAN_MIB:
            raise ProtocolError("bad-value", f"varbind {'.'.join(map(str, oid))} appears twice")
        vbs.setdefault(oid, value)
    trap_oid = vbs.get(SNMP_TRAP_OID)
    if not isinstance(trap_oid, tuple):
        raise ProtocolError("not-dvsan", "no snmpTrapOID.0 varbind")
    if UNIT_NAME not in vbs:
        raise ProtocolError("not-dvsan", f"{_oid_name(trap_oid)} without dvsanUnitName.0")
    name = _text(vbs, UNIT_NAME, "dvsanUnitName", 63) or ""
    try:
        check_unit_name(name)
    except InvalidInput as e:
        raise ProtocolError("bad-value", f"dvsanUnitName: {e}") from e
    trap = TRAP_NAMES.get(trap_oid)
    if trap is None:
        raise ProtocolError("other-trap", f"{_oid_name(trap_oid)} from unit {name}: not acted on")
    event = vbs.get(UNIT_EVENT)
    if UNIT_EVENT in vbs and (not isinstance(event, int) or event not in UnitEvent._value2member_map_):
        raise ProtocolError("bad-value", f"dvsanUnitEvent {event!r} is not one of 1-4")
    if trap == "linkDown":
        state = "offline" if event == UnitEvent.SHUTDOWN else "link-down"
        return TrapEvent(trap, name, None, state)
    address = _text(vbs, UNIT_STORAGE_ADDRESS, "dvsanUnitStorageAddress", 64)
    control_port = _port(vbs, UNIT_CONTROL_PORT, "dvsanUnitControlPort")
    if address is None or control_port is None:
        missing = [n for n, v in (("dvsanUnitStorageAddress", address),
                                  ("dvsanUnitControlPort", control_port)) if v is None]
        raise ProtocolError("bad-value", f"{trap} from unit {name} without {' and '.join(missing)}")
    try:
        ip_address(address)
    except ValueError as e:
        raise ProtocolError("bad-value", f"dvsanUnitStorageAddress {address!r} is not an IP address") from e
    identity = UnitIdentity(
        name=name, storage_address=address,
        portal_port=_port(vbs, UNIT_PORTAL_PORT, "dvsanUnitPortalPort") or 3260,
        control_port=control_port,
        agent_version=_text(vbs, UNIT_AGENT_VERSION, "dvsanUnitAgentVersion", 32, min_len=0) or "",
        dns_name=_text(vbs, UNIT_DNS_NAME, "dvsanUnitDnsName", 253))
    return TrapEvent(trap, name, identity)


def _oid_name(oid: OID) -> str:
    return TRAP_NAMES.get(oid) or ".".join(map(str, oid))


def engine_id_for(unit: str) -> bytes:
    """A unit's default SNMPv3 engine ID (RFC 3411 format): stable, derived from its name.

    0x80 | enterprise number, then format 4 (text) and the name when it fits in 27 octets,
    else format 5 (octets) and the first 16 octets of the name's SHA-256.
    """
    head = (0x80000000 | PROVISIONAL_PEN).to_bytes(4, "big")
    raw = unit.encode()
    if len(raw) <= 27:
        return head + b"\x04" + raw
    return head + b"\x05" + hashlib.sha256(raw).digest()[:16]


USM_MIN_KEY = 8   # RFC 3414 11.2: pass phrases of at least 8 characters


@dataclass(frozen=True)
class UsmUser:
    """An SNMPv3 user for authPriv with HMAC-SHA-96 and CFB128-AES-128 (RFC 3414, RFC 3826).

    The keys are pass phrases; they never appear in repr() or logs.
    """

    name: str
    auth_key: str
    priv_key: str

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 32 or not self.name.isprintable():
            raise InvalidInput("an SNMPv3 user name is 1-32 printable characters")
        for what, key in (("authentication", self.auth_key), ("privacy", self.priv_key)):
            if len(key) < USM_MIN_KEY:
                raise InvalidInput(f"the SNMPv3 {what} key of user {self.name!r} is shorter than "
                                   f"{USM_MIN_KEY} characters (RFC 3414)")

    def __repr__(self) -> str:
        return f"UsmUser(name={self.name!r}, auth_key='****', priv_key='****')"

    __str__ = __repr__


TRAP_PORT = 162


@dataclass(frozen=True)
class TrapSecurity:
    """How the unit signs its notifications: an SNMPv2c community or an SNMPv3 authPriv user."""

    community: str | None = None
    user: UsmUser | None = None

    def __post_init__(self) -> None:
        if self.community is None and self.user is None:
            raise InvalidInput("SNMP notifications need a community (SNMPv2c) or an SNMPv3 user")
        if self.community is not None and self.user is not None:
            raise InvalidInput("give an SNMP community (SNMPv2c) or an SNMPv3 user, not both")
        if self.community is not None and not self.community:
            raise InvalidInput("the SNMP community is empty")

    def describe(self) -> str:
        """For logs: the version and user, never a key or the community itself."""
        if self.user is not None:
            return f"SNMPv3 user {self.user.name} (authPriv, SHA/AES-128)"
        return "SNMPv2c (community ****)"

    def __repr__(self) -> str:
        return f"TrapSecurity({self.describe()})"


def parse_destinations(texts: Sequence[str]) -> list[tuple[str, int]]:
    """'HOST[:PORT]' (port 162 by default), as given to --trap-destination -> [(host, port)]."""
    out: list[tuple[str, int]] = []
    for t in texts:
        dest = parse_hostport(t, TRAP_PORT)
        if dest not in out:
            out.append(dest)
    return out
