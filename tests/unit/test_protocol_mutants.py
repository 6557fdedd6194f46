"""dvsan.protocol, the cases its mutants showed untested: the exact bytes on the wire, the detail
each refusal carries (it is what the endpoint logs), and the edges of the replay guard and the
reassembler's bounds."""

from __future__ import annotations

import hmac
import json
import time
from hashlib import sha256

import pytest

from dvsan.errors import ProtocolError
from dvsan.protocol import (
    HEADER,
    MAC_LEN,
    MAX_DATAGRAM,
    MAX_FRAGMENTS,
    MAX_PAYLOAD,
    MsgType,
    Reassembler,
    ReplayGuard,
    check_key,
    decode,
    encode,
)
from tests.unit.test_protocol import KEY, NOW, PEER, forge


def refusal(datagram: bytes) -> str:
    with pytest.raises(ProtocolError) as e:
        decode(KEY, datagram)
    return str(e.value)


# --- the bytes on the wire ---------------------------------------------------------------------
def test_gp_a_datagram_is_the_documented_header_compact_sorted_json_and_its_mac() -> None:
    [d] = encode(KEY, MsgType.EXPORTS, 2**32 + 9, {"unit": "unit-a", "b": [1, 2], "a": "é"},
                 ack=2**32 + 4, wants_ack=True, now_ms=NOW)
    payload = b'{"a":"\\u00e9","b":[1,2],"unit":"unit-a"}'
    magic, version, mtype, flags, seq, ack, ts, _nonce, fidx, fcount, plen = HEADER.unpack_from(d)
    assert (magic, version, mtype, flags, seq, ack, ts, fidx, fcount, plen) == \
        (b"DVSN", 1, 6, 1, 9, 4, NOW, 0, 1, len(payload))
    assert d[HEADER.size:-MAC_LEN] == payload
    assert d[-MAC_LEN:] == hmac.new(KEY, d[:-MAC_LEN], sha256).digest()
    assert len(d) == HEADER.size + len(payload) + MAC_LEN


def test_gp_encode_defaults_ack_0_wants_an_ack_and_stamps_the_current_time() -> None:
    before = int(time.time() * 1000)
    [d] = encode(KEY, MsgType.STARTUP, 1, {})
    after = int(time.time() * 1000)
    f = decode(KEY, d)
    assert (f.ack, f.flags, f.seq) == (0, 1, 1)
    assert before <= f.timestamp_ms <= after
    [no_ack] = encode(KEY, MsgType.ACK, 1, {}, wants_ack=False, now_ms=NOW)
    assert decode(KEY, no_ack).flags == 0


def test_gp_every_datagram_gets_its_own_8_byte_nonce() -> None:
    ds = encode(KEY, MsgType.STORAGE_INFO, 3, {"x": "a" * (3 * MAX_PAYLOAD)}, now_ms=NOW)
    frags = [decode(KEY, d) for d in ds]
    assert [(f.frag_index, f.frag_count) for f in frags] == [(i, 4) for i in range(4)]
    assert all(len(f.nonce) == 8 for f in frags)
    assert len({f.nonce for f in frags}) == 4
    assert frags[0].nonce == ds[0][24:32]


def test_gp_fragments_are_full_slices_of_the_payload_in_order() -> None:
    body = {"x": "a" * (2 * MAX_PAYLOAD)}
    payload = json.dumps(body, separators=(",", ":")).encode()
    ds = encode(KEY, MsgType.STORAGE_INFO, 3, body, now_ms=NOW)
    parts = [decode(KEY, d).payload for d in ds]
    assert [len(p) for p in parts[:-1]] == [MAX_PAYLOAD] * (len(ds) - 1)
    assert b"".join(parts) == payload
    assert max(len(d) for d in ds) == MAX_DATAGRAM


