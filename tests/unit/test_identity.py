"""Identities: key files, the signed envelope, the seen-message cache, the station pin, the
enrolment decisions (on a real SQLite file), and two real signing Endpoints on 127.0.0.1."""

import asyncio
import base64
import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from dvsan.endpoint import Endpoint
from dvsan.errors import Conflict, IdentityRefused, InvalidInput, Unavailable
from dvsan.identity import (
    STATION,
    SeenCache,
    Signer,
    StationPin,
    decode_public,
    encode_public,
    fingerprint,
    generate,
    load_or_create,
    load_private_key,
    load_public_key,
    open_envelope,
    save_private_key,
    save_public_key,
    seal,
)
from dvsan.protocol import MsgType, decode, encode
from station.db import Database
from station.db.tables import UnitIdentityRow
from station.services import enrolment

NOW = 1_790_000_000_000
KEY = b"cluster-key-0123456789abcdef"
A, B, S = generate(), generate(), generate()


UNIT_A = Signer("unit-a", A)


def sealed(signer: Signer = UNIT_A, mtype: int = MsgType.STARTUP, seq: int = 7, ack: int = 0,
           to: str = STATION, body: dict[str, Any] | None = None, now: int = NOW) -> dict[str, Any]:
    """A body as it crosses the wire: sealed, then JSON-encoded and decoded."""
    out = seal(signer, mtype, seq, ack, to, body if body is not None else {"unit": signer.name, "n": 1}, now)
    return json.loads(json.dumps(out, sort_keys=True, separators=(",", ":")))


# --- key files ---------------------------------------------------------------------------------
def test_gp_private_key_saved_0600_and_loaded_back(tmp_path):
    path = tmp_path / "state" / "unit.key"
    save_private_key(path, A)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert encode_public(load_private_key(path)) == encode_public(A)
    assert [p.name for p in path.parent.iterdir()] == ["unit.key"]     # no temp file left


def test_ep_private_key_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "unit.key"
    save_private_key(path, A)
    for mode in (0o640, 0o604, 0o620):
        os.chmod(path, mode)
        with pytest.raises(InvalidInput, match=f"accessible by group or others .mode {mode:04o}"):
            load_private_key(path)


def test_ep_save_never_overwrites_an_existing_key(tmp_path):
    path = tmp_path / "unit.key"
    save_private_key(path, A)
    with pytest.raises(FileExistsError):
        save_private_key(path, B)
    assert encode_public(load_private_key(path)) == encode_public(A)


@pytest.mark.parametrize("content, match", [
    (b"not a key", "unencrypted PEM private key"),
    (b"", "unencrypted PEM private key"),
    (ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
     "not an Ed25519 key"),
])
def test_ep_private_key_file_that_is_not_an_ed25519_key(tmp_path, content, match):
    path = tmp_path / "unit.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(InvalidInput, match=match):
        load_private_key(path)


def test_ep_missing_private_key_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidInput, match="cannot read private key .*No such file"):
        load_private_key(tmp_path / "nope.key")


def test_gp_load_or_create_makes_the_key_once(tmp_path):
    path = tmp_path / "unit.key"
    k1, created1 = load_or_create(path)
    k2, created2 = load_or_create(path)
    assert (created1, created2) == (True, False)
    assert encode_public(k1) == encode_public(k2)


def test_gp_public_key_encoding_and_fingerprint(tmp_path):
    text = encode_public(A)
    assert len(base64.b64decode(text)) == 32 and len(text) == 44
    assert encode_public(decode_public(text)) == text
    fp = fingerprint(A)
    assert fp.startswith("SHA256:") and len(fp) == 7 + 43 and fp == fingerprint(text) != fingerprint(B)
    save_public_key(tmp_path / "a.pub", A)
    assert os.stat(tmp_path / "a.pub").st_mode & 0o777 == 0o644
    assert encode_public(load_public_key(tmp_path / "a.pub")) == text


@pytest.mark.parametrize("text", ["", "not base64!", base64.b64encode(b"x" * 31).decode(),
                                  base64.b64encode(b"x" * 33).decode()])
def test_ep_bad_public_keys(text):
    with pytest.raises(InvalidInput):
        decode_public(text)


