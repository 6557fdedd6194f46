"""dvsan.identity, the cases its mutants showed untested: the exact signed bytes, the limits of an
envelope's fields, the seen cache's edges and bound, key files' modes and messages, the pin's log."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from dvsan.errors import IdentityRefused, InvalidInput
from dvsan.identity import (
    STATION,
    Ed25519PrivateKey,
    SeenCache,
    Signer,
    StationPin,
    decode_public,
    encode_public,
    fingerprint,
    load_or_create,
    load_private_key,
    load_public_key,
    open_envelope,
    save_private_key,
    seal,
    signed_bytes,
)
from dvsan.protocol import MsgType

NOW = 1_790_000_000_000
# fixed keys, so the expected values below are constants
A = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
B = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
ID = "0123456789abcdef0123456789abcdef"


def wire(body: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(body))


def envelope(**auth: Any) -> dict[str, Any]:
    base = {"from": "unit-a", "to": STATION, "ts": NOW, "id": ID, "key": encode_public(A), "sig": "AA=="}
    return {"unit": "unit-a", "auth": {**base, **auth}}


# --- what is signed ----------------------------------------------------------------------------
def test_gp_the_signed_bytes_are_the_domain_and_canonical_json() -> None:
    fields = {"to": STATION, "from": "unit-a", "ts": NOW, "id": ID, "key": "K", "sig": "S", "prev": "P"}
    got = signed_bytes(MsgType.STARTUP, 2**32 + 7, 2**32 + 3, fields, {"b": [1, 2], "a": "é"})
    assert got == (b"dvsan-sig-v1\n"
                   b'{"ack":3,"auth":{"from":"unit-a","id":"' + ID.encode() + b'","key":"K","to":"@station",'
                   b'"ts":1790000000000},"body":{"a":"\\u00e9","b":[1,2]},"seq":7,"type":1}')


def test_gp_a_sealed_envelope_carries_exactly_its_fields_and_a_verifying_signature() -> None:
    body = {"unit": "unit-a"}
    out = seal(Signer("unit-a", A), MsgType.HEARTBEAT, 9, 4, STATION, body, NOW, msg_id=ID)
    assert body == {"unit": "unit-a"}                                      # the caller's dict is untouched
    auth = out["auth"]
    assert set(auth) == {"from", "to", "ts", "id", "key", "sig"}
    assert (auth["from"], auth["to"], auth["ts"], auth["id"], auth["key"]) == \
        ("unit-a", STATION, NOW, ID, encode_public(A))
    A.public_key().verify(base64.b64decode(auth["sig"]),
                          signed_bytes(MsgType.HEARTBEAT, 9, 4, auth, {"unit": "unit-a"}))
    rotating = seal(Signer("unit-a", B, previous=A), MsgType.HEARTBEAT, 9, 4, STATION, body, NOW, msg_id=ID)
    data = signed_bytes(MsgType.HEARTBEAT, 9, 4, rotating["auth"], body)
    B.public_key().verify(base64.b64decode(rotating["auth"]["sig"]), data)
    A.public_key().verify(base64.b64decode(rotating["auth"]["prev"]), data)


def test_gp_a_fresh_message_id_is_32_hex_digits_each_time() -> None:
    ids = {seal(Signer("unit-a", A), MsgType.STARTUP, 1, 0, STATION, {}, NOW)["auth"]["id"] for _ in range(20)}
    assert len(ids) == 20 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_gp_open_envelope_returns_every_field_it_was_given() -> None:
    out = wire(seal(Signer("unit-a", B, previous=A), MsgType.STARTUP, 5, 2, STATION, {"unit": "unit-a"}, NOW,
                    msg_id=ID))
    env, inner = open_envelope(MsgType.STARTUP, 5, 2, out)
    assert inner == {"unit": "unit-a"}
    assert (env.sender, env.recipient, env.timestamp_ms, env.msg_id, env.public_key) == \
        ("unit-a", STATION, NOW, ID, encode_public(B))
    assert env.signature == base64.b64decode(out["auth"]["sig"])
    assert env.previous == base64.b64decode(out["auth"]["prev"])
    assert env.data == signed_bytes(MsgType.STARTUP, 5, 2, out["auth"], {"unit": "unit-a"})
    env.verify(B.public_key())
    env.verify_previous(A.public_key())


# --- the limits of an envelope -----------------------------------------------------------------
@pytest.mark.parametrize("field", ["from", "to", "key"])
def test_gp_a_field_of_255_characters_is_taken_and_one_of_256_refused(field: str) -> None:
    env, _ = open_envelope(MsgType.STARTUP, 1, 0, envelope(**{field: "x" * 255}))
    assert getattr(env, {"from": "sender", "to": "recipient", "key": "public_key"}[field]) == "x" * 255
    with pytest.raises(IdentityRefused) as e:
        open_envelope(MsgType.STARTUP, 1, 0, envelope(**{field: "x" * 256}))
    assert e.value.reason == "malformed"
    assert str(e.value) == "bad identity envelope: from, to, key and sig must be non-empty strings"


def test_gp_one_character_fields_are_taken() -> None:
    env, _ = open_envelope(MsgType.STARTUP, 1, 0, envelope(**{"from": "a", "to": "b", "key": "k"}))
    assert (env.sender, env.recipient, env.public_key) == ("a", "b", "k")


@pytest.mark.parametrize("auth, message", [
    ({"ts": "now"}, "bad identity envelope: ts must be an integer and id 32 hex digits"),
    ({"ts": False}, "bad identity envelope: ts must be an integer and id 32 hex digits"),
    ({"id": 12}, "bad identity envelope: ts must be an integer and id 32 hex digits"),
    ({"id": ID.upper()}, "bad identity envelope: ts must be an integer and id 32 hex digits"),
    ({"sig": 5}, "bad identity envelope: from, to, key and sig must be non-empty strings"),
    ({"extra": 1, "more": 2}, "bad identity envelope: unknown fields ['extra', 'more']"),
    ({"prev": "not base64!"}, None),
    ({"prev": ["AA=="]}, "bad identity envelope: prev must be a string"),
    ({"sig": "AA="}, None),
])
def test_ep_malformed_envelopes_are_refused_saying_why(auth: dict[str, Any], message: str | None) -> None:
    with pytest.raises(IdentityRefused) as e:
        open_envelope(MsgType.STARTUP, 1, 0, envelope(**auth))
    assert e.value.reason == "malformed"
    if message is not None:
        assert str(e.value) == message
    else:
        assert str(e.value).startswith("bad identity envelope: ")


def test_gp_a_prev_of_null_is_no_previous_signature() -> None:
    env, _ = open_envelope(MsgType.STARTUP, 1, 0, envelope(prev=None))
    assert env.previous is None


def test_ep_unsigned_and_non_object_envelopes_say_so() -> None:
    with pytest.raises(IdentityRefused) as e:
        open_envelope(MsgType.STARTUP, 1, 0, {"unit": "unit-a"})
    assert (e.value.reason, str(e.value)) == ("unsigned", "the message carries no identity signature")
    with pytest.raises(IdentityRefused) as e:
        open_envelope(MsgType.STARTUP, 1, 0, {"unit": "unit-a", "auth": ["x"]})
    assert (e.value.reason, str(e.value)) == ("malformed", "field 'auth' must be an object")


def test_ep_signature_failures_name_the_sender_and_the_key() -> None:
    env, _ = open_envelope(MsgType.STARTUP, 1, 0, wire(seal(Signer("unit-a", A), MsgType.STARTUP, 1, 0, STATION,
                                                            {}, NOW, msg_id=ID)))
    with pytest.raises(IdentityRefused) as e:
        env.verify(B.public_key())
    assert (e.value.reason, str(e.value)) == \
        ("bad-signature", f"message from 'unit-a' is not signed by its key ({fingerprint(B)})")
    with pytest.raises(IdentityRefused) as e:
        env.verify_previous(A.public_key())
    assert (e.value.reason, str(e.value)) == \
        ("key-mismatch", "'unit-a' offers a new key without the old key's signature")
    rot, _ = open_envelope(MsgType.STARTUP, 1, 0, wire(seal(Signer("unit-a", A, previous=B), MsgType.STARTUP,
                                                            1, 0, STATION, {}, NOW, msg_id=ID)))
    with pytest.raises(IdentityRefused) as e:
        rot.verify_previous(A.public_key())
    assert (e.value.reason, str(e.value)) == \
        ("key-mismatch", "'unit-a': the rotation signature is not by the enrolled key")


# --- keys and key files ------------------------------------------------------------------------
def test_gp_public_key_and_fingerprint_are_what_openssh_shows() -> None:
    raw = A.public_key().public_bytes_raw()
    assert encode_public(A) == encode_public(A.public_key()) == base64.b64encode(raw).decode()
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    assert fingerprint(A) == fingerprint(A.public_key()) == fingerprint(encode_public(A)) == expected
    assert decode_public(" " + encode_public(A) + "\n").public_bytes_raw() == raw


def test_ep_a_bad_public_key_is_quoted_at_most_60_characters() -> None:
    bad = "!" * 100
    with pytest.raises(InvalidInput) as e:
        decode_public(bad)
    assert str(e.value) == f"not a base64 Ed25519 public key: {'!' * 60!r}"
    with pytest.raises(InvalidInput, match="an Ed25519 public key is 32 bytes, not 33"):
        decode_public(base64.b64encode(b"x" * 33).decode())
    good = encode_public(A)
    with pytest.raises(InvalidInput, match="not a base64"):
        decode_public(good[:20] + "!" + good[20:])          # a stray character: refused, not skipped


def test_ep_an_unreadable_public_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"cannot read public key .*nope.pub: No such file or directory"):
        load_public_key(tmp_path / "nope.pub")


def test_gp_a_private_key_saved_in_new_directories_makes_them_0700(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "a" / "b" / "unit.key"
        save_private_key(path, A)
        save_private_key(tmp_path / "a" / "b" / "other.key", B)     # the directory exists by then
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a" / "b").st_mode & 0o777 == 0o700
    assert load_private_key(path).public_key().public_bytes_raw() == A.public_key().public_bytes_raw()
    assert sorted(p.name for p in path.parent.iterdir()) == ["other.key", "unit.key"]


def test_ep_an_executable_or_group_writable_key_is_refused_naming_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "unit.key"
    save_private_key(path, A)
    os.chmod(path, 0o610)
    with pytest.raises(InvalidInput) as e:
        load_private_key(path)
    assert str(e.value) == (f"private key {path} is accessible by group or others (mode 0610): chmod 600 it, "
                            "and consider it exposed")
    os.chmod(path, 0o700)                                  # the owner's bits alone are fine
    assert load_private_key(path).public_key().public_bytes_raw() == A.public_key().public_bytes_raw()


def test_ep_a_key_file_of_another_kind_is_named(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed448
    path = tmp_path / "unit.key"
    path.write_bytes(ed448.Ed448PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(path, 0o600)
    with pytest.raises(InvalidInput) as e:
        load_private_key(path)
    assert str(e.value) == f"{path} holds a Ed448PrivateKey, not an Ed25519 key"


def test_gp_load_or_create_takes_the_key_another_process_made_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dvsan import identity
    path = tmp_path / "unit.key"
    real = identity.save_private_key

    def racing(p: Path, key: Ed25519PrivateKey) -> None:
        real(p, A)                  # the other process wins the race...
        real(p, key)                # ...so ours finds the file there

    monkeypatch.setattr(identity, "save_private_key", racing)
    key, created = load_or_create(path)
    assert created is False
    assert key.public_key().public_bytes_raw() == A.public_key().public_bytes_raw()


def test_gp_a_signer_without_a_callback_confirms_quietly() -> None:
    signer = Signer("unit-a", B, previous=A)
    signer.confirmed()
    assert signer.previous is None
    assert (signer.name, signer.public) == ("unit-a", encode_public(B))


# --- the seen cache ----------------------------------------------------------------------------
def _env(n: int, ts: int = NOW, sender: str = "unit-a") -> Any:
    body = wire(seal(Signer(sender, A), MsgType.STARTUP, 1, 0, STATION, {}, ts, msg_id=f"{n:032x}"))
    return open_envelope(MsgType.STARTUP, 1, 0, body)[0]


def test_gp_the_seen_cache_takes_a_timestamp_exactly_at_the_window_edge() -> None:
    cache = SeenCache(window_ms=1000)
    for off in (-1000, 1000):
        cache.check(_env(1, NOW + off), NOW)
    with pytest.raises(IdentityRefused) as e:
        cache.check(_env(1, NOW + 1001), NOW)
    assert (e.value.reason, str(e.value)) == ("stale", "signed +1001 ms from our clock")
    with pytest.raises(IdentityRefused) as e:
        cache.check(_env(1, NOW - 1001), NOW)
    assert str(e.value) == "signed -1001 ms from our clock"


def test_ep_a_replay_is_refused_until_twice_the_window_has_passed_and_names_the_message() -> None:
    cache = SeenCache(window_ms=1000)
    first = _env(1)
    cache.take(first, NOW)
    with pytest.raises(IdentityRefused) as e:
        cache.take(first, NOW + 1000)
    assert (e.value.reason, str(e.value)) == ("replayed", f"message {1:032x} from 'unit-a' already taken")
    cache.take(_env(2, NOW + 2000), NOW + 2000)            # expiry of the first is now: still held
    assert len(cache) == 2
    cache.take(_env(3, NOW + 2001), NOW + 2001)            # past it: forgotten
    assert len(cache) == 2


def test_gp_the_seen_cache_holds_at_most_max_entries() -> None:
    cache = SeenCache(window_ms=60_000, max_entries=3)
    for n in range(6):
        cache.take(_env(n), NOW)
        assert len(cache) == min(n + 1, 3)
    cache.take(_env(0), NOW)                               # the oldest went first: taken again
    with pytest.raises(IdentityRefused):
        cache.check(_env(5), NOW)                          # the newest is still held


def test_gp_the_default_window_is_a_minute() -> None:
    cache = SeenCache()
    cache.check(_env(1, NOW - 60_000), NOW)
    with pytest.raises(IdentityRefused):
        cache.check(_env(1, NOW - 60_001), NOW)


# --- the station pin ---------------------------------------------------------------------------
def test_gp_first_contact_pin_is_logged_with_its_fingerprint_and_the_peer(caplog: pytest.LogCaptureFixture) -> None:
    body = wire(seal(Signer(STATION, B), MsgType.EXPORTS, 3, 0, "unit-a", {"unit": "unit-a"}, NOW, msg_id=ID))
    env = open_envelope(MsgType.EXPORTS, 3, 0, body)[0]
    pin = StationPin(None, first_contact=True)             # no save callback: pinned in memory only
    with caplog.at_level(logging.WARNING, logger="dvsan.identity"):
        key = asyncio.run(pin(env, None, ("10.0.0.5", 4000)))
    assert key.public_bytes_raw() == B.public_key().public_bytes_raw()
    assert pin.key is key
    assert [r.getMessage() for r in caplog.records] == [
        f"pinned the station's key {fingerprint(B)} on first contact from ('10.0.0.5', 4000)"]


def test_ep_the_pin_says_who_it_refused_and_why() -> None:
    env = open_envelope(MsgType.EXPORTS, 3, 0, wire(seal(Signer("unit-b", B), MsgType.EXPORTS, 3, 0, "unit-a",
                                                          {}, NOW, msg_id=ID)))[0]
    with pytest.raises(IdentityRefused) as e:
        asyncio.run(StationPin(A.public_key())(env, None, ("10.0.0.5", 4000)))
    assert str(e.value) == "a message signed by 'unit-b': a unit takes messages from the station only"
    st_env = open_envelope(MsgType.EXPORTS, 3, 0, wire(seal(Signer(STATION, B), MsgType.EXPORTS, 3, 0, "unit-a",
                                                             {}, NOW, msg_id=ID)))[0]
    with pytest.raises(IdentityRefused) as e:
        asyncio.run(StationPin(None)(st_env, None, ("10.0.0.5", 4000)))
    assert str(e.value) == "no station key pinned (give --station-key-file)"


def test_ep_stray_characters_in_a_signature_are_malformed_not_skipped() -> None:
    for auth in ({"sig": "AAAA!"}, {"prev": "AAAA!"}):
        with pytest.raises(IdentityRefused) as e:
            open_envelope(MsgType.STARTUP, 1, 0, envelope(**auth))
        assert e.value.reason == "malformed"


def test_ep_an_unknown_field_beside_prev_is_named_alone() -> None:
    with pytest.raises(IdentityRefused) as e:
        open_envelope(MsgType.STARTUP, 1, 0, envelope(prev="AA==", extra=1))
    assert str(e.value) == "bad identity envelope: unknown fields ['extra']"


def test_gp_the_seen_cache_defaults_to_a_minute_and_200000_entries() -> None:
    cache = SeenCache()
    assert (cache.window_ms, cache.max_entries) == (60_000, 200_000)
