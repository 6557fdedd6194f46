"""A reliable, authenticated endpoint of the configuration protocol over one asyncio UDP socket.

Both the station and the unit agent use it: `send()` retransmits with exponential backoff until
the peer's ACK arrives; received messages go to one async handler whose return value is carried
back in the ACK. Duplicates (retransmissions) are answered from a cache, not handled twice.
Anything that fails to decode, authenticate or pass the replay guard is dropped and counted.

With a `signer`, every message and ACK it sends carries a signed identity envelope
(dvsan/identity.py); with a `verifier`, every message and ACK it takes must carry one, addressed
to us, fresh, never seen before and signed by the key the verifier trusts for its sender. A
refused message is counted under `refused_<reason>` and, if it wants one, answered with an error
ACK; it never reaches the handler.
"""

import asyncio
import dataclasses
import json
import logging
import os
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from dvsan.errors import DvsanError, IdentityRefused, ProtocolError, Unavailable
from dvsan.identity import Ed25519PublicKey, Envelope, SeenCache, Signer, open_envelope, seal
from dvsan.protocol import Message, MsgType, Reassembler, ReplayGuard, decode, encode

log = logging.getLogger(__name__)

Peer = tuple[str, int]
Handler = Callable[[Message, Peer], Awaitable[dict[str, Any] | None]]
# Given a parsed envelope and the message (its body without the envelope), the key to verify the
# signature with; raises IdentityRefused to refuse the sender (unknown, pending, revoked...).
Verifier = Callable[[Envelope, Message, Peer], Awaitable[Ed25519PublicKey]]
# Whom a message we send is for, from its body (the station: the body's "unit").
Recipient = Callable[[dict[str, Any]], str]


LOG_EVERY = 60          # seconds between two log lines of one kind (reason and source address)
LOG_TAGS = 10_000       # kinds remembered at once; past that a new kind is only counted


def _peer(addr: Any) -> Peer:
    return (str(addr[0]), int(addr[1]))


def _now_ms() -> int:
    return int(time.time() * 1000)