# --- the envelope ------------------------------------------------------------------------------
def test_gp_sealed_message_opens_and_verifies():
    body = sealed()
    env, inner = open_envelope(MsgType.STARTUP, 7, 0, body)
    assert inner == {"unit": "unit-a", "n": 1}
    assert (env.sender, env.recipient, env.timestamp_ms, env.public_key) == ("unit-a", STATION, NOW, encode_public(A))
    env.verify(A.public_key())
    with pytest.raises(IdentityRefused) as e:
        env.verify(B.public_key())
    assert e.value.reason == "bad-signature"


def _tamper_auth(field: str, value: Any):
    def f(body: dict[str, Any]) -> None:
        body["auth"][field] = value
    return f


@pytest.mark.parametrize("what, header, change", [
    ("body field", (MsgType.STARTUP, 7, 0), lambda b: b.__setitem__("n", 2)),
    ("body field added", (MsgType.STARTUP, 7, 0), lambda b: b.__setitem__("unit2", "unit-b")),
    ("message type", (MsgType.SHUTDOWN, 7, 0), lambda b: None),
    ("seq", (MsgType.STARTUP, 8, 0), lambda b: None),
    ("ack", (MsgType.STARTUP, 7, 1), lambda b: None),
    ("sender", (MsgType.STARTUP, 7, 0), _tamper_auth("from", "unit-b")),
    ("recipient", (MsgType.STARTUP, 7, 0), _tamper_auth("to", "unit-b")),
    ("timestamp", (MsgType.STARTUP, 7, 0), _tamper_auth("ts", NOW + 1)),
    ("message id", (MsgType.STARTUP, 7, 0), _tamper_auth("id", "0" * 32)),
    ("offered key", (MsgType.STARTUP, 7, 0), _tamper_auth("key", encode_public(B))),
])
def test_ep_every_signed_field_is_bound(what, header, change):
    body = sealed()
    change(body)
    env, _ = open_envelope(*header, body)
    with pytest.raises(IdentityRefused) as e:
        env.verify(A.public_key())
    assert e.value.reason == "bad-signature", what


@pytest.mark.parametrize("auth, reason", [
    (None, "unsigned"),
    ("a string", "malformed"),
    ({}, "malformed"),
    ({"from": "unit-a"}, "malformed"),
    ({"from": "", "to": STATION, "ts": NOW, "id": "0" * 32, "key": "k", "sig": "AA=="}, "malformed"),
    ({"from": "a", "to": STATION, "ts": "now", "id": "0" * 32, "key": "k", "sig": "AA=="}, "malformed"),
    ({"from": "a", "to": STATION, "ts": True, "id": "0" * 32, "key": "k", "sig": "AA=="}, "malformed"),
    ({"from": "a", "to": STATION, "ts": NOW, "id": "xyz", "key": "k", "sig": "AA=="}, "malformed"),
    ({"from": "a", "to": STATION, "ts": NOW, "id": "0" * 32, "key": "k", "sig": "not base64!"}, "malformed"),
    ({"from": "a", "to": STATION, "ts": NOW, "id": "0" * 32, "key": "k", "sig": "AA==", "prev": 5}, "malformed"),
    ({"from": "a", "to": STATION, "ts": NOW, "id": "0" * 32, "key": "k", "sig": "AA==", "x": 1}, "malformed"),
])
def test_ep_missing_or_malformed_envelopes(auth, reason):
    body: dict[str, Any] = {"unit": "unit-a"}
    if auth is not None:
        body["auth"] = auth
    with pytest.raises(IdentityRefused) as e:
        open_envelope(MsgType.STARTUP, 1, 0, body)
    assert e.value.reason == reason


def test_ep_offered_key_that_is_not_a_key():
    body = sealed()
    body["auth"]["key"] = "AAAA"
    env, _ = open_envelope(MsgType.STARTUP, 7, 0, body)
    with pytest.raises(IdentityRefused) as e:
        _ = env.offered_key
    assert e.value.reason == "malformed"


def test_ep_a_body_may_not_carry_the_reserved_field():
    with pytest.raises(ValueError, match="reserved field 'auth'"):
        seal(Signer("unit-a", A), MsgType.STARTUP, 1, 0, STATION, {"auth": 1}, NOW)


