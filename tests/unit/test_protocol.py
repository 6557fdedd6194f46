"""The datagram codec: round trips, every way a datagram can be wrong, replay, reassembly, fuzz."""

import hmac
import json
import random
import struct
from hashlib import sha256

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvsan.errors import ProtocolError
from dvsan.protocol import (
    HEADER,
    MAC_LEN,
    MAGIC,
    MAX_DATAGRAM,
    MAX_FRAGMENTS,
    MAX_PAYLOAD,
    REPLAY_WINDOW_MS,
    VERSION,
    MsgType,
    Reassembler,
    ReplayGuard,
    check_key,
    decode,
    encode,
)

KEY = b"k" * 32
OTHER_KEY = b"x" * 32
NOW = 1_800_000_000_000
PEER = ("192.0.2.10", 4790)


def forge(
    key=KEY,
    *,
    magic=MAGIC,
    version=VERSION,
    mtype=int(MsgType.STARTUP),
    flags=1,
    seq=7,
    ack=0,
    ts=NOW,
    nonce=1,
    fidx=0,
    fcount=1,
    payload=b"{}",
    plen=None,
):
    """A datagram with any header, signed with `key`: what an authenticated, broken peer sends."""
    data = (
        HEADER.pack(
            magic,
            version,
            mtype,
            flags,
            seq,
            ack,
            ts,
            nonce,
            fidx,
            fcount,
            len(payload) if plen is None else plen,
        )
        + payload
    )
    return data + hmac.new(key, data, sha256).digest()


def reason(datagram, key=KEY):
    with pytest.raises(ProtocolError) as ei:
        decode(key, datagram)
    return ei.value.reason


def whole(datagrams, peer=PEER, now=NOW, reasm=None):
    reasm = reasm or Reassembler()
    msgs = [reasm.add(peer, decode(KEY, d), now) for d in datagrams]
    assert all(m is None for m in msgs[:-1])
    assert msgs[-1] is not None
    return msgs[-1]


def inventory(n):
    """A unit's STORAGE_INFO body with `n` partitions."""
    return {
        "unit": "unit-a",
        "partitions": [
            {
                "device": f"vd{chr(97 + i % 26)}{i}",
                "disk": f"vd{chr(97 + i % 26)}",
                "number": i,
                "start_lba": 2048 * i,
                "length_blocks": 4096,
                "end_lba": 2048 * i + 4095,
                "block_size": 512,
                "size_bytes": 4096 * 512,
            }
            for i in range(n)
        ],
    }


# --- good path ----------------------------------------------------------------------------------


def test_gp_single_datagram_round_trip():
    body = {"unit": "unit-a", "addresses": ["192.0.2.10"], "text": "ünïcode ✓"}
    [d] = encode(KEY, MsgType.STARTUP, 41, body, now_ms=NOW)
    assert len(d) <= MAX_DATAGRAM
    f = decode(KEY, d)
    assert (f.type, f.seq, f.ack, f.timestamp_ms, f.frag_index, f.frag_count) == (
        MsgType.STARTUP,
        41,
        0,
        NOW,
        0,
        1,
    )
    m = Reassembler().add(PEER, f, NOW)
    assert m is not None
    assert (m.type, m.seq, m.ack, m.body, m.wants_ack) == (MsgType.STARTUP, 41, 0, body, True)


def test_gp_ack_carries_the_acknowledged_seq_and_wants_no_ack():
    [d] = encode(KEY, MsgType.ACK, 9, {"status": "ok"}, ack=41, wants_ack=False, now_ms=NOW)
    m = whole([d])
    assert (m.type, m.seq, m.ack, m.wants_ack, m.body) == (
        MsgType.ACK,
        9,
        41,
        False,
        {"status": "ok"},
    )


def test_gp_empty_body_and_seq_wraps_to_32_bits():
    [d] = encode(KEY, MsgType.SHUTDOWN, 2**32 + 5, {}, now_ms=NOW)
    assert decode(KEY, d).payload == b"{}"  # an empty body is sent as the two bytes {}
    assert whole([d]).body == {} and decode(KEY, d).seq == 5


