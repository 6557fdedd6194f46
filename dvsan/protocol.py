"""The virtual SAN automatic configuration protocol: datagram codec, fragments, replay guard. Pure.

Layout of one datagram (all integers big-endian; see docs/protocol.md):

    0   4  magic        b"DVSN"
    4   1  version      1
    5   1  type         MsgType
    6   2  flags        bit 0: the sender wants an ACK
    8   4  seq          sender's message sequence number (all fragments of a message share it)
    12  4  ack          for ACK: the seq acknowledged; else 0
    16  8  timestamp    sender's clock, milliseconds since the epoch
    24  8  nonce        random per datagram (a retransmission gets a fresh one)
    32  2  frag_index   0-based
    34  2  frag_count   >= 1
    36  4  payload_len  bytes of payload that follow
    40  n  payload      a fragment of a UTF-8 JSON object
    40+n 32 HMAC-SHA256(cluster key, bytes 0 .. 40+n)
"""

import enum
import hmac
import json
import os
import struct
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from dvsan.errors import ProtocolError

MAGIC = b"DVSN"
VERSION = 1
HEADER = struct.Struct(">4sBBHIIQQHHI")
MAC_LEN = 32
MAX_DATAGRAM = 1400                      # stays inside a 1500-byte Ethernet MTU with IP/UDP headers
MAX_PAYLOAD = MAX_DATAGRAM - HEADER.size - MAC_LEN
MAX_FRAGMENTS = 4096                     # ~5 MiB of JSON: far above any unit's inventory
FLAG_ACK_REQUESTED = 0x1
REPLAY_WINDOW_MS = 60_000                # a datagram older or newer than this is refused
MIN_KEY_LEN = 16


class MsgType(enum.IntEnum):
    STARTUP = 1              # unit -> station: I am up (name, addresses)
    NEED_STORAGE_INFO = 2    # station -> unit: send me your partitions
    STORAGE_INFO = 3         # unit -> station: my partitions (may span several fragments)
    SHUTDOWN = 4             # unit -> station: I am going down
    ACK = 5                  # either way: message `ack` received (payload: status, error)
    EXPORTS = 6              # station -> unit: the complete set of exports you must hold
    HEARTBEAT = 7            # unit -> station: still here (the ACK says what the station thinks of us)
    WIPE = 8                 # station -> unit: zero this released volume (device, extent, wipe_id)
    WIPE_STATUS = 9          # unit -> station: a wipe's progress (~1 s while running) and its end
    WIPE_CANCEL = 10         # station -> unit: stop this wipe (device, wipe_id)
    PARTITION = 11           # station -> unit: change this disk's partition table (device, layout, partition_id)
    PARTITION_STATUS = 12    # unit -> station: a partitioning's steps and its end (ok, refused, failed)
    STATS = 13               # unit -> station: monitoring totals (CPU, memory, NIC, per-volume I/O)


@dataclass(frozen=True, slots=True)
class Fragment:
    """One decoded, authenticated datagram."""

    type: MsgType
    flags: int
    seq: int
    ack: int
    timestamp_ms: int
    nonce: bytes
    frag_index: int
    frag_count: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """A whole message: all fragments joined and the JSON parsed."""

    type: MsgType
    seq: int
    ack: int
    body: dict[str, Any]
    wants_ack: bool
    # the verified signer's name (dvsan/identity.py); None on an endpoint that checks no signatures
    sender: str | None = None


def check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) < MIN_KEY_LEN:
        raise ValueError(f"the cluster key must be at least {MIN_KEY_LEN} bytes")
    return key


def encode(
    key: bytes, mtype: MsgType, seq: int, body: dict[str, Any], *,
    ack: int = 0, wants_ack: bool = True, now_ms: int | None = None,
) -> list[bytes]:
    """The datagrams that carry one message, each signed with the cluster key.

    The body is JSON with non-ASCII characters escaped, so the payload is ASCII; fragments are
    slices of its bytes (a receiver joins bytes before it decodes, so it takes raw UTF-8 too).
    """
    if not isinstance(body, dict):
        raise ValueError(f"a message body must be a JSON object, not {type(body).__name__}")  # noqa: TRY004 - encode raises ValueError for every body it cannot send
    payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    chunks = [payload[i:i + MAX_PAYLOAD] for i in range(0, len(payload), MAX_PAYLOAD)]
    if len(chunks) > MAX_FRAGMENTS:
        raise ValueError(f"message of {len(payload)} bytes needs more than {MAX_FRAGMENTS} fragments")
    ts = int(time.time() * 1000) if now_ms is None else now_ms
    flags = FLAG_ACK_REQUESTED if wants_ack else 0
    out = []
    for i, chunk in enumerate(chunks):
        head = HEADER.pack(MAGIC, VERSION, int(mtype), flags, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                           ts, int.from_bytes(os.urandom(8), "big"), i, len(chunks), len(chunk))
        data = head + chunk
        out.append(data + hmac.new(key, data, sha256).digest())
    return out