def test_gp_rotation_is_signed_by_both_keys():
    signer = Signer("unit-a", B, previous=A)
    env, _ = open_envelope(MsgType.STARTUP, 7, 0, sealed(signer))
    env.verify(B.public_key())
    env.verify_previous(A.public_key())
    with pytest.raises(IdentityRefused) as e:
        env.verify_previous(S.public_key())
    assert e.value.reason == "key-mismatch"
    plain, _ = open_envelope(MsgType.STARTUP, 7, 0, sealed(Signer("unit-a", B)))
    with pytest.raises(IdentityRefused, match="without the old key's signature"):
        plain.verify_previous(A.public_key())


def test_gp_signer_forgets_the_old_key_once_confirmed():
    calls = []
    signer = Signer("unit-a", B, previous=A, on_rotated=lambda: calls.append(1))
    signer.confirmed()
    signer.confirmed()
    assert signer.previous is None and calls == [1]
    assert "prev" not in sealed(signer)["auth"]


@settings(max_examples=60, deadline=None)
@given(body=st.dictionaries(st.text(max_size=8).filter(lambda k: k != "auth"),
                            st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                                         lambda c: st.lists(c, max_size=3) | st.dictionaries(
                                             st.text(max_size=5), c, max_size=3), max_leaves=8),
                            max_size=5),
       seq=st.integers(0, 2**32 - 1), ack=st.integers(0, 2**32 - 1))
def test_gp_any_json_body_survives_the_wire_and_verifies(body, seq, ack):
    wire = sealed(Signer("unit-a", A), MsgType.STORAGE_INFO, seq, ack, STATION, body)
    env, inner = open_envelope(MsgType.STORAGE_INFO, seq, ack, wire)
    assert inner == body
    env.verify(A.public_key())


# --- the seen cache ----------------------------------------------------------------------------
def test_ep_seen_cache_refuses_stale_and_replayed():
    cache = SeenCache(window_ms=60_000)
    env, _ = open_envelope(MsgType.STARTUP, 7, 0, sealed())
    cache.check(env, NOW)
    cache.check(env, NOW)           # check alone remembers nothing
    cache.take(env, NOW)
    with pytest.raises(IdentityRefused) as e:
        cache.check(env, NOW + 1000)
    assert e.value.reason == "replayed"
    for off in (-60_001, 60_001):
        with pytest.raises(IdentityRefused) as e:
            cache.check(env, NOW + off)
        assert e.value.reason == "stale"
    # the same id from another sender is another message
    other, _ = open_envelope(MsgType.STARTUP, 7, 0, sealed(Signer("unit-b", B)))
    cache.take(other, NOW)
    assert len(cache) == 2


def test_gp_seen_cache_forgets_after_twice_the_window_and_stays_bounded():
    cache = SeenCache(window_ms=1000, max_entries=3)
    envs = [open_envelope(MsgType.STARTUP, 7, 0, sealed(now=NOW + i))[0] for i in range(5)]
    for e in envs:
        cache.take(e, NOW)
    assert len(cache) <= 4
    late = open_envelope(MsgType.STARTUP, 7, 0, sealed(now=NOW + 2500))[0]
    cache.take(late, NOW + 2500)
    assert len(cache) == 1


# --- the station pin (a unit's verifier) -------------------------------------------------------
def _station_env(signer: Signer, to: str = "unit-a"):
    return open_envelope(MsgType.EXPORTS, 3, 0, sealed(signer, MsgType.EXPORTS, 3, 0, to, {"unit": to}))[0]


def test_ep_pin_refuses_anyone_but_the_station():
    pin = StationPin(S.public_key())
    with pytest.raises(IdentityRefused) as e:
        asyncio.run(pin(_station_env(Signer("unit-b", B)), None, ("127.0.0.1", 1)))
    assert e.value.reason == "not-station"
    # a peer calling itself the station gets the pinned key back, which its signature fails
    key = asyncio.run(pin(_station_env(Signer(STATION, B)), None, ("127.0.0.1", 1)))
    assert encode_public(key) == encode_public(S)


def test_ep_pin_without_key_refuses_unless_first_contact_is_allowed():
    with pytest.raises(IdentityRefused) as e:
        asyncio.run(StationPin(None)(_station_env(Signer(STATION, S)), None, ("127.0.0.1", 1)))
    assert e.value.reason == "no-station-key"