@pytest.mark.parametrize("mtype", [MsgType.SHUTDOWN, MsgType.ACK])
def test_ep_an_empty_payload_is_no_json_object_and_is_dropped_as_bad_payload(mtype):
    """Side by side: `{}` is an empty body; zero bytes are no body at all (docs/protocol.md)."""
    assert whole([forge(mtype=int(mtype), payload=b"{}")]).body == {}
    f = decode(KEY, forge(mtype=int(mtype), payload=b""))  # well formed and signed
    with pytest.raises(ProtocolError) as ei:
        Reassembler().add(PEER, f, NOW)
    assert ei.value.reason == "bad-payload"


def test_ep_fragments_that_join_to_nothing_are_bad_payload():
    r = Reassembler()
    assert r.add(PEER, decode(KEY, forge(nonce=1, fidx=0, fcount=2, payload=b"")), NOW) is None
    with pytest.raises(ProtocolError) as ei:
        r.add(PEER, decode(KEY, forge(nonce=2, fidx=1, fcount=2, payload=b"")), NOW)
    assert ei.value.reason == "bad-payload" and r.pending == 0
    # the same two fragments around a real body make a message
    r.add(PEER, decode(KEY, forge(nonce=3, fidx=0, fcount=2, payload=b"{")), NOW)
    assert r.add(PEER, decode(KEY, forge(nonce=4, fidx=1, fcount=2, payload=b"}")), NOW).body == {}


@pytest.mark.parametrize("body", [[], ["unit-a"], "unit-a", None, 42])
def test_ep_encode_refuses_a_body_that_is_not_an_object(body):
    with pytest.raises(ValueError, match="must be a JSON object"):
        encode(KEY, MsgType.STARTUP, 1, body)


@pytest.mark.parametrize(
    ("extra", "fragments"), [(0, 1), (1, 2), (MAX_PAYLOAD, 2), (MAX_PAYLOAD + 1, 3)]
)
def test_gp_fragment_boundaries(extra, fragments):
    body = {"x": "a" * (MAX_PAYLOAD - len('{"x":""}') + extra)}
    ds = encode(KEY, MsgType.STORAGE_INFO, 1, body, now_ms=NOW)
    assert len(ds) == fragments
    assert all(len(d) <= MAX_DATAGRAM for d in ds)
    assert whole(ds).body == body


def test_gp_multi_fragment_round_trip_of_hundreds_of_partitions():
    body = inventory(600)
    ds = encode(KEY, MsgType.STORAGE_INFO, 77, body, now_ms=NOW)
    assert len(ds) > 50
    assert all(len(d) <= MAX_DATAGRAM for d in ds)
    frags = [decode(KEY, d) for d in ds]
    assert [f.frag_index for f in frags] == list(range(len(ds)))
    assert {(f.seq, f.frag_count, f.type) for f in frags} == {(77, len(ds), MsgType.STORAGE_INFO)}
    assert len({f.nonce for f in frags}) == len(ds)  # every datagram has its own nonce
    assert all(len(d) == MAX_DATAGRAM for d in ds[:-1])  # full fragments but the last
    assert whole(ds).body == body


def test_gp_reassembly_out_of_order_and_with_duplicates():
    body = inventory(300)
    ds = encode(KEY, MsgType.STORAGE_INFO, 5, body, now_ms=NOW)
    rng = random.Random(1)
    shuffled = ds + rng.sample(ds, 10)  # ten duplicates
    rng.shuffle(shuffled)
    last_needed = max(shuffled.index(d) for d in ds)
    shuffled = shuffled[: last_needed + 1]
    r = Reassembler()
    got = [r.add(PEER, decode(KEY, d), NOW) for d in shuffled]
    assert all(m is None for m in got[:-1]) and got[-1].body == body
    assert r.pending == 0