def test_gp_a_message_of_exactly_the_fragment_limit_is_sent() -> None:
    body = {"x": ""}
    overhead = len(json.dumps(body, separators=(",", ":")))
    body["x"] = "a" * (MAX_FRAGMENTS * MAX_PAYLOAD - overhead)
    assert len(encode(KEY, MsgType.STORAGE_INFO, 1, body, now_ms=NOW)) == MAX_FRAGMENTS
    body["x"] += "a"
    with pytest.raises(ValueError) as e:
        encode(KEY, MsgType.STORAGE_INFO, 1, body, now_ms=NOW)
    assert str(e.value) == (f"message of {MAX_FRAGMENTS * MAX_PAYLOAD + 1} bytes needs more than "
                            f"{MAX_FRAGMENTS} fragments")


def test_ep_encode_names_the_type_of_a_body_that_is_not_an_object() -> None:
    with pytest.raises(ValueError) as e:
        encode(KEY, MsgType.STARTUP, 1, [1, 2])  # type: ignore[arg-type]
    assert str(e.value) == "a message body must be a JSON object, not list"


def test_gp_the_cluster_key_is_16_bytes_at_least() -> None:
    assert check_key(b"k" * 16) == b"k" * 16
    with pytest.raises(ValueError) as e:
        check_key(b"k" * 15)
    assert str(e.value) == "the cluster key must be at least 16 bytes"


# --- what each refusal says --------------------------------------------------------------------
def test_ep_each_refusal_carries_its_detail() -> None:
    assert refusal(b"\0" * (MAX_DATAGRAM + 1)) == f"oversized: {MAX_DATAGRAM + 1} bytes > {MAX_DATAGRAM}"
    assert refusal(b"HTTP/1.1 200 OK") == "bad-magic: b'HTTP'"
    assert refusal(b"DVSN" + b"\0" * 10) == "truncated: 14 bytes"
    short = forge(payload=b"{}", plen=3)
    assert refusal(short) == f"truncated: payload length 3 does not match datagram of {len(short)} bytes"
    assert refusal(forge(payload=b"{}")[:-1] + b"\0") == "bad-signature"
    assert refusal(forge(version=2)) == "bad-version: 2"
    assert refusal(forge(mtype=99)) == "bad-type: 99"
    assert refusal(forge(fidx=3, fcount=3)) == "bad-fragment: 3/3"
    assert refusal(forge(fidx=0, fcount=0)) == "bad-fragment: 0/0"


def test_gp_the_smallest_datagram_of_ours_is_header_and_mac() -> None:
    d = forge(payload=b"")
    assert len(d) == HEADER.size + MAC_LEN
    assert decode(KEY, d).payload == b""


@pytest.mark.parametrize("fidx, fcount", [(MAX_FRAGMENTS - 1, MAX_FRAGMENTS), (0, 1), (1, 2)])
def test_gp_fragment_numbers_at_their_limits_are_taken(fidx: int, fcount: int) -> None:
    f = decode(KEY, forge(fidx=fidx, fcount=fcount))
    assert (f.frag_index, f.frag_count) == (fidx, fcount)


def test_ep_more_fragments_than_the_limit_are_refused() -> None:
    assert refusal(forge(fidx=0, fcount=MAX_FRAGMENTS + 1)) == f"bad-fragment: 0/{MAX_FRAGMENTS + 1}"


def test_gp_decode_returns_every_header_field() -> None:
    f = decode(KEY, forge(mtype=int(MsgType.WIPE), flags=1, seq=77, ack=66, ts=NOW + 5, nonce=0x0102030405060708,
                          fidx=1, fcount=3, payload=b'{"a"'))
    assert (f.type, f.flags, f.seq, f.ack, f.timestamp_ms, f.nonce, f.frag_index, f.frag_count, f.payload) == \
        (MsgType.WIPE, 1, 77, 66, NOW + 5, bytes([1, 2, 3, 4, 5, 6, 7, 8]), 1, 3, b'{"a"')


# --- the replay guard --------------------------------------------------------------------------
def test_ep_stale_and_replayed_say_by_how_much_and_which_nonce() -> None:
    g = ReplayGuard(window_ms=1000)
    with pytest.raises(ProtocolError) as e:
        g.check(PEER, decode(KEY, forge(ts=NOW + 1001)), NOW)
    assert str(e.value) == "stale: timestamp +1001 ms off"
    with pytest.raises(ProtocolError) as e:
        g.check(PEER, decode(KEY, forge(ts=NOW - 1001)), NOW)
    assert str(e.value) == "stale: timestamp -1001 ms off"
    f = decode(KEY, forge(nonce=0xABCDEF))
    g.check(PEER, f, NOW)
    with pytest.raises(ProtocolError) as e:
        g.check(PEER, f, NOW)
    assert str(e.value) == "replayed: nonce 0000000000abcdef"