def test_gp_first_contact_pins_and_saves_the_first_valid_station_key():
    saved = []
    pin = StationPin(None, first_contact=True, save=saved.append)
    bad = _station_env(Signer(STATION, S))
    forged = open_envelope(MsgType.EXPORTS, 3, 0, {**sealed(Signer(STATION, S), MsgType.EXPORTS, 3, 0,
                                                            "unit-a", {"unit": "unit-a"}), "x": 1})[0]
    with pytest.raises(IdentityRefused):
        asyncio.run(pin(forged, None, ("127.0.0.1", 1)))     # an invalid signature pins nothing
    assert pin.key is None and saved == []
    asyncio.run(pin(bad, None, ("127.0.0.1", 1)))
    assert [encode_public(k) for k in saved] == [encode_public(S)]
    key = asyncio.run(pin(_station_env(Signer(STATION, B)), None, ("127.0.0.1", 1)))
    assert encode_public(key) == encode_public(S)             # the pin holds against another key


# --- enrolment decisions (a real SQLite database) ----------------------------------------------
@pytest.fixture
def db(tmp_path: Path):
    d = Database(f"sqlite:///{tmp_path / 'station.db'}")
    d.migrate()
    yield d
    d.dispose()


def admit(db: Database, signer: Signer, policy: enrolment.Policy = "manual",
          address: str = "10.0.0.1") -> enrolment.Admission:
    env = open_envelope(MsgType.STARTUP, 7, 0, sealed(signer))[0]
    with db.session() as s:
        return enrolment.admit(s, env, address, policy)


def row(db: Database, name: str) -> UnitIdentityRow:
    with db.session() as s:
        return enrolment.get_identity(s, name)


def reason(adm: enrolment.Admission) -> str | None:
    return adm.refusal.reason if adm.refusal else None


def test_gp_manual_policy_keeps_an_unknown_unit_pending_until_approved(db):
    assert reason(admit(db, Signer("unit-a", A))) == "pending"
    assert reason(admit(db, Signer("unit-a", A))) == "pending"
    r = row(db, "unit-a")
    assert (r.state, r.fingerprint, r.first_address) == ("pending", fingerprint(A), "10.0.0.1")
    with db.session() as s, pytest.raises(Conflict, match="offers no key SHA256:"):
        enrolment.approve(s, "unit-a", fingerprint(B))
    with db.session() as s:
        enrolment.approve(s, "unit-a", fingerprint(A))
    adm = admit(db, Signer("unit-a", A))
    assert adm.refusal is None and encode_public(adm.key) == encode_public(A)


def test_gp_first_come_enrols_the_first_key_and_refuses_a_second_one(db):
    assert admit(db, Signer("unit-a", A), "first-come").refusal is None
    adm = admit(db, Signer("unit-a", B), "first-come", address="10.0.0.9")
    assert reason(adm) == "key-mismatch" and fingerprint(B) in str(adm.refusal)
    r = row(db, "unit-a")
    assert (r.state, r.fingerprint, r.offered_fingerprint, r.offered_address, r.refused_count) == \
        ("enrolled", fingerprint(A), fingerprint(B), "10.0.0.9", 1)


def test_ep_a_message_not_signed_by_the_key_it_offers_records_nothing(db):
    env = open_envelope(MsgType.STARTUP, 7, 0, {**sealed(Signer("unit-a", A)), "n": 5})[0]
    with db.session() as s, pytest.raises(IdentityRefused) as e:
        enrolment.admit(s, env, "10.0.0.1", "first-come")
    assert e.value.reason == "bad-signature"
    with db.session() as s:
        assert enrolment.list_identities(s) == []


def test_ep_sender_that_is_not_a_unit_name(db):
    assert reason(admit(db, Signer(STATION, A), "first-come")) == "bad-name"
    assert reason(admit(db, Signer("Unit A", A), "first-come")) == "bad-name"


def test_gp_rotation_signed_by_the_enrolled_key_is_taken(db):
    admit(db, Signer("unit-a", A), "first-come")
    assert admit(db, Signer("unit-a", B, previous=A)).refusal is None
    r = row(db, "unit-a")
    assert (r.fingerprint, r.rotated_at is not None) == (fingerprint(B), True)
    assert reason(admit(db, Signer("unit-a", A))) == "key-mismatch"         # the old key is gone
    # a "rotation" signed by a key that is not the enrolled one is a second machine
    assert reason(admit(db, Signer("unit-a", S, previous=A))) == "key-mismatch"