def test_gp_our_payload_is_ascii_so_fragments_never_cut_a_character_of_ours():
    body = {"x": "€" * MAX_PAYLOAD}
    ds = encode(KEY, MsgType.EXPORTS, 3, body, now_ms=NOW)
    assert all(decode(KEY, d).payload.isascii() for d in ds)  # "€" travels as \u20ac
    assert whole(ds).body == body


def test_gp_fragments_are_byte_slices_so_raw_utf8_cut_inside_a_character_reassembles():
    """A peer may send raw UTF-8 (the spec asks for UTF-8 JSON, not escapes): joined, then decoded."""
    text = json.dumps({"x": "€✓ü" * 10}, ensure_ascii=False).encode()
    cut = text.index("€".encode()) + 1  # inside the 3 bytes of the euro sign
    halves = [text[:cut], text[cut:]]
    with pytest.raises(UnicodeDecodeError):
        halves[0].decode()
    ds = [forge(nonce=i, fidx=i, fcount=2, payload=h) for i, h in enumerate(halves)]
    assert whole(ds).body == {"x": "€✓ü" * 10}
    assert whole(ds[::-1]).body == {"x": "€✓ü" * 10}


def test_gp_reassembly_keeps_peers_types_and_seqs_apart():
    other = ("192.0.2.11", 4790)
    streams = [  # (peer, datagrams): same seq throughout, told apart by peer and type
        (PEER, encode(KEY, MsgType.STORAGE_INFO, 5, inventory(40), now_ms=NOW)),
        (other, encode(KEY, MsgType.STORAGE_INFO, 5, inventory(41), now_ms=NOW)),
        (PEER, encode(KEY, MsgType.EXPORTS, 5, {"exports": ["y" * 3000]}, now_ms=NOW)),
    ]
    r = Reassembler()
    done = []
    for i in range(max(len(ds) for _, ds in streams)):  # interleaved, datagram by datagram
        for peer, ds in streams:
            if i < len(ds):
                m = r.add(peer, decode(KEY, ds[i]), NOW)
                if m is not None:
                    done.append((peer, m.type, m.body))
    assert sorted(done, key=repr) == sorted(
        [
            (PEER, MsgType.STORAGE_INFO, inventory(40)),
            (other, MsgType.STORAGE_INFO, inventory(41)),
            (PEER, MsgType.EXPORTS, {"exports": ["y" * 3000]}),
        ],
        key=repr,
    )
    assert r.pending == 0


def test_ep_partial_messages_expire():
    ds = encode(KEY, MsgType.STORAGE_INFO, 5, inventory(100), now_ms=NOW)
    r = Reassembler(timeout_ms=1000)
    for d in ds[:-1]:
        assert r.add(PEER, decode(KEY, d), NOW) is None
    assert r.pending == 1 and r.buffered_bytes > 0
    # Exactly at the timeout it is still kept...
    assert r.add(PEER, decode(KEY, forge(nonce=50)), NOW + 1000).body == {}
    assert r.pending == 1 and r.counts["partial_expired"] == 0
    # The last fragment arrives too late: the rest was dropped (and counted), so it starts a new
    # partial message.
    assert r.add(PEER, decode(KEY, ds[-1]), NOW + 1001) is None
    assert r.pending == 1 and r.counts["partial_expired"] == 1
    assert r.buffered_bytes == len(decode(KEY, ds[-1]).payload)
    # Within the timeout the same would have completed it.
    r2 = Reassembler(timeout_ms=1000)
    assert whole(ds[:-1] + ds[-1:], now=NOW, reasm=r2).body == inventory(100)
    assert r2.counts["partial_expired"] == 0 and r2.buffered_bytes == 0