def decode(key: bytes, datagram: bytes) -> Fragment:
    """Check and parse one datagram; raise ProtocolError(reason) for anything not well-formed and signed.

    The checks run in the order of docs/protocol.md ("Acceptance of a datagram"): size, magic,
    length, MAC, then the signed header fields.
    """
    n = len(datagram)
    if n > MAX_DATAGRAM:
        raise ProtocolError("oversized", f"{n} bytes > {MAX_DATAGRAM}")
    # NOTE: magic before length, so that a foreign datagram (a scan, another protocol sent to our
    # port) is counted as bad-magic whatever its size, and `truncated` keeps meaning "one of ours,
    # cut short" (an MTU or buffer problem worth chasing). A datagram shorter than the magic
    # is ours only if it is a beginning of it.
    if not MAGIC.startswith(datagram[:len(MAGIC)]):
        raise ProtocolError("bad-magic", repr(datagram[:len(MAGIC)]))
    if n < HEADER.size + MAC_LEN:
        raise ProtocolError("truncated", f"{n} bytes")
    (_magic, version, mtype, flags, seq, ack, ts, nonce, fidx, fcount, plen) = HEADER.unpack_from(datagram)
    if HEADER.size + plen + MAC_LEN != n:
        raise ProtocolError("truncated", f"payload length {plen} does not match datagram of {n} bytes")
    body = datagram[: n - MAC_LEN]
    if not hmac.compare_digest(hmac.new(key, body, sha256).digest(), datagram[n - MAC_LEN:]):
        raise ProtocolError("bad-signature")
    if version != VERSION:
        raise ProtocolError("bad-version", str(version))
    try:
        mt = MsgType(mtype)
    except ValueError:
        raise ProtocolError("bad-type", str(mtype)) from None
    if fcount < 1 or fcount > MAX_FRAGMENTS or fidx >= fcount:
        raise ProtocolError("bad-fragment", f"{fidx}/{fcount}")
    return Fragment(mt, flags, seq, ack, ts, nonce.to_bytes(8, "big"), fidx, fcount,
                    datagram[HEADER.size: n - MAC_LEN])


class ReplayGuard:
    """Refuses datagrams outside the time window and any nonce seen within it.

    NOTE: the nonce alone is the key, not (peer, nonce): a replay from another source port or
    address must be refused too. `peer` is kept in the signature for logging by callers.
    """

    def __init__(self, window_ms: int = REPLAY_WINDOW_MS, max_entries: int = 200_000):
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, int] = OrderedDict()

    def check(self, peer: Any, frag: Fragment, now_ms: int) -> None:
        if abs(now_ms - frag.timestamp_ms) > self.window_ms:
            raise ProtocolError("stale", f"timestamp {frag.timestamp_ms - now_ms:+d} ms off")
        while self._seen:
            _k, expiry = next(iter(self._seen.items()))
            if expiry >= now_ms and len(self._seen) < self.max_entries:
                break
            self._seen.popitem(last=False)
        key = frag.nonce
        if key in self._seen:
            raise ProtocolError("replayed", f"nonce {frag.nonce.hex()}")
        self._seen[key] = now_ms + 2 * self.window_ms


class Reassembler:
    """Joins fragments into messages, keyed by (peer, type, seq); drops partial messages after a timeout.

    Memory is bounded: at most `max_pending` partial messages and `max_bytes` buffered in all; the
    oldest partial message goes first when either is exceeded. Each partial message dropped
    incomplete is counted in `counts` (the endpoint passes its stats): `partial_expired` when its
    timeout passed, `partial_evicted` when the bounds pushed it out.
    """

    def __init__(self, timeout_ms: int = 30_000, max_pending: int = 1024, max_bytes: int = 32 << 20,
                 counts: Counter[str] | None = None):
        self.timeout_ms = timeout_ms
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.counts: Counter[str] = Counter() if counts is None else counts
        self._bytes = 0
        # key -> [started_ms, parts, missing count, bytes held]
        self._pending: OrderedDict[tuple[Any, int, int], list[Any]] = OrderedDict()

    def _evict(self, key: tuple[Any, int, int]) -> None:
        entry = self._pending.pop(key)
        self._bytes -= entry[3]

    def expire(self, now_ms: int) -> None:
        """Drop the partial messages whose timeout has passed (add() calls it for every fragment)."""
        while self._pending:
            oldest = next(iter(self._pending))
            if now_ms - self._pending[oldest][0] <= self.timeout_ms:
                break
            self._evict(oldest)
            self.counts["partial_expired"] += 1

    def add(self, peer: Any, frag: Fragment, now_ms: int) -> Message | None:
        """The whole message once its last fragment arrives, else None."""
        self.expire(now_ms)
        if frag.frag_count == 1:
            return _parse(frag, frag.payload)
        key = (peer, int(frag.type), frag.seq)
        entry = self._pending.get(key)
        if entry is None:
            entry = [now_ms, [None] * frag.frag_count, frag.frag_count, 0]
            self._pending[key] = entry
        parts = entry[1]
        if len(parts) != frag.frag_count:
            self._evict(key)
            raise ProtocolError("bad-fragment", "fragment count changed within one message")
        if parts[frag.frag_index] is None:
            parts[frag.frag_index] = frag.payload
            entry[2] -= 1
            entry[3] += len(frag.payload)
            self._bytes += len(frag.payload)
        while len(self._pending) > self.max_pending or self._bytes > self.max_bytes:
            self._evict(next(iter(self._pending)))
            self.counts["partial_evicted"] += 1
        if key not in self._pending or entry[2] > 0:
            return None
        self._evict(key)
        return _parse(frag, b"".join(parts))

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def buffered_bytes(self) -> int:
        return self._bytes


def _parse(frag: Fragment, payload: bytes) -> Message:
    try:
        # NOTE: an empty payload is no JSON object either (json.loads raises): our encoder never
        # sends one, and a receiver that read it as {} would answer or match a message with no body.
        body = json.loads(payload.decode("utf-8"))
    # NOTE: ValueError covers JSONDecodeError, UnicodeDecodeError and the int digit limit (> 4300
    # digits); RecursionError comes from deeply nested arrays. A peer must not get past with either.
    except (ValueError, RecursionError) as e:
        raise ProtocolError("bad-payload", str(e)) from e
    if not isinstance(body, dict):
        raise ProtocolError("bad-payload", "payload is not a JSON object")
    return Message(frag.type, frag.seq, frag.ack, body, bool(frag.flags & FLAG_ACK_REQUESTED))