def test_gp_operator_reapproves_an_offered_key(db):
    admit(db, Signer("unit-a", A), "first-come")
    admit(db, Signer("unit-a", B))
    with db.session() as s:
        enrolment.approve(s, "unit-a", fingerprint(B))
    assert admit(db, Signer("unit-a", B)).refusal is None
    assert row(db, "unit-a").offered_key is None


def test_ep_revoked_unit_is_refused_and_its_key_never_comes_back(db):
    admit(db, Signer("unit-a", A), "first-come")
    with db.session() as s:
        _, offline = enrolment.revoke(s, "unit-a")
    assert offline == 0
    assert reason(admit(db, Signer("unit-a", A), "first-come")) == "revoked"
    for action in (lambda s: enrolment.approve(s, "unit-a", fingerprint(A)),
                   lambda s: enrolment.enrol_key(s, "unit-a", encode_public(A))):
        with db.session() as s, pytest.raises(Conflict, match="revoked"):
            action(s)
    # a new key offered under the revoked name waits for the operator
    assert reason(admit(db, Signer("unit-a", B))) == "key-mismatch"
    with db.session() as s:
        enrolment.approve(s, "unit-a", fingerprint(B))
    assert admit(db, Signer("unit-a", B)).refusal is None


def test_gp_pre_enrolment_by_key_and_forgetting_pending(db):
    with db.session() as s:
        enrolment.enrol_key(s, "unit-a", encode_public(A))
    assert admit(db, Signer("unit-a", A)).refusal is None
    admit(db, Signer("unit-b", B))
    with db.session() as s, pytest.raises(Conflict, match="only a pending unit"):
        enrolment.forget_pending(s, "unit-a")
    with db.session() as s:
        enrolment.forget_pending(s, "unit-b")
        assert [r.name for r in enrolment.list_identities(s)] == ["unit-a"]
        with pytest.raises(InvalidInput):
            enrolment.list_identities(s, "bogus")
        with pytest.raises(InvalidInput):
            enrolment.enrol_key(s, "unit-c", "nope")


def test_ep_gate_refuses_an_unknown_policy(db):
    with pytest.raises(InvalidInput, match="manual, first-come"):
        enrolment.EnrolmentGate(db, "anyone")  # type: ignore[arg-type]


# --- two signing endpoints on loopback ---------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def __call__(self, msg, peer):
        self.calls.append(msg)
        return {"seen": msg.body.get("n")}


class Trust:
    """A verifier that trusts one key per sender name."""

    def __init__(self, keys: dict[str, Any]):
        self.keys = keys
        self.calls = 0

    async def __call__(self, env, msg, peer):
        self.calls += 1
        if env.sender not in self.keys:
            raise IdentityRefused("unknown", f"unknown sender {env.sender}")
        return self.keys[env.sender].public_key()


@contextlib.asynccontextmanager
async def station_and_unit():
    """`st` (the station, trusting unit-a's key A) and `ua` (unit-a, trusting the station key S)."""
    rec = Recorder()
    st = await Endpoint.open(KEY, rec, "127.0.0.1", 0, name="st", signer=Signer(STATION, S),
                             verifier=Trust({"unit-a": A}))
    ua = await Endpoint.open(KEY, Recorder(), "127.0.0.1", 0, name="ua", signer=Signer("unit-a", A),
                             verifier=StationPin(S.public_key()), recipient=lambda _b: STATION)
    try:
        yield st, ua, rec
    finally:
        st.close()
        ua.close()


async def _until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def test_gp_signed_exchange_both_ways():
    async def go():
        async with station_and_unit() as (st, ua, rec):
            ack = await ua.send(st.address, MsgType.STARTUP, {"unit": "unit-a", "n": 1}, timeout=3)
            assert ack == {"status": "ok", "seen": 1}
            assert rec.calls[0].sender == "unit-a" and "auth" not in rec.calls[0].body
            ack = await st.send(ua.address, MsgType.EXPORTS, {"unit": "unit-a", "n": 2}, timeout=3)
            assert ack["status"] == "ok"
            assert st.stats["refused"] == ua.stats["refused"] == 0
    asyncio.run(go())