def test_ep_a_single_datagram_message_also_expires_old_partial_ones():
    """Expiry does not wait for the next fragmented message: any datagram brings it (and its count)."""
    r = Reassembler(timeout_ms=1000)
    r.add(PEER, decode(KEY, forge(seq=1, nonce=1, fidx=0, fcount=2, payload=b'{"a":')), NOW)
    r.add(PEER, decode(KEY, forge(seq=2, nonce=2, fidx=0, fcount=2, payload=b'{"a":')), NOW + 500)
    assert r.add(PEER, decode(KEY, forge(nonce=3)), NOW + 1001).body == {}
    assert (r.pending, r.counts["partial_expired"], r.buffered_bytes) == (1, 1, 5)
    assert r.add(PEER, decode(KEY, forge(nonce=4)), NOW + 1501).body == {}
    assert (r.pending, r.counts["partial_expired"], r.buffered_bytes) == (0, 2, 0)
    assert r.counts["partial_evicted"] == 0


def test_ep_fragment_count_changing_within_a_message_is_refused():
    r = Reassembler()
    r.add(PEER, decode(KEY, forge(seq=9, fidx=0, fcount=3, payload=b'{"a":')), NOW)
    with pytest.raises(ProtocolError) as ei:
        r.add(PEER, decode(KEY, forge(seq=9, fidx=1, fcount=2, payload=b"1}")), NOW)
    assert ei.value.reason == "bad-fragment"
    assert r.pending == 0


def test_ep_too_many_partial_messages_evict_the_oldest():
    r = Reassembler(max_pending=3)
    for seq in range(5):
        r.add(PEER, decode(KEY, forge(seq=seq, fidx=0, fcount=2, payload=b'{"a":')), NOW)
    assert r.pending == 3 and r.counts["partial_evicted"] == 2
    assert r.counts["partial_expired"] == 0 and r.buffered_bytes == 3 * len(b'{"a":')
    # seq 0 was evicted: its second half alone completes nothing; seq 4's does.
    assert r.add(PEER, decode(KEY, forge(seq=0, fidx=1, fcount=2, payload=b"1}")), NOW) is None
    assert r.add(PEER, decode(KEY, forge(seq=4, fidx=1, fcount=2, payload=b"1}")), NOW).body == {
        "a": 1
    }


def test_ep_message_too_large_for_the_fragment_limit():
    with pytest.raises(ValueError, match="fragments"):
        encode(KEY, MsgType.STORAGE_INFO, 1, {"x": "a" * (MAX_FRAGMENTS * MAX_PAYLOAD)})


@pytest.mark.parametrize("key", [b"", b"short", "k" * 32, None])
def test_ep_cluster_key_must_be_long_bytes(key):
    with pytest.raises(ValueError, match="at least 16 bytes"):
        check_key(key)


def test_gp_cluster_key():
    assert check_key(KEY) == KEY


# --- every way a datagram can be wrong ---------------------------------------------------------

GOOD = forge(payload=json.dumps({"unit": "unit-a", "n": list(range(20))}).encode())


def test_gp_the_forged_reference_datagram_is_good():
    assert whole([GOOD]).body["unit"] == "unit-a"


@pytest.mark.parametrize("i", range(len(GOOD)))
def test_ep_any_tampered_byte_is_refused(i):
    for bit in (0x01, 0x80):
        bad = bytearray(GOOD)
        bad[i] ^= bit
        got = reason(bytes(bad))
        if i < 4:
            assert got == "bad-magic"
        elif 36 <= i < 40:  # payload_len
            assert got == "truncated"
        else:
            assert got == "bad-signature"


def test_ep_wrong_key():
    assert reason(GOOD, key=OTHER_KEY) == "bad-signature"
    assert reason(forge(key=OTHER_KEY)) == "bad-signature"


@pytest.mark.parametrize("n", range(len(GOOD)))
def test_ep_truncated_at_every_length(n):
    assert reason(GOOD[:n]) == "truncated"


def test_ep_trailing_bytes():
    assert reason(GOOD + b"\0") == "truncated"


def test_ep_oversized_is_refused_before_anything_else():
    big = forge(payload=b" " * (MAX_PAYLOAD + 1))  # correctly signed, one byte too long
    assert len(big) == MAX_DATAGRAM + 1
    assert reason(big) == "oversized"
    assert reason(b"\0" * 65507) == "oversized"


