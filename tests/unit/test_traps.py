"""dvsan's SNMP notifications as data: DVSAN-MIB against the code, varbinds out, trap -> event in."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvsan import traps
from dvsan.errors import InvalidInput, ProtocolError
from dvsan.traps import (
    Interface,
    TrapSecurity,
    UnitEvent,
    UnitIdentity,
    UsmUser,
    decode_notification,
    engine_id_for,
    notification,
    parse_destinations,
)

UNIT = UnitIdentity("unit-z", "192.0.2.7", 3260, 7478, "0.1.0")
N = traps.DVSAN_UNIT


def received(vbs: list[traps.Varbind]) -> list[tuple[traps.OID, traps.Value]]:
    """What a receiver hands over for varbinds a sender built: strings arrive as bytes."""
    out: list[tuple[traps.OID, traps.Value]] = [(traps.SYS_UPTIME, 42)]
    for oid, kind, value in vbs:
        out.append((oid, str(value).encode() if kind == "octets" else value))  # type: ignore[arg-type]
    return out


def v2(trap: traps.OID, *vbs: tuple[traps.OID, traps.Value]) -> list[tuple[traps.OID, traps.Value]]:
    return [(traps.SYS_UPTIME, 1), (traps.SNMP_TRAP_OID, trap), *vbs]


IDENT: list[tuple[traps.OID, traps.Value]] = [(traps.UNIT_NAME, b"unit-z"), (traps.UNIT_STORAGE_ADDRESS, b"192.0.2.7"),
         (traps.UNIT_CONTROL_PORT, 7478)]


# --- the MIB and the code agree -------------------------------------------------------------

def test_gp_dvsan_mib_compiles_strict_smiv2_and_matches_the_code():
    from pysmi.codegen import JsonCodeGen
    from pysmi.compiler import MibCompiler
    from pysmi.parser import SmiV2Parser
    from pysmi.reader import FileReader
    from pysmi.searcher import StubSearcher
    from pysmi.writer import CallbackWriter

    out: dict[str, str] = {}
    compiler = MibCompiler(SmiV2Parser(), JsonCodeGen(),
                           CallbackWriter(lambda name, data, ctx: out.__setitem__(name, data)))
    compiler.add_sources(FileReader(str(traps.MIB_DIR)))
    compiler.add_searchers(StubSearcher(*JsonCodeGen.baseMibs))
    status = compiler.compile("DVSAN-MIB", "IF-MIB", "SNMPv2-MIB", rebuild=True, genTexts=True)
    assert {status[m] for m in ("DVSAN-MIB", "IF-MIB", "SNMPv2-MIB")} == {"compiled"}, status
    mib = json.loads(out["DVSAN-MIB"])
    oid = {k: tuple(int(x) for x in v["oid"].split(".")) for k, v in mib.items()
           if isinstance(v, dict) and "oid" in v}
    assert oid["dvsanMIB"] == traps.DVSAN_MIB
    for name, const in [("dvsanUnitName", traps.UNIT_NAME), ("dvsanUnitStorageAddress", traps.UNIT_STORAGE_ADDRESS),
                        ("dvsanUnitPortalPort", traps.UNIT_PORTAL_PORT),
                        ("dvsanUnitControlPort", traps.UNIT_CONTROL_PORT),
                        ("dvsanUnitAgentVersion", traps.UNIT_AGENT_VERSION),
                        ("dvsanUnitDnsName", traps.UNIT_DNS_NAME), ("dvsanUnitEvent", traps.UNIT_EVENT)]:
        assert oid[name] + (0,) == const, name
        assert mib[name]["maxaccess"] == "accessible-for-notify"
    assert mib["dvsanUnitEvent"]["syntax"]["constraints"]["enumeration"] == \
        {"boot": UnitEvent.BOOT, "linkUp": UnitEvent.LINK_UP, "linkDown": UnitEvent.LINK_DOWN,
         "shutdown": UnitEvent.SHUTDOWN}
    group = {o["object"] for o in mib["dvsanUnitGroup"]["objects"]}
    assert group == {n for n in oid if n.startswith("dvsanUnit") and mib[n]["class"] == "objecttype"}
    ifmib = json.loads(out["IF-MIB"])
    snmpv2 = json.loads(out["SNMPv2-MIB"])
    assert ifmib["linkDown"]["oid"] == ".".join(map(str, traps.LINK_DOWN))
    assert ifmib["linkUp"]["oid"] == ".".join(map(str, traps.LINK_UP))
    assert snmpv2["coldStart"]["oid"] == ".".join(map(str, traps.COLD_START))
    assert ifmib["ifDescr"]["oid"] == ".".join(map(str, traps.IF_DESCR))
    assert "PROVISIONAL" in mib["dvsanMIB"]["description"]


# --- varbinds out, events in -----------------------------------------------------------------

@pytest.mark.parametrize("trap,event", [("coldStart", UnitEvent.BOOT), ("linkUp", UnitEvent.LINK_UP)])
def test_gp_up_notifications_round_trip(trap, event):
    unit = UnitIdentity("unit-z", "2001:db8::7", 3261, 17478, "0.1.0", "unit-z.storage.example")
    ev = decode_notification(received(notification(trap, unit, event, Interface(3, "eth1"))))
    assert (ev.trap, ev.unit, ev.identity, ev.state) == (trap, "unit-z", unit, None)


@pytest.mark.parametrize("event,state", [(UnitEvent.LINK_DOWN, "link-down"), (UnitEvent.SHUTDOWN, "offline")])
def test_gp_link_down_says_why(event, state):
    ev = decode_notification(received(notification("linkDown", UNIT, event, Interface(3, "eth1"))))
    assert (ev.trap, ev.unit, ev.identity, ev.state) == ("linkDown", "unit-z", None, state)


def test_gp_link_notifications_carry_if_mib_objects_in_order():
    vbs = notification("linkDown", UNIT, UnitEvent.LINK_DOWN, Interface(3, "eth1"))
    assert [v[0] for v in vbs[:5]] == [traps.SNMP_TRAP_OID, traps.IF_INDEX + (3,), traps.IF_ADMIN_STATUS + (3,),
                                       traps.IF_OPER_STATUS + (3,), traps.IF_DESCR + (3,)]
    assert [v[2] for v in vbs[:5]] == [traps.LINK_DOWN, 3, 2, 2, "eth1"]
    up = notification("linkUp", UNIT, UnitEvent.LINK_UP, Interface(3, "eth1"))
    assert [v[2] for v in up[1:4]] == [3, 1, 1]
    cold = notification("coldStart", UNIT, UnitEvent.BOOT, Interface(3, "eth1"))
    assert not any(v[0][:len(traps.IF_ENTRY)] == traps.IF_ENTRY for v in cold)
    assert traps.UNIT_DNS_NAME not in {v[0] for v in cold}      # only sent when the unit has one


def test_gp_minimal_snmptrap_style_notifications():
    ev = decode_notification(v2(traps.COLD_START, *IDENT))
    assert ev.identity == UnitIdentity("unit-z", "192.0.2.7", 3260, 7478, "", None)
    # a linkDown needs only the unit's name; without dvsanUnitEvent it means the link
    ev = decode_notification(v2(traps.LINK_DOWN, (traps.UNIT_NAME, b"unit-z")))
    assert (ev.unit, ev.state) == ("unit-z", "link-down")
    # other varbinds in between, and repeated foreign ones, are fine
    ev = decode_notification(v2(traps.LINK_UP, (traps.IF_INDEX + (2,), 2), (traps.IF_INDEX + (2,), 2), *IDENT))
    assert ev.trap == "linkUp"


@pytest.mark.parametrize("varbinds,reason,words", [
    ([(traps.SYS_UPTIME, 1)], "not-dvsan", "no snmpTrapOID"),
    (v2(traps.COLD_START), "not-dvsan", "without dvsanUnitName"),
    (v2(traps.LINK_DOWN, (traps.IF_INDEX + (1,), 1)), "not-dvsan", "linkDown without dvsanUnitName"),
    (v2((1, 3, 6, 1, 6, 3, 1, 1, 5, 2), *IDENT), "other-trap", "1.3.6.1.6.3.1.1.5.2 from unit unit-z"),
    (v2(traps.COLD_START, (traps.UNIT_NAME, 5), *IDENT[1:]), "bad-value", "not an OCTET STRING"),
    (v2(traps.COLD_START, (traps.UNIT_NAME, None), *IDENT[1:]), "bad-value", "not an OCTET STRING"),
    (v2(traps.COLD_START, (traps.UNIT_NAME, b"Unit_Z"), *IDENT[1:]), "bad-value", "invalid name"),
    (v2(traps.COLD_START, (traps.UNIT_NAME, b"\xff\xfe"), *IDENT[1:]), "bad-value", "not UTF-8"),
    (v2(traps.COLD_START, (traps.UNIT_NAME, b""), *IDENT[1:]), "bad-value", "empty"),
    (v2(traps.COLD_START, *IDENT[:2]), "bad-value", "without dvsanUnitControlPort"),
    (v2(traps.COLD_START, IDENT[0]), "bad-value", "without dvsanUnitStorageAddress and dvsanUnitControlPort"),
    (v2(traps.COLD_START, *IDENT[:2], (traps.UNIT_CONTROL_PORT, 0)), "bad-value", "not a port"),
    (v2(traps.COLD_START, *IDENT[:2], (traps.UNIT_CONTROL_PORT, 70000)), "bad-value", "not a port"),
    (v2(traps.COLD_START, *IDENT, (traps.UNIT_PORTAL_PORT, b"3260")), "bad-value", "not a port"),
    (v2(traps.COLD_START, IDENT[0], (traps.UNIT_STORAGE_ADDRESS, b"storage.example"), IDENT[2]),
     "bad-value", "not an IP address"),
    (v2(traps.COLD_START, *IDENT, (traps.UNIT_STORAGE_ADDRESS, b"192.0.2.8")), "bad-value", "appears twice"),
    (v2(traps.LINK_DOWN, IDENT[0], (traps.UNIT_EVENT, 9)), "bad-value", "dvsanUnitEvent"),
    (v2(traps.COLD_START, *IDENT, (traps.UNIT_AGENT_VERSION, b"x" * 33)), "bad-value", "too long"),
    (v2(traps.COLD_START, *IDENT, (traps.UNIT_DNS_NAME, b"a\nb")), "bad-value", "not printable"),
])
def test_ep_bad_notifications_name_the_reason(varbinds, reason, words):
    with pytest.raises(ProtocolError) as e:
        decode_notification(varbinds)
    assert e.value.reason == reason
    assert words in str(e.value)


_values = st.one_of(st.none(), st.integers(-2**40, 2**40), st.binary(max_size=80),
                    st.tuples(st.integers(0, 5), st.integers(0, 2**32)))
_oids = st.one_of(st.sampled_from([traps.SNMP_TRAP_OID, traps.UNIT_NAME, traps.UNIT_STORAGE_ADDRESS,
                                   traps.UNIT_CONTROL_PORT, traps.UNIT_PORTAL_PORT, traps.UNIT_EVENT,
                                   traps.UNIT_AGENT_VERSION, traps.UNIT_DNS_NAME]),
                  st.lists(st.integers(0, 2**32), min_size=1, max_size=12).map(tuple))


@settings(max_examples=400)
@given(st.lists(st.tuples(_oids, st.one_of(_values, st.sampled_from(
    [traps.COLD_START, traps.LINK_UP, traps.LINK_DOWN, b"unit-z", b"127.0.0.1", 7478, 4]))), max_size=12))
def test_ep_any_varbinds_decode_or_raise_protocol_error(vbs):
    try:
        ev = decode_notification(vbs)
    except ProtocolError as e:
        assert e.reason in ("not-dvsan", "other-trap", "bad-value")
        return
    assert ev.trap in ("coldStart", "linkUp", "linkDown")
    assert (ev.identity is None) == (ev.trap == "linkDown")


# --- identities and credentials --------------------------------------------------------------

def test_gp_engine_ids_are_stable_rfc3411_ids():
    e = engine_id_for("unit-z")
    assert e == bytes.fromhex("80007ed9") + b"\x04unit-z" == engine_id_for("unit-z")
    long = engine_id_for("u" * 63)
    assert long[:5] == bytes.fromhex("80007ed905") and len(long) == 21
    assert engine_id_for("u" * 62) != long
    assert len(engine_id_for("u" * 27)) == 32


def test_ep_usm_users_refuse_short_keys_and_never_show_them():
    with pytest.raises(InvalidInput, match="shorter than 8"):
        UsmUser("dvsan", "short", "longenough")
    with pytest.raises(InvalidInput, match="privacy"):
        UsmUser("dvsan", "longenough", "short")
    with pytest.raises(InvalidInput):
        UsmUser("", "longenough", "longenough")
    u = UsmUser("dvsan", "auth-secret-1", "priv-secret-1")
    sec = TrapSecurity(user=u)
    for text in (repr(u), str(u), repr(sec), sec.describe(), repr(TrapSecurity(community="c0mmunity"))):
        assert "secret" not in text and "c0mmunity" not in text


def test_ep_trap_security_is_one_or_the_other():
    with pytest.raises(InvalidInput, match="need a community"):
        TrapSecurity()
    with pytest.raises(InvalidInput, match="not both"):
        TrapSecurity(community="public", user=UsmUser("dvsan", "authkey123", "privkey123"))
    with pytest.raises(InvalidInput, match="empty"):
        TrapSecurity(community="")


def test_gp_destinations_default_to_port_162():
    assert parse_destinations(["10.0.0.1", "mon.example.org:1162", "[::1]:2162", "10.0.0.1"]) == \
        [("10.0.0.1", 162), ("mon.example.org", 1162), ("::1", 2162)]
    with pytest.raises(InvalidInput):
        parse_destinations(["host:99999"])


def test_ep_unit_settings_for_traps():
    from unit_agent.settings import UnitSettings

    s = UnitSettings(name="unit-z", trap_destinations=["127.0.0.1"], trap_v3_user="dvsan",
                     trap_v3_auth_key="authkey123")
    with pytest.raises(InvalidInput, match="needs --trap-v3-user, --trap-v3-auth-key-file and --trap-v3-priv-key-file"):
        s.trap_security()
    s = UnitSettings(name="unit-z", trap_community="public")
    assert s.trap_security().community == "public" and s.engine_id() == engine_id_for("unit-z")
    assert UnitSettings(name="u", snmp_engine_id="0x8000000001020304").engine_id() == bytes.fromhex("8000000001020304")
    for bad in ("zz", "0x0102"):
        with pytest.raises(InvalidInput):
            UnitSettings(name="u", snmp_engine_id=bad).engine_id()
    assert "authkey123" not in repr(UnitSettings(name="u", trap_v3_auth_key="authkey123"))


def test_ep_station_settings_for_traps():
    from station.settings import StationSettings

    s = StationSettings(trap_v3_user="dvsan", trap_v3_priv_key="privkey123")
    with pytest.raises(InvalidInput, match="needs a name, an authentication key and a privacy key"):
        s.snmp_users()
    assert not StationSettings().snmp_enabled                      # nobody allowed to send: off
    assert not StationSettings(trap_port=0, trap_communities=["public"]).snmp_enabled
    s = StationSettings(trap_communities=["public"], trap_v3_users=[
        {"name": "a", "auth_key": "authkey123", "priv_key": "privkey123"}],
        trap_v3_user="b", trap_v3_auth_key="authkey456", trap_v3_priv_key="privkey456")
    assert s.snmp_enabled and [u.name for u in s.snmp_users()] == ["a", "b"]
    assert "authkey" not in repr(s) and "public" not in repr(s)


# --- the station adapter's pure helpers ------------------------------------------------------

def test_gp_pysnmp_values_and_reject_reasons():
    from pysnmp.proto import errind, rfc1902

    from station.listeners.snmp.receiver import plain, reject_reason

    assert plain(rfc1902.OctetString(b"unit-z")) == b"unit-z"
    assert plain(rfc1902.Gauge32(7478)) == 7478 and plain(rfc1902.Integer32(-1)) == -1
    assert plain(rfc1902.ObjectIdentifier(traps.COLD_START)) == traps.COLD_START
    assert plain(rfc1902.IpAddress("192.0.2.7")) == bytes([192, 0, 2, 7])
    assert plain(rfc1902.Null("")) is None
    assert reject_reason(errind.unknownCommunityName) == "bad-community"
    assert reject_reason(errind.unknownSecurityName) == "unknown-user"
    assert reject_reason(errind.authenticationFailure) == "bad-auth"
    assert reject_reason(errind.decryptionError) == "bad-priv"
    assert reject_reason(errind.notInTimeWindow) == "not-in-time-window"
    assert reject_reason(None) == "other"