def test_ep_unsigned_misaddressed_and_unknown_senders_are_refused_with_an_error_ack():
    async def go():
        async with station_and_unit() as (st, _ua, rec):
            plain = await Endpoint.open(KEY, Recorder(), "127.0.0.1", 0, name="plain")
            other = await Endpoint.open(KEY, Recorder(), "127.0.0.1", 0, name="b", signer=Signer("unit-b", B),
                                        recipient=lambda _b: STATION)
            to_other = await Endpoint.open(KEY, Recorder(), "127.0.0.1", 0, name="a2",
                                           signer=Signer("unit-a", A), recipient=lambda _b: "someone-else")
            try:
                acks = [await plain.send(st.address, MsgType.STARTUP, {"unit": "unit-a"}, timeout=3),
                        await other.send(st.address, MsgType.STARTUP, {"unit": "unit-b"}, timeout=3),
                        await to_other.send(st.address, MsgType.STARTUP, {"unit": "unit-a"}, timeout=3)]
            finally:
                plain.close()
                other.close()
                to_other.close()
            assert [a["refusal"] for a in acks] == ["unsigned", "unknown", "misaddressed"]
            assert all(a["status"] == "error" for a in acks)
            assert rec.calls == []
            assert (st.stats["refused_unsigned"], st.stats["refused_unknown"], st.stats["refused_misaddressed"]) \
                == (1, 1, 1)
    asyncio.run(go())


def test_ep_captured_signed_message_replayed_under_a_fresh_nonce_is_refused():
    async def go():
        async with station_and_unit() as (st, ua, rec):
            ack = await ua.send(st.address, MsgType.STARTUP, {"unit": "unit-a", "n": 1}, timeout=3)
            assert ack["status"] == "ok"
            # the attacker holds the cluster key: it re-wraps a captured signed body in new
            # datagrams (fresh nonce and timestamp: the datagram replay guard lets them through)
            now = int(time.time() * 1000)
            signed = sealed(Signer("unit-a", A), MsgType.STARTUP, 9, 0, STATION, {"unit": "unit-a", "n": 5}, now=now)
            other = sealed(Signer("unit-a", A), MsgType.STARTUP, 11, 0, STATION, {"unit": "unit-a", "n": 6}, now=now)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s2:
                s.bind(("127.0.0.1", 0))
                s2.bind(("127.0.0.1", 0))
                s.sendto(encode(KEY, MsgType.STARTUP, 9, signed)[0], st.address)        # the original
                await _until(lambda: len(rec.calls) == 2)
                s.sendto(encode(KEY, MsgType.STARTUP, 9, signed)[0], st.address)        # same port
                s2.sendto(encode(KEY, MsgType.STARTUP, 9, signed)[0], st.address)       # another port
                s2.sendto(encode(KEY, MsgType.STARTUP, 12, other)[0], st.address)       # another seq
                await _until(lambda: st.stats["refused"] >= 3)
            assert [m.body.get("n") for m in rec.calls] == [1, 5]
            assert st.stats["refused_replayed"] == 2 and st.stats["refused_bad-signature"] == 1
            # a replay is refused before the verifier sees it (the station's records it nothing)
            assert st.verifier.calls == 3  # type: ignore[union-attr]
    asyncio.run(go())


def test_ep_ack_from_a_peer_unit_does_not_complete_a_send():
    async def go():
        async with station_and_unit() as (_st, ua, _rec):
            # unit-a's endpoint asks "the station" at the port of a peer that signs as unit-b
            peer = await Endpoint.open(KEY, Recorder(), "127.0.0.1", 0, name="b", signer=Signer("unit-b", B),
                                       verifier=Trust({"unit-a": A}))
            try:
                with pytest.raises(Unavailable, match="no acknowledgement"):
                    await ua.send(peer.address, MsgType.STARTUP, {"unit": "unit-a"}, timeout=1)
            finally:
                peer.close()
            assert ua.stats["refused_not-station"] >= 1
    asyncio.run(go())