@pytest.mark.parametrize("magic", [b"DVSM", b"\0\0\0\0", b"dvsn"])
def test_ep_bad_magic(magic):
    assert reason(forge(magic=magic)) == "bad-magic"


@pytest.mark.parametrize("plen", [0, 1, 999, 2**32 - 1])
def test_ep_a_bad_magic_is_told_before_a_bad_length(plen):
    """Side by side: the same inconsistent length is `truncated` in one of ours, `bad-magic` in a
    foreign datagram (docs/protocol.md: size, magic, then length)."""
    assert reason(forge(plen=plen)) == "truncated"
    assert reason(forge(magic=b"HTTP", plen=plen)) == "bad-magic"


@pytest.mark.parametrize(
    ("datagram", "why"),
    [
        (b"", "truncated"),
        (b"D", "truncated"),
        (b"DVS", "truncated"),
        (b"DVSN", "truncated"),
        (b"X", "bad-magic"),
        (b"DVX", "bad-magic"),
        (b"GET / HTTP/1.0\r\n\r\n", "bad-magic"),
        (b"\x30\x29\x02\x01\x01\x04\x06public", "bad-magic"),  # an SNMP message
    ],
)
def test_ep_short_datagrams_are_truncated_only_if_they_begin_like_ours(datagram, why):
    assert reason(datagram) == why


@pytest.mark.parametrize("version", [0, 2, 255])
def test_ep_bad_version_correctly_signed(version):
    assert reason(forge(version=version)) == "bad-version"


def test_ep_bad_version_unsigned_says_only_bad_signature():
    # Unauthenticated datagrams learn nothing more than "bad signature".
    bad = bytearray(GOOD)
    bad[4] = 2
    assert reason(bytes(bad)) == "bad-signature"


@pytest.mark.parametrize("mtype", [0, max(MsgType) + 1, 200, 255])
def test_ep_bad_type(mtype):
    assert reason(forge(mtype=mtype)) == "bad-type"


@pytest.mark.parametrize(
    ("fidx", "fcount"), [(1, 1), (0, 0), (5, 3), (3, 3), (0, MAX_FRAGMENTS + 1), (65535, 65535)]
)
def test_ep_bad_fragment_index_or_count(fidx, fcount):
    assert reason(forge(fidx=fidx, fcount=fcount)) == "bad-fragment"


def test_gp_last_fragment_of_the_largest_message_decodes():
    f = decode(KEY, forge(fidx=MAX_FRAGMENTS - 1, fcount=MAX_FRAGMENTS))
    assert (f.frag_index, f.frag_count) == (MAX_FRAGMENTS - 1, MAX_FRAGMENTS)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"{",
        b'{"a":}',
        b"\xff\xfe{}",
        b'{"a":"\xc3"}',
        b"[]",
        b'"string"',
        b"42",
        b"null",
        b"true",
        b"[1,2]",
        b"[" * 1300,  # nesting beyond the recursion limit
        b'{"a":' + b"[" * 1300,
    ],
)
def test_ep_bad_payload(payload):
    f = decode(KEY, forge(payload=payload))  # well signed: only reassembly can tell
    with pytest.raises(ProtocolError) as ei:
        Reassembler().add(PEER, f, NOW)
    assert ei.value.reason == "bad-payload"


def test_ep_integer_beyond_the_digit_limit_in_a_multi_fragment_message():
    payload = b'{"a":' + b"1" * 5000 + b"}"  # json.loads raises a bare ValueError
    chunks = [payload[i : i + MAX_PAYLOAD] for i in range(0, len(payload), MAX_PAYLOAD)]
    r = Reassembler()
    for i, ch in enumerate(chunks[:-1]):
        assert (
            r.add(PEER, decode(KEY, forge(nonce=i, fidx=i, fcount=len(chunks), payload=ch)), NOW)
            is None
        )
    last = forge(nonce=99, fidx=len(chunks) - 1, fcount=len(chunks), payload=chunks[-1])
    with pytest.raises(ProtocolError) as ei:
        r.add(PEER, decode(KEY, last), NOW)
    assert ei.value.reason == "bad-payload"