def test_gp_a_nonce_is_held_until_exactly_twice_the_window_then_forgotten() -> None:
    g = ReplayGuard(window_ms=1000)
    g.check(PEER, decode(KEY, forge(nonce=1, ts=NOW)), NOW)
    g.check(PEER, decode(KEY, forge(nonce=2, ts=NOW + 2000)), NOW + 2000)   # expiry of nonce 1: kept
    assert len(g._seen) == 2
    g.check(PEER, decode(KEY, forge(nonce=3, ts=NOW + 2001)), NOW + 2001)   # past it: forgotten
    assert list(g._seen) == [(2).to_bytes(8, "big"), (3).to_bytes(8, "big")]


def test_gp_the_guard_holds_exactly_max_entries_dropping_the_oldest() -> None:
    g = ReplayGuard(window_ms=60_000, max_entries=3)
    for n in range(6):
        g.check(PEER, decode(KEY, forge(nonce=n)), NOW)
        assert len(g._seen) == min(n + 1, 3)
    g.check(PEER, decode(KEY, forge(nonce=0)), NOW)          # the oldest went: taken again
    with pytest.raises(ProtocolError):
        g.check(PEER, decode(KEY, forge(nonce=5)), NOW)      # the newest is still held


# --- the reassembler ---------------------------------------------------------------------------
def halves(seq: int, first: bytes = b'{"a":', second: bytes = b"1}") -> tuple[bytes, bytes]:
    return (forge(seq=seq, nonce=2 * seq, fidx=0, fcount=2, payload=first),
            forge(seq=seq, nonce=2 * seq + 1, fidx=1, fcount=2, payload=second))


def test_gp_a_reassembled_message_keeps_its_header_fields() -> None:
    r = Reassembler()
    a = forge(mtype=int(MsgType.EXPORTS), seq=12, ack=3, flags=1, nonce=1, fidx=0, fcount=2, payload=b'{"a":')
    b = forge(mtype=int(MsgType.EXPORTS), seq=12, ack=3, flags=1, nonce=2, fidx=1, fcount=2, payload=b"1}")
    assert r.add(PEER, decode(KEY, a), NOW) is None
    m = r.add(PEER, decode(KEY, b), NOW)
    assert m is not None
    assert (m.type, m.seq, m.ack, m.body, m.wants_ack, m.sender) == (MsgType.EXPORTS, 12, 3, {"a": 1}, True, None)
    single = r.add(PEER, decode(KEY, forge(mtype=int(MsgType.ACK), seq=4, ack=9, flags=0, nonce=3)), NOW)
    assert single is not None
    assert (single.type, single.seq, single.ack, single.wants_ack) == (MsgType.ACK, 4, 9, False)
    flagged = r.add(PEER, decode(KEY, forge(flags=3, nonce=4)), NOW)
    assert flagged is not None and flagged.wants_ack is True
    assert (r.pending, r.buffered_bytes) == (0, 0)


def test_gp_a_repeated_fragment_is_counted_once() -> None:
    r = Reassembler()
    a, b = halves(1)
    assert r.add(PEER, decode(KEY, a), NOW) is None
    assert r.add(PEER, decode(KEY, a), NOW) is None
    assert (r.pending, r.buffered_bytes) == (1, 5)
    m = r.add(PEER, decode(KEY, b), NOW)
    assert m is not None and m.body == {"a": 1}
    assert (r.pending, r.buffered_bytes) == (0, 0)


