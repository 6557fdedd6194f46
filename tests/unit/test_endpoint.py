"""The UDP endpoint: two real Endpoints on 127.0.0.1 exchanging signed datagrams."""

import asyncio
import contextlib
import hmac
import logging
import os
import socket
import time
from hashlib import sha256

import pytest

import dvsan.endpoint
from dvsan.endpoint import Endpoint
from dvsan.errors import InvalidInput, Unavailable
from dvsan.protocol import HEADER, MAGIC, MAX_DATAGRAM, VERSION, MsgType, decode, encode

KEY = b"cluster-key-0123456789abcdef"


def signed(mtype, seq, payload, *, ack=0, flags=1, fidx=0, fcount=1):
    """A fresh, well-signed datagram with any payload: what a peer with the key may send."""
    nonce = int.from_bytes(os.urandom(8), "big")
    data = HEADER.pack(MAGIC, VERSION, int(mtype), flags, seq, ack, int(time.time() * 1000), nonce,
                       fidx, fcount, len(payload)) + payload
    return data + hmac.new(KEY, data, sha256).digest()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


class Recorder:
    """A handler that records what it was given and answers from `reply`."""

    def __init__(self, reply=None, delay=0.0):
        self.calls = []
        self.reply = reply
        self.delay = delay

    async def __call__(self, msg, peer):
        self.calls.append((msg, peer))
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(self.reply, BaseException):
            raise self.reply
        return self.reply(msg) if callable(self.reply) else self.reply


@contextlib.asynccontextmanager
async def pair(handler):
    """`a` sends, `b` answers with `handler`."""
    a = await Endpoint.open(KEY, Recorder(), "127.0.0.1", 0, name="a")
    b = await Endpoint.open(KEY, handler, "127.0.0.1", 0, name="b")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@contextlib.asynccontextmanager