# --- replay guard ------------------------------------------------------------------------------


def test_ep_the_same_datagram_twice_is_a_replay():
    g = ReplayGuard()
    f = decode(KEY, GOOD)
    g.check(PEER, f, NOW)
    with pytest.raises(ProtocolError) as ei:
        g.check(PEER, f, NOW + 5)
    assert ei.value.reason == "replayed"


def test_gp_a_retransmission_is_re_signed_and_passes():
    g = ReplayGuard()
    body = {"unit": "unit-a"}
    for _ in range(3):
        [d] = encode(KEY, MsgType.STARTUP, 8, body, now_ms=NOW)  # same seq, fresh nonce
        g.check(PEER, decode(KEY, d), NOW)


def test_ep_a_replay_from_another_address_or_port_is_refused():
    g = ReplayGuard()
    f = decode(KEY, GOOD)
    g.check(PEER, f, NOW)
    for elsewhere in (("192.0.2.99", 4790), (PEER[0], PEER[1] + 1)):
        with pytest.raises(ProtocolError) as ei:
            g.check(elsewhere, f, NOW)
        assert ei.value.reason == "replayed"


@pytest.mark.parametrize(
    "offset", [REPLAY_WINDOW_MS + 1, -REPLAY_WINDOW_MS - 1, 10 * REPLAY_WINDOW_MS]
)
def test_ep_stale_timestamp(offset):
    f = decode(KEY, forge(ts=NOW - offset))
    with pytest.raises(ProtocolError) as ei:
        ReplayGuard().check(PEER, f, NOW)
    assert ei.value.reason == "stale"


@pytest.mark.parametrize("offset", [REPLAY_WINDOW_MS, -REPLAY_WINDOW_MS, 0])
def test_gp_timestamp_at_the_edge_of_the_window(offset):
    ReplayGuard().check(PEER, decode(KEY, forge(ts=NOW - offset)), NOW)


def test_ep_replay_at_the_far_edge_of_the_window_is_still_refused():
    """Seen when its timestamp was a full window ahead, replayed when it is a full window behind."""
    g = ReplayGuard(window_ms=1000)
    f = decode(KEY, forge(ts=NOW))
    g.check(PEER, f, NOW - 1000)
    with pytest.raises(ProtocolError) as ei:
        g.check(PEER, f, NOW + 1000)
    assert ei.value.reason == "replayed"


@given(st.integers(-1000, 1000), st.integers(0, 2000))
def test_gp_no_replay_is_ever_accepted_while_its_timestamp_is_fresh(first, later):
    g = ReplayGuard(window_ms=1000)
    f = decode(KEY, forge(ts=NOW))
    g.check(PEER, f, NOW + first)
    with pytest.raises(ProtocolError) as ei:
        g.check(PEER, f, NOW + first + later)
    assert ei.value.reason in ("replayed", "stale")


def test_gp_guard_memory_is_bounded():
    g = ReplayGuard(window_ms=1000, max_entries=100)
    for n in range(1000):
        g.check(PEER, decode(KEY, forge(nonce=n)), NOW)
    assert len(g._seen) <= 100
    # and entries whose window has passed are forgotten
    g2 = ReplayGuard(window_ms=1000)
    for n in range(50):
        g2.check(PEER, decode(KEY, forge(nonce=n, ts=NOW)), NOW)
    g2.check(PEER, decode(KEY, forge(nonce=999, ts=NOW + 5000)), NOW + 5000)
    assert len(g2._seen) == 1


# --- fuzz --------------------------------------------------------------------------------------


def only_protocol_errors(datagram, reasm=None):
    """Decode and reassemble; anything but ProtocolError escaping is a bug."""
    try:
        f = decode(KEY, datagram)
        (reasm or Reassembler()).add(PEER, f, NOW)
    except ProtocolError:
        pass