def test_gp_a_fragment_count_change_drops_the_partial_message_and_its_bytes() -> None:
    r = Reassembler()
    r.add(PEER, decode(KEY, forge(seq=9, fidx=0, fcount=3, payload=b'{"a":')), NOW)
    with pytest.raises(ProtocolError) as e:
        r.add(PEER, decode(KEY, forge(seq=9, nonce=2, fidx=1, fcount=2, payload=b"1}")), NOW)
    assert str(e.value) == "bad-fragment: fragment count changed within one message"
    assert (r.pending, r.buffered_bytes) == (0, 0)


def test_gp_the_byte_bound_is_inclusive_and_counts_each_eviction_once() -> None:
    r = Reassembler(max_bytes=10)
    r.add(PEER, decode(KEY, halves(1)[0]), NOW)
    r.add(PEER, decode(KEY, halves(2)[0]), NOW)                   # exactly 10 bytes: both kept
    assert (r.pending, r.buffered_bytes, r.counts["partial_evicted"]) == (2, 10, 0)
    r.add(PEER, decode(KEY, halves(3)[0]), NOW)                   # 15: the oldest goes
    assert (r.pending, r.buffered_bytes, r.counts["partial_evicted"]) == (2, 10, 1)
    m = r.add(PEER, decode(KEY, halves(3)[1]), NOW)                # 12 before it completes: seq 2 goes
    assert m is not None and m.body == {"a": 1}
    assert (r.pending, r.buffered_bytes, r.counts["partial_evicted"]) == (0, 0, 2)


def test_gp_the_pending_bound_is_inclusive() -> None:
    r = Reassembler(max_pending=2)
    r.add(PEER, decode(KEY, halves(1)[0]), NOW)
    r.add(PEER, decode(KEY, halves(2)[0]), NOW)
    assert (r.pending, r.counts["partial_evicted"]) == (2, 0)
    r.add(PEER, decode(KEY, halves(3)[0]), NOW)
    assert (r.pending, r.counts["partial_evicted"]) == (2, 1)


def test_gp_expiry_counts_one_per_message_and_frees_its_bytes() -> None:
    r = Reassembler(timeout_ms=1000)
    r.add(PEER, decode(KEY, halves(1)[0]), NOW)
    r.add(PEER, decode(KEY, halves(2)[0]), NOW + 10)
    r.expire(NOW + 1005)
    assert (r.pending, r.buffered_bytes, r.counts["partial_expired"]) == (1, 5, 1)
    r.expire(NOW + 1010)
    assert (r.pending, r.counts["partial_expired"]) == (1, 1)
    r.expire(NOW + 1011)
    assert (r.pending, r.buffered_bytes, r.counts["partial_expired"]) == (0, 0, 2)


def test_gp_the_reassembler_counts_in_the_counter_it_is_given_or_its_own() -> None:
    from collections import Counter
    mine: Counter[str] = Counter()
    r = Reassembler(timeout_ms=1, counts=mine)
    r.add(PEER, decode(KEY, halves(1)[0]), NOW)
    r.expire(NOW + 2)
    assert r.counts is mine and mine["partial_expired"] == 1
    own = Reassembler()
    assert own.counts == Counter() and own.counts is not Reassembler().counts


def test_ep_a_payload_that_is_not_an_object_says_so() -> None:
    with pytest.raises(ProtocolError) as e:
        Reassembler().add(PEER, decode(KEY, forge(payload=b"[1]")), NOW)
    assert str(e.value) == "bad-payload: payload is not a JSON object"
    with pytest.raises(ProtocolError) as e:
        Reassembler().add(PEER, decode(KEY, forge(payload=b'{"a":')), NOW)
    assert str(e.value).startswith("bad-payload: Expecting value: line 1 column 6")


def test_gp_a_raw_utf8_payload_is_read_as_utf8() -> None:
    m = Reassembler().add(PEER, decode(KEY, forge(payload='{"a":"é"}'.encode())), NOW)
    assert m is not None and m.body == {"a": "é"}


def test_gp_the_default_bounds_are_the_documented_ones() -> None:
    g = ReplayGuard()
    assert (g.window_ms, g.max_entries) == (60_000, 200_000)
    r = Reassembler()
    assert (r.timeout_ms, r.max_pending, r.max_bytes) == (30_000, 1024, 32 * 1024 * 1024)