def test_ep_ack_signed_by_another_enrolled_unit_does_not_complete_a_send():
    async def go():
        st = await Endpoint.open(KEY, Recorder(), "127.0.0.1", 0, name="st", signer=Signer(STATION, S),
                                 verifier=Trust({"unit-a": A, "unit-b": B}))
        b = await Endpoint.open(KEY, Recorder(), "127.0.0.1", 0, name="b", signer=Signer("unit-b", B),
                                verifier=StationPin(S.public_key()))
        try:
            # the station's EXPORTS for unit-a, sent where unit-b answers: its signed ACK is not unit-a's
            with pytest.raises(Unavailable):
                await st.send(b.address, MsgType.EXPORTS, {"unit": "unit-a"}, timeout=1)
            assert st.stats["refused_ack-from-other"] >= 1
            assert b.stats["refused_misaddressed"] >= 1 or b.stats["received_exports"] == 0
        finally:
            st.close()
            b.close()
    asyncio.run(go())


def test_gp_retransmissions_are_resigned_and_each_verifies():
    async def go():
        async with station_and_unit() as (st, ua, _rec):
            seen: list[bytes] = []
            real = st.datagram_received

            def drop_first_two(data, addr):
                seen.append(data)
                if len(seen) > 2:
                    real(data, addr)

            st.datagram_received = drop_first_two  # type: ignore[method-assign]
            ack = await ua.send(st.address, MsgType.STARTUP, {"unit": "unit-a", "n": 1}, timeout=5, rto=0.05)
            assert ack["status"] == "ok"
            ids = {json.loads(decode(KEY, d).payload)["auth"]["id"] for d in seen}
            assert len(ids) == len(seen) >= 3
    asyncio.run(go())


def test_ep_unit_agent_takes_both_keys_or_neither():
    from unit_agent.agent import UnitAgent

    for kw in ({"signer": Signer("unit-a", A)}, {"station_pin": StationPin(S.public_key())}):
        with pytest.raises(ValueError, match="both its own key and the station's"):
            UnitAgent("unit-a", KEY, ("127.0.0.1", 9), "127.0.0.1", 3260, object(), list, **kw)  # type: ignore[arg-type]


# --- the unit's settings: its key, rotation, the station's key -------------------------------
def _settings(tmp_path: Path, **kw: Any) -> Any:
    from unit_agent.settings import UnitSettings

    return UnitSettings(name="unit-a", state_dir=tmp_path / "state", **kw)


def test_gp_unit_key_rotation_keeps_the_old_key_until_the_station_takes_the_new_one(tmp_path):
    st = _settings(tmp_path)
    first = st.load_signer()
    assert first.previous is None and (tmp_path / "state" / "unit.key").exists()
    old_fp, new_fp = st.rotate_key()
    assert old_fp == fingerprint(first.key) != new_fp
    with pytest.raises(InvalidInput, match="already under way"):
        st.rotate_key()
    rotating = st.load_signer()
    assert fingerprint(rotating.key) == new_fp and fingerprint(rotating.previous) == old_fp
    env, _ = open_envelope(MsgType.STARTUP, 7, 0, sealed(rotating))
    env.verify_previous(first.key.public_key())
    rotating.confirmed()                       # the station answered a message signed by the new key
    assert not (tmp_path / "state" / "unit.key.prev").exists()
    assert st.load_signer().previous is None


def test_gp_station_key_sources_in_order(tmp_path):
    save_public_key(tmp_path / "given.pub", S)
    assert encode_public(_settings(tmp_path, station_key=encode_public(S)).load_station_pin().key) == encode_public(S)
    pin = _settings(tmp_path, station_key_file=tmp_path / "given.pub").load_station_pin()
    assert encode_public(pin.key) == encode_public(S)
    with pytest.raises(InvalidInput, match="no station key: give --station-key-file"):
        _settings(tmp_path).load_station_pin()
    tofu = _settings(tmp_path, station_trust="first-contact").load_station_pin()
    assert tofu.key is None and tofu.first_contact
    asyncio.run(tofu(_station_env(Signer(STATION, S)), None, ("127.0.0.1", 1)))
    # pinned: the next start takes the saved key, whatever the trust setting says
    again = _settings(tmp_path).load_station_pin()
    assert encode_public(again.key) == encode_public(S) and not again.first_contact
    with pytest.raises(InvalidInput):
        _settings(tmp_path, station_key="nope").load_station_pin()