async def raw_socket():
    """A plain UDP socket: a silent peer, or a source of forged datagrams."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    try:
        yield s
    finally:
        s.close()


def drain(s):
    got = []
    with contextlib.suppress(BlockingIOError):
        while True:
            got.append(s.recv(65535))
    return got


async def until(cond, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


class LossyTransport:
    """Wraps a transport and drops the first datagram that `drop` selects."""

    def __init__(self, inner, drop):
        self.inner, self.drop, self.dropped = inner, drop, []

    def sendto(self, data, addr=None):
        if not self.dropped and self.drop(data):
            self.dropped.append(data)
            return
        self.inner.sendto(data, addr)

    def __getattr__(self, name):
        return getattr(self.inner, name)


# --- good path ----------------------------------------------------------------------------------


def test_gp_send_returns_the_handlers_reply_in_the_ack():
    async def scenario():
        h = Recorder(reply=lambda m: {"answer": 42, "echo": m.body})
        async with pair(h) as (a, b):
            reply = await a.send(b.address, MsgType.STARTUP, {"unit": "unit-a"}, timeout=2)
            assert reply == {"status": "ok", "answer": 42, "echo": {"unit": "unit-a"}}
            [(msg, peer)] = h.calls
            assert msg.type == MsgType.STARTUP and msg.wants_ack and peer == a.address
            assert b.stats["acks_sent"] == 1 and b.stats["received_startup"] == 1
            assert a.stats["retransmits"] == 0 and b.stats["dropped"] == 0

    run(scenario())


def test_gp_handler_returning_none_is_a_plain_ok():
    async def scenario():
        async with pair(Recorder(reply=None)) as (a, b):
            assert await a.send(b.address, MsgType.SHUTDOWN, {}, timeout=2) == {"status": "ok"}

    run(scenario())


def test_gp_multi_fragment_message_and_reply_arrive_whole():
    body = {
        "unit": "unit-a",
        "partitions": [
            {
                "device": f"vdb{i}",
                "disk": "vdb",
                "number": i,
                "start_lba": 2048 * i,
                "length_blocks": 2048,
                "end_lba": 2048 * i + 2047,
                "block_size": 512,
                "size_bytes": 2048 * 512,
            }
            for i in range(500)
        ],
    }

    async def scenario():
        h = Recorder(reply=lambda m: {"echo": m.body})
        async with pair(h) as (a, b):
            reply = await a.send(b.address, MsgType.STORAGE_INFO, body, timeout=3)
            assert reply == {"status": "ok", "echo": body}
            assert len(h.calls) == 1 and h.calls[0][0].body == body
            assert a.stats["datagrams_sent"] > 30 and b.stats["datagrams_sent"] > 30
            assert b.stats["dropped"] == 0 and a.stats["dropped"] == 0

    run(scenario())


def test_gp_lost_ack_retransmission_is_answered_from_the_cache_not_handled_twice():
    async def scenario():
        h = Recorder(reply=lambda m: {"n": len(h.calls)})
        async with pair(h) as (a, b):
            lossy = LossyTransport(b._transport, lambda d: decode(KEY, d).type == MsgType.ACK)
            b._transport = lossy
            reply = await a.send(
                b.address, MsgType.STARTUP, {"unit": "unit-a"}, timeout=2, rto=0.05
            )
            assert reply == {"status": "ok", "n": 1}
            assert len(lossy.dropped) == 1  # the first ACK really was lost
            assert len(h.calls) == 1
            assert a.stats["retransmits"] >= 1 and b.stats["duplicates"] >= 1

    run(scenario())


def test_gp_retransmissions_during_a_slow_handler_are_not_handled_twice():
    async def scenario():
        h = Recorder(reply={"done": True}, delay=0.2)
        async with pair(h) as (a, b):
            reply = await a.send(b.address, MsgType.EXPORTS, {"exports": []}, timeout=2, rto=0.02)
            assert reply == {"status": "ok", "done": True}
            assert len(h.calls) == 1
            assert a.stats["retransmits"] >= 3
            assert b.stats["duplicates"] == a.stats["retransmits"]

    run(scenario())


# --- error path ---------------------------------------------------------------------------------


def test_ep_handler_refusal_is_carried_back_as_status_error():
    async def scenario():
        h = Recorder(reply=InvalidInput("invalid name 'Unit A'"))
        async with pair(h) as (a, b):
            reply = await a.send(b.address, MsgType.STARTUP, {"unit": "Unit A"}, timeout=2)
            assert reply == {"status": "error", "error": "invalid name 'Unit A'"}
            assert b.stats["handler_errors"] == 1 and len(h.calls) == 1

    run(scenario())


def test_ep_handler_crash_is_reported_and_the_endpoint_keeps_serving():
    async def scenario():
        h = Recorder(reply=RuntimeError("bug"))
        async with pair(h) as (a, b):
            reply = await a.send(b.address, MsgType.STARTUP, {}, timeout=2)
            assert reply == {"status": "error", "error": "internal error: RuntimeError"}
            assert b.stats["handler_crashes"] == 1
            h.reply = {"fine": 1}
            assert await a.send(b.address, MsgType.STARTUP, {}, timeout=2) == {
                "status": "ok",
                "fine": 1,
            }

    run(scenario())


def test_ep_handler_reply_that_is_not_json_is_reported_not_left_hanging():
    async def scenario():
        h = Recorder(reply={"when": object()})
        async with pair(h) as (a, b):
            t0 = time.monotonic()
            reply = await a.send(b.address, MsgType.STARTUP, {}, timeout=2, rto=0.05)
            assert reply == {"status": "error", "error": "internal error: TypeError"}
            assert time.monotonic() - t0 < 1
            assert len(h.calls) == 1

    run(scenario())


def test_ep_silent_peer_raises_unavailable_after_the_timeout_with_retransmits_counted():
    async def scenario():
        async with raw_socket() as silent:
            a = await Endpoint.open(KEY, Recorder(), "127.0.0.1", 0, name="a")
            try:
                t0 = time.monotonic()
                with pytest.raises(Unavailable) as ei:
                    await a.send(
                        silent.getsockname(),
                        MsgType.STARTUP,
                        {"unit": "unit-a"},
                        timeout=0.4,
                        rto=0.03,
                        max_rto=0.1,
                    )
                elapsed = time.monotonic() - t0
            finally:
                a.close()
            got = drain(silent)
        assert 0.4 <= elapsed < 1.5
        assert a.stats["send_timeouts"] == 1
        assert a.stats["retransmits"] >= 3
        assert len(got) == a.stats["datagrams_sent"] == 1 + a.stats["retransmits"]
        frags = [decode(KEY, d) for d in got]
        assert len({f.seq for f in frags}) == 1  # the same message ...
        assert len({f.nonce for f in frags}) == len(frags)  # ... re-signed each time
        assert f"after {len(got)} attempts" in str(ei.value)
        assert "no acknowledgement of STARTUP" in str(ei.value)

    run(scenario())


def test_ep_close_fails_pending_sends():
    async def scenario():
        async with raw_socket() as silent:
            a = await Endpoint.open(KEY, Recorder(), "127.0.0.1", 0, name="a")
            task = asyncio.ensure_future(
                a.send(silent.getsockname(), MsgType.STARTUP, {}, timeout=5)
            )
            await until(lambda: a.stats["datagrams_sent"] >= 1)     # the send is under way
            a.close()
            with pytest.raises(Unavailable, match="closed"):
                await task

    run(scenario())


def test_ep_forged_and_garbage_datagrams_are_dropped_counted_and_never_handled():
    async def scenario():
        h = Recorder(reply={"ok": 1})
        async with pair(h) as (a, b), raw_socket() as s:
            target = b.address
            [valid] = encode(KEY, MsgType.STARTUP, 1, {"unit": "unit-a"})
            bad = {
                "bad-magic": [b"\0" * 80],
                "truncated": [b"DVSN", valid[:-1], valid + b"\0"],
                "bad-signature": [
                    encode(b"wrong-key-0123456789abcdef", MsgType.STARTUP, 2, {"unit": "x"})[0],
                    valid[:-1] + bytes([valid[-1] ^ 1]),
                ],
                "stale": encode(
                    KEY,
                    MsgType.STARTUP,
                    3,
                    {"unit": "x"},
                    now_ms=int(time.time() * 1000) - 3_600_000,
                ),
                "oversized": [b"DVSN" + b"\0" * MAX_DATAGRAM],
                "replayed": [valid],  # the second copy of `valid`
            }
            s.sendto(valid, target)
            await until(lambda: len(h.calls) == 1)
            expected = 0
            for datagrams in bad.values():
                for d in datagrams:
                    s.sendto(d, target)
                    expected += 1
            await until(lambda: b.stats["dropped"] == expected)
            for reason, datagrams in bad.items():
                assert b.stats[f"dropped_{reason}"] == len(datagrams), reason
            assert len(h.calls) == 1  # only the one genuine datagram was handled
            # and nothing was lost: a genuine peer is still served
            assert await a.send(target, MsgType.STARTUP, {}, timeout=2) == {"status": "ok", "ok": 1}
            assert len(h.calls) == 2

    run(scenario())


def test_ep_replay_from_another_port_is_dropped():
    async def scenario():
        h = Recorder()
        async with pair(h) as (_a, b), raw_socket() as s1, raw_socket() as s2:
            [valid] = encode(KEY, MsgType.STARTUP, 1, {"unit": "unit-a"})
            s1.sendto(valid, b.address)
            await until(lambda: len(h.calls) == 1)
            s2.sendto(valid, b.address)
            await until(lambda: b.stats["dropped_replayed"] == 1)
            assert len(h.calls) == 1

    run(scenario())


def test_ep_an_empty_payload_is_dropped_as_bad_payload_never_handled_nor_answered():
    """Side by side: `{}` is a message with an empty body, zero bytes are dropped (docs/protocol.md)."""
    async def scenario():
        h = Recorder(reply={"ok": 1})
        async with pair(h) as (_a, b), raw_socket() as s:
            s.sendto(signed(MsgType.SHUTDOWN, 1, b"{}"), b.address)
            await until(lambda: len(h.calls) == 1)
            acks = []
            await until(lambda: drain_into(s, acks))
            assert [(decode(KEY, d).type, decode(KEY, d).ack) for d in acks] == [(MsgType.ACK, 1)]
            s.sendto(signed(MsgType.SHUTDOWN, 2, b""), b.address)
            await until(lambda: b.stats["dropped_bad-payload"] == 1)
            assert b.stats["dropped"] == 1 and len(h.calls) == 1
            assert b.stats["handler_errors"] == 0 and b.stats["acks_sent"] == 1
            assert drain(s) == []                     # no answer to the empty one

    run(scenario())


def drain_into(s, out):
    out.extend(drain(s))
    return out


def test_ep_an_empty_ack_is_dropped_and_does_not_complete_the_send():
    async def scenario():
        async with raw_socket() as peer:
            a = await Endpoint.open(KEY, Recorder(), "127.0.0.1", 0, name="a")
            try:
                task = asyncio.ensure_future(
                    a.send(peer.getsockname(), MsgType.STARTUP, {"unit": "unit-a"}, timeout=3, rto=1)
                )
                got = []
                await until(lambda: drain_into(peer, got))
                seq = decode(KEY, got[0]).seq
                peer.sendto(signed(MsgType.ACK, 900, b"", ack=seq, flags=0), a.address)
                await until(lambda: a.stats["dropped_bad-payload"] == 1)
                assert not task.done() and a.stats["acks_unmatched"] == 0
                peer.sendto(signed(MsgType.ACK, 901, b'{"status":"ok"}', ack=seq, flags=0),
                            a.address)
                assert await task == {"status": "ok"}
            finally:
                a.close()

    run(scenario())


def test_gp_a_drop_is_logged_once_per_reason_and_source_address_per_period(caplog, monkeypatch):
    monkeypatch.setattr(dvsan.endpoint, "LOG_EVERY", 0.3)
    caplog.set_level(logging.WARNING, logger="dvsan.endpoint")

    def lines(what):
        return [r for r in caplog.records if what in r.getMessage()]

    async def scenario():
        async with pair(Recorder()) as (_a, b), raw_socket() as s:
            for _ in range(3):                             # three of one kind from one address
                s.sendto(b"\0" * 80, b.address)
            s.sendto(b"DVSN", b.address)                   # another kind from the same address
            await until(lambda: b.stats["dropped"] == 4)
            assert len(lines("(bad-magic")) == 1 and len(lines("(truncated")) == 1
            assert lines("(bad-magic")[0].getMessage().endswith(
                "further ones of this kind from 127.0.0.1 are only counted for 0.3 s")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                other.bind(("127.0.0.2", 0))               # the same kind from another address
                other.sendto(b"\0" * 80, b.address)
                await until(lambda: b.stats["dropped"] == 5)
            assert len(lines("(bad-magic")) == 2
            await asyncio.sleep(0.35)                      # the period is over: logged again
            s.sendto(b"\0" * 80, b.address)
            await until(lambda: b.stats["dropped"] == 6)
            assert len(lines("(bad-magic")) == 3
            assert b.stats["dropped_bad-magic"] == 5       # every one was counted

    run(scenario())


def test_ep_a_flood_of_source_addresses_cannot_flood_the_log(caplog, monkeypatch):
    monkeypatch.setattr(dvsan.endpoint, "LOG_TAGS", 2)
    caplog.set_level(logging.WARNING, logger="dvsan.endpoint")

    async def scenario():
        async with pair(Recorder()) as (_a, b):
            for i in range(2, 6):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind((f"127.0.0.{i}", 0))
                    s.sendto(b"\0" * 80, b.address)
                    await until(lambda i=i: b.stats["dropped"] == i - 1)
            logged = [r.getMessage() for r in caplog.records if "(bad-magic" in r.getMessage()]
            assert [m.split(" from ")[1].split(":")[0] for m in logged] == ["127.0.0.2", "127.0.0.3"]
            assert b.stats["dropped_bad-magic"] == 4

    run(scenario())


def test_ep_partial_messages_dropped_incomplete_are_counted_in_the_stats():
    async def scenario():
        h = Recorder()
        async with pair(h) as (_a, b), raw_socket() as s:
            b._reasm.timeout_ms = 50        # NOTE: the default 30 s is too long for a unit test
            s.sendto(signed(MsgType.STORAGE_INFO, 5, b'{"unit":', fcount=2), b.address)
            await until(lambda: b.stats["datagrams_received"] == 1)
            await asyncio.sleep(0.1)
            s.sendto(signed(MsgType.HEARTBEAT, 6, b"{}"), b.address)   # any datagram expires it
            await until(lambda: b.stats["partial_expired"] == 1)
            assert len(h.calls) == 1 and h.calls[0][0].type == MsgType.HEARTBEAT
            assert b.stats["dropped"] == 0

    run(scenario())