class Endpoint(asyncio.DatagramProtocol):
    """One UDP socket speaking the dvsan protocol. Create with `await Endpoint.open(...)`."""

    def __init__(self, key: bytes, handler: Handler, name: str = "endpoint", *,
                 signer: Signer | None = None, verifier: Verifier | None = None,
                 recipient: Recipient | None = None):
        self.key = key
        self.handler = handler
        self.name = name
        self.signer = signer
        self.verifier = verifier
        self.recipient = recipient
        self._seen = SeenCache()
        self._expect: dict[tuple[Peer, int], str] = {}     # (peer, seq) -> whom we sent it to
        self.stats: Counter[str] = Counter()
        self._transport: asyncio.DatagramTransport | None = None
        self._seq = int.from_bytes(os.urandom(3), "big")
        self._pending: dict[tuple[Peer, int], asyncio.Future[dict[str, Any]]] = {}
        self._replay = ReplayGuard()
        self._reasm = Reassembler(counts=self.stats)   # partial_expired, partial_evicted
        self._done: OrderedDict[tuple[Peer, int, int], dict[str, Any] | None] = OrderedDict()
        self._logged: OrderedDict[str, float] = OrderedDict()   # tag -> when last logged, oldest first
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, key: bytes, handler: Handler, host: str, port: int,
                   name: str = "endpoint", rcvbuf: int = 4 << 20, *, signer: Signer | None = None,
                   verifier: Verifier | None = None, recipient: Recipient | None = None) -> "Endpoint":
        loop = asyncio.get_running_loop()
        ep = cls(key, handler, name, signer=signer, verifier=verifier, recipient=recipient)
        transport, _ = await loop.create_datagram_endpoint(lambda: ep, local_addr=(host, port))
        sock = transport.get_extra_info("socket")
        try:
            import socket
            # NOTE: the default ~208 KiB receive buffer drops bursts of announcements.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        except OSError:
            pass
        return ep

    @property
    def address(self) -> Peer:
        assert self._transport is not None
        return _peer(self._transport.get_extra_info("sockname"))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for f in self._pending.values():
            if not f.done():
                f.set_exception(Unavailable(f"{self.name} closed"))
        if self._transport:
            self._transport.close()

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    # --- sending -------------------------------------------------------------------------
    def _sendto(self, datagrams: list[bytes], peer: Peer) -> None:
        assert self._transport is not None
        for d in datagrams:
            self._transport.sendto(d, peer)
        self.stats["datagrams_sent"] += len(datagrams)

    def _encode(self, mtype: MsgType, seq: int, body: dict[str, Any], to: str, *, ack: int = 0,
                wants_ack: bool = True) -> list[bytes]:
        """The datagrams of one message, its body sealed by our signer if we have one."""
        if self.signer is not None:
            body = seal(self.signer, int(mtype), seq, ack, to, body, _now_ms())
        return encode(self.key, mtype, seq, body, ack=ack, wants_ack=wants_ack)

    def _recipient(self, body: dict[str, Any], to: str | None) -> str:
        if to is not None:
            return to
        if self.recipient is not None:
            return self.recipient(body)
        return str(body.get("unit", ""))

    async def send(self, peer: Peer, mtype: MsgType, body: dict[str, Any], *,
                   timeout: float | None = 10.0, rto: float = 0.25, max_rto: float = 2.0,
                   to: str | None = None) -> dict[str, Any]:
        """Send a message and wait for its ACK; returns the ACK's body. Raises Unavailable on timeout.

        `to` names the recipient in the signed envelope (default: `recipient(body)`, else the
        body's "unit"); with a verifier, only an ACK signed by that recipient is taken.
        """
        peer = _peer(peer)
        seq = self.next_seq()
        recipient = self._recipient(body, to)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[(peer, seq)] = fut
        self._expect[(peer, seq)] = recipient
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            attempt = 0
            while True:
                # A retransmission is re-signed: fresh timestamp and nonce, same seq; a fresh
                # envelope too (a new id, and a timestamp that stays inside the peer's window).
                self._sendto(self._encode(mtype, seq, body, recipient), peer)
                if attempt:
                    self.stats["retransmits"] += 1
                attempt += 1
                wait = rto if deadline is None else min(rto, max(0.0, deadline - time.monotonic()))
                try:
                    reply = await asyncio.wait_for(asyncio.shield(fut), wait)
                except TimeoutError:
                    pass
                else:
                    if self.signer is not None and reply.get("status") == "ok":
                        self.signer.confirmed()   # the peer took our new key (rotation done)
                    return reply
                if deadline is not None and time.monotonic() >= deadline:
                    self.stats["send_timeouts"] += 1
                    raise Unavailable(f"no acknowledgement of {mtype.name} from {peer[0]}:{peer[1]} "
                                      f"after {attempt} attempts in {timeout:g} s")
                rto = min(max_rto, rto * 2) * random.uniform(0.9, 1.1)
        finally:
            self._pending.pop((peer, seq), None)
            self._expect.pop((peer, seq), None)

    # --- receiving -----------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: Any) -> None:  # type: ignore[override]
        peer = _peer(addr)
        self.stats["datagrams_received"] += 1
        now = _now_ms()
        try:
            frag = decode(self.key, data)
            self._replay.check(peer, frag, now)
            msg = self._reasm.add(peer, frag, now)
        except ProtocolError as e:
            self._drop(e, peer)
            return
        if msg is None:
            return
        if self.verifier is None:
            self._dispatch(msg, peer)
        else:
            self._spawn(self._verify(msg, peer))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _verify(self, msg: Message, peer: Peer) -> None:
        """Check the message's envelope; hand it on as from its verified sender, or refuse it."""
        assert self.verifier is not None
        env: Envelope | None = None
        try:
            env, inner = open_envelope(int(msg.type), msg.seq, msg.ack, msg.body)
            if self.signer is not None and env.recipient != self.signer.name:
                raise IdentityRefused("misaddressed", f"message for {env.recipient!r} sent to "
                                                      f"{self.signer.name!r}")
            self._seen.check(env, _now_ms())        # before the verifier acts on anything
            opened = dataclasses.replace(msg, body=inner, sender=env.sender)
            key = await self.verifier(env, opened, peer)
            env.verify(key)
            self._seen.take(env, _now_ms())         # atomic with the dispatch below: no await between
        except IdentityRefused as e:
            self._refuse(msg, peer, e, env)
            return
        except DvsanError as e:
            self._refuse(msg, peer, IdentityRefused("invalid", str(e)), env)
            return
        self._dispatch(opened, peer)

    def _refuse(self, msg: Message, peer: Peer, e: IdentityRefused, env: Envelope | None) -> None:
        self.stats["refused"] += 1
        self.stats[f"refused_{e.reason}"] += 1
        if self._may_log(f"refused-{e.reason}@{peer[0]}"):
            log.warning("%s: refused %s from %s:%d: %s; further ones of this kind from %s are only "
                        "counted for %g s", self.name, msg.type.name, peer[0], peer[1], e, peer[0],
                        LOG_EVERY)
        if msg.type != MsgType.ACK and msg.wants_ack:
            to = env.sender if env is not None else str(msg.body.get("unit", ""))
            reply = {"status": "error", "error": str(e), "refusal": e.reason}
            self._sendto(self._encode(MsgType.ACK, self.next_seq(), reply, to, ack=msg.seq,
                                      wants_ack=False), peer)

    def _dispatch(self, msg: Message, peer: Peer) -> None:
        """A message that passed every check: an ACK completes a send(), anything else is handled."""
        if msg.type == MsgType.ACK:
            fut = self._pending.get((peer, msg.ack))
            if fut is None or fut.done():
                self.stats["acks_unmatched"] += 1
            elif self.verifier is not None and msg.sender != self._expect.get((peer, msg.ack)):
                # NOTE: a signed ACK from another party (a peer unit answering for the one we
                # addressed) must not complete the send.
                self.stats["acks_unmatched"] += 1
                self.stats["refused_ack-from-other"] += 1
            else:
                fut.set_result(msg.body)
            return
        self.stats[f"received_{msg.type.name.lower()}"] += 1
        key = (peer, int(msg.type), msg.seq)
        if key in self._done:
            self.stats["duplicates"] += 1
            cached = self._done[key]
            if cached is not None and msg.wants_ack:
                self._sendto(self._encode(MsgType.ACK, self.next_seq(), cached, msg.sender or "",
                                          ack=msg.seq, wants_ack=False), peer)
            return
        self._done[key] = None            # in progress: duplicates are ignored until answered
        while len(self._done) > 50_000:
            self._done.popitem(last=False)
        self._spawn(self._handle(msg, peer, key))

    async def _handle(self, msg: Message, peer: Peer, key: tuple[Peer, int, int]) -> None:
        try:
            result = await self.handler(msg, peer)
            reply: dict[str, Any] = {"status": "ok", **(result or {})}
            # NOTE: fail here, inside the try, so that the peer hears of a reply that is not JSON;
            # failing in encode() below would leave the message "in progress" forever.
            json.dumps(reply)
        except DvsanError as e:
            self.stats["handler_errors"] += 1
            log.warning("%s: %s from %s:%d refused: %s", self.name, msg.type.name, peer[0], peer[1], e)
            reply = {"status": "error", "error": str(e)}
        except Exception as e:  # a bug must not kill the listener; the peer hears about it
            self.stats["handler_crashes"] += 1
            log.exception("%s: handler for %s failed", self.name, msg.type.name)
            reply = {"status": "error", "error": f"internal error: {type(e).__name__}"}
        self._done[key] = reply
        if msg.wants_ack:
            self._sendto(self._encode(MsgType.ACK, self.next_seq(), reply, msg.sender or "",
                                      ack=msg.seq, wants_ack=False), peer)
            self.stats["acks_sent"] += 1

    def _drop(self, e: ProtocolError, peer: Peer) -> None:
        self.stats["dropped"] += 1
        self.stats[f"dropped_{e.reason}"] += 1
        if self._may_log(f"{e.reason}@{peer[0]}"):
            log.warning("%s: dropped datagram from %s:%d (%s); further ones of this kind from %s are "
                        "only counted for %g s", self.name, peer[0], peer[1], e, peer[0], LOG_EVERY)

    def _may_log(self, tag: str) -> bool:
        """Whether to log a drop or refusal of this kind (reason@address) now: at most once every
        LOG_EVERY seconds per tag, and never more than LOG_TAGS tags remembered.

        NOTE: a flood from many (spoofable) source addresses fills the table; then new tags are
        only counted until old ones age out, so the log stays bounded (LOG_TAGS lines a period).
        """
        now = time.monotonic()
        while self._logged and now - next(iter(self._logged.values())) >= LOG_EVERY:
            self._logged.popitem(last=False)
        if tag in self._logged or len(self._logged) >= LOG_TAGS:
            return False
        self._logged[tag] = now
        return True

    def error_received(self, exc: Exception) -> None:
        self.stats["socket_errors"] += 1