@settings(max_examples=300)
@given(st.binary(max_size=MAX_DATAGRAM + 10))
def test_ep_fuzz_random_bytes(data):
    only_protocol_errors(data)
    only_protocol_errors(MAGIC + data)


@settings(max_examples=300)
@given(st.binary(min_size=HEADER.size - 4, max_size=HEADER.size - 4), st.binary(max_size=200))
def test_ep_fuzz_random_header_with_right_magic_and_length(rest, payload):
    head = MAGIC + rest[:-4] + struct.pack(">I", len(payload))
    only_protocol_errors(head + payload + b"\0" * MAC_LEN)


mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "cut", "insert", "delete"]),
        st.integers(0, 2000),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([GOOD] + encode(KEY, MsgType.STORAGE_INFO, 3, inventory(30), now_ms=NOW)),
    mutations,
)
def test_ep_fuzz_mutated_valid_datagrams(datagram, ops):
    data = bytearray(datagram)
    for op, pos, val in ops:
        i = pos % (len(data) + 1)
        if op == "flip" and data:
            data[i % len(data)] ^= val or 1
        elif op == "set" and data:
            data[i % len(data)] = val
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = bytes([val])
        elif op == "delete" and data:
            del data[i % len(data)]
    only_protocol_errors(bytes(data))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(
    version=st.integers(0, 255),
    mtype=st.integers(0, 255),
    flags=st.integers(0, 0xFFFF),
    fidx=st.integers(0, 0xFFFF),
    fcount=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()),
)
def test_ep_fuzz_signed_garbage_from_an_authenticated_peer(
    version, mtype, flags, fidx, fcount, payload
):
    """A peer with the key but a broken encoder still cannot raise anything but ProtocolError."""
    r = Reassembler()
    only_protocol_errors(
        forge(version=version, mtype=mtype, flags=flags, fidx=fidx, fcount=fcount, payload=payload),
        r,
    )
    only_protocol_errors(forge(payload=payload), r)


@settings(max_examples=200)
@given(
    st.dictionaries(st.text(max_size=10), json_values, max_size=8),
    st.sampled_from(list(MsgType)),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_gp_fuzz_round_trip_any_json_object(body, mtype, seq, wants_ack):
    ds = encode(KEY, mtype, seq, body, wants_ack=wants_ack, now_ms=NOW)
    m = whole(ds)
    assert (m.type, m.seq, m.body, m.wants_ack) == (
        mtype,
        seq,
        json.loads(json.dumps(body)),
        wants_ack,
    )


def test_ep_reassembler_memory_is_bounded_by_bytes() -> None:
    """Partial messages from a peer with the key cannot make the receiver buffer without bound."""
    from dvsan.protocol import MsgType, Reassembler, decode, encode

    key = b"k" * 32
    r = Reassembler(max_bytes=50_000)
    for seq in range(40):
        frags = encode(key, MsgType.STORAGE_INFO, seq, {"x": "y" * 5000})
        for d in frags[:-1]:                       # never the last fragment
            assert r.add("p", decode(key, d), 0) is None
        assert r.buffered_bytes <= 50_000
    whole = encode(key, MsgType.STORAGE_INFO, 99, {"x": "z" * 5000})
    msgs = [r.add("p", decode(key, d), 0) for d in whole]
    assert msgs[-1] is not None and msgs[-1].body == {"x": "z" * 5000}
    assert r.counts["partial_evicted"] > 0 and r.counts["partial_expired"] == 0


def test_ep_the_counts_go_where_the_endpoint_keeps_its_stats():
    from collections import Counter

    stats = Counter(dropped=3)
    r = Reassembler(max_pending=1, counts=stats)
    for seq in range(3):
        r.add(PEER, decode(KEY, forge(seq=seq, nonce=seq, fidx=0, fcount=2, payload=b"{")), NOW)
    assert stats == Counter(dropped=3, partial_evicted=2)
