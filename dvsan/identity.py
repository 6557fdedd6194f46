"""Per-party identities of the configuration protocol: Ed25519 keys and signed message envelopes. Pure.

Every unit and the station hold their own Ed25519 key pair. A signed message carries, inside its
JSON body, an envelope under the reserved key ``auth`` (see docs/protocol.md, "Signatures"):

    {"from": sender, "to": recipient, "ts": ms, "id": 32 hex, "key": sender's public key,
     "sig": signature, "prev": signature by the sender's previous key (only while rotating)}

The signature covers the message type, seq and ack of the datagram header, every envelope field
but the signatures, and the body, as canonical JSON (`signed_bytes`). The cluster-key HMAC of each
datagram stays the cheap first filter; this layer says *who* sent a message, and to whom.
"""

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import stat
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dvsan.errors import IdentityRefused, InvalidInput

STATION = "@station"          # the station's name in envelopes: never a valid unit name
AUTH_FIELD = "auth"
SIG_DOMAIN = b"dvsan-sig-v1\n"   # NOTE: a domain prefix, so a signature made here means nothing elsewhere
WINDOW_MS = 60_000
log = logging.getLogger(__name__)
_ID_RE = re.compile(r"^[0-9a-f]{32}$")

__all__ = [
    "STATION",
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "Envelope",
    "SeenCache",
    "Signer",
    "StationPin",
    "decode_public",
    "encode_public",
    "fingerprint",
    "generate",
    "load_or_create",
    "load_private_key",
    "load_public_key",
    "open_envelope",
    "save_private_key",
    "save_public_key",
    "seal",
    "signed_bytes",
]


# --- keys --------------------------------------------------------------------------------------
def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def encode_public(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """The public key as base64 of its raw 32 bytes (44 characters)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def decode_public(text: str) -> Ed25519PublicKey:
    """A public key from base64 of its raw 32 bytes; InvalidInput for anything else."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError, AttributeError) as e:
        raise InvalidInput(f"not a base64 Ed25519 public key: {str(text)[:60]!r}") from e
    if len(raw) != 32:
        raise InvalidInput(f"an Ed25519 public key is 32 bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey | str) -> str:
    """'SHA256:' and the unpadded base64 of the SHA-256 of the raw public key (as OpenSSH shows it)."""
    pub = decode_public(key) if isinstance(key, str) else key
    raw = base64.b64decode(encode_public(pub))
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def save_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write a private key (PKCS#8 PEM) atomically with mode 0600; never over an existing file."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        # NOTE: link, not replace: two processes starting at once must not each keep a different key.
        os.link(tmp, path)
    finally:
        os.unlink(tmp)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save_public_key(path: Path, key: Ed25519PublicKey | Ed25519PrivateKey) -> None:
    """Write a public key (base64 raw, one line) atomically, readable by all (mode 0644)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(encode_public(key) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A public key from a file of one base64 line (as save_public_key writes it)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise InvalidInput(f"cannot read public key {path}: {e.strerror}") from e
    return decode_public(text)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a private key; refuse one that group or others may read (or write), or that is not Ed25519."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as e:
        raise InvalidInput(f"cannot read private key {path}: {e.strerror}") from e
    if st.st_mode & 0o077:
        raise InvalidInput(f"private key {path} is accessible by group or others (mode "
                           f"{stat.S_IMODE(st.st_mode):04o}): chmod 600 it, and consider it exposed")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise InvalidInput(f"{path} does not hold an unencrypted PEM private key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_or_create(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The key at `path`, made there first if there is none; (key, created)."""
    if not path.exists():
        try:
            save_private_key(path, generate())
            return load_private_key(path), True
        except FileExistsError:
            pass        # another process made it first: use theirs
    return load_private_key(path), False


# --- signing -----------------------------------------------------------------------------------
class Signer:
    """Who we are on the wire: a name, a key, and while rotating the key it replaces.

    `previous` makes every envelope also carry a signature by the old key, which the station takes
    as the old key's consent to the new one. `confirmed()` is called once a peer has taken a
    message signed by the new key; it forgets the old key and calls `on_rotated`.
    """

    def __init__(self, name: str, key: Ed25519PrivateKey, previous: Ed25519PrivateKey | None = None,
                 on_rotated: Callable[[], None] | None = None):
        self.name = name
        self.key = key
        self.previous = previous
        self.on_rotated = on_rotated
        self.public = encode_public(key)

    def confirmed(self) -> None:
        if self.previous is not None:
            self.previous = None
            if self.on_rotated is not None:
                self.on_rotated()


def signed_bytes(mtype: int, seq: int, ack: int, fields: dict[str, Any], body: dict[str, Any]) -> bytes:
    """What is signed: header type/seq/ack, the envelope without signatures, and the body."""
    doc = {"type": int(mtype), "seq": seq & 0xFFFFFFFF, "ack": ack & 0xFFFFFFFF,
           "auth": {k: v for k, v in fields.items() if k not in ("sig", "prev")}, "body": body}
    return SIG_DOMAIN + json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def seal(signer: Signer, mtype: int, seq: int, ack: int, recipient: str, body: dict[str, Any],
         now_ms: int, msg_id: str | None = None) -> dict[str, Any]:
    """`body` with a signed envelope added (the caller's dict is not changed)."""
    if AUTH_FIELD in body:
        raise ValueError(f"a message body must not carry the reserved field {AUTH_FIELD!r}")
    fields: dict[str, Any] = {"from": signer.name, "to": recipient, "ts": now_ms,
                              "id": msg_id or os.urandom(16).hex(), "key": signer.public}
    data = signed_bytes(mtype, seq, ack, fields, body)
    fields["sig"] = base64.b64encode(signer.key.sign(data)).decode()
    if signer.previous is not None:
        fields["prev"] = base64.b64encode(signer.previous.sign(data)).decode()
    return {**body, AUTH_FIELD: fields}


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed (not yet verified) envelope and what it signs."""

    sender: str
    recipient: str
    timestamp_ms: int
    msg_id: str
    public_key: str          # the key the sender says it signs with (base64); trust is the receiver's call
    signature: bytes
    previous: bytes | None
    data: bytes              # the signed bytes

    def verify(self, key: Ed25519PublicKey) -> None:
        """Raise IdentityRefused('bad-signature') unless `key` made the signature."""
        _verify(key, self.signature, self.data, "bad-signature",
                f"message from {self.sender!r} is not signed by its key ({fingerprint(key)})")

    def verify_previous(self, key: Ed25519PublicKey) -> None:
        """Raise IdentityRefused unless the envelope also carries a signature by `key` (rotation)."""
        if self.previous is None:
            raise IdentityRefused("key-mismatch", f"{self.sender!r} offers a new key without the old key's signature")
        _verify(key, self.previous, self.data, "key-mismatch",
                f"{self.sender!r}: the rotation signature is not by the enrolled key")

    @property
    def offered_key(self) -> Ed25519PublicKey:
        try:
            return decode_public(self.public_key)
        except InvalidInput as e:
            raise IdentityRefused("malformed", str(e)) from e


def _verify(key: Ed25519PublicKey, sig: bytes, data: bytes, reason: str, message: str) -> None:
    try:
        key.verify(sig, data)
    except InvalidSignature:
        raise IdentityRefused(reason, message) from None


def open_envelope(mtype: int, seq: int, ack: int, body: dict[str, Any]) -> tuple[Envelope, dict[str, Any]]:
    """Split a received body into its envelope and the message; IdentityRefused if absent or malformed."""
    raw = body.get(AUTH_FIELD)
    if raw is None:
        raise IdentityRefused("unsigned", "the message carries no identity signature")
    if not isinstance(raw, dict):
        raise IdentityRefused("malformed", "field 'auth' must be an object")
    inner = {k: v for k, v in body.items() if k != AUTH_FIELD}
    try:
        sender, recipient, ts, mid, key, sig = (raw[k] for k in ("from", "to", "ts", "id", "key", "sig"))
        if not all(isinstance(x, str) and 0 < len(x) <= 255 for x in (sender, recipient, key, sig)):
            raise ValueError("from, to, key and sig must be non-empty strings")
        if not isinstance(ts, int) or isinstance(ts, bool) or not isinstance(mid, str) or not _ID_RE.match(mid):
            raise ValueError("ts must be an integer and id 32 hex digits")
        if set(raw) - {"from", "to", "ts", "id", "key", "sig", "prev"}:
            raise ValueError(f"unknown fields {sorted(set(raw) - {'from', 'to', 'ts', 'id', 'key', 'sig', 'prev'})}")
        signature = base64.b64decode(sig, validate=True)
        prev = raw.get("prev")
        previous = base64.b64decode(prev, validate=True) if isinstance(prev, str) else None
        if prev is not None and previous is None:
            raise ValueError("prev must be a string")
    except (KeyError, ValueError, binascii.Error) as e:
        raise IdentityRefused("malformed", f"bad identity envelope: {e}") from e
    return Envelope(sender, recipient, ts, mid, key, signature, previous,
                    signed_bytes(mtype, seq, ack, raw, inner)), inner


class SeenCache:
    """Refuses envelopes outside the time window and any (sender, id) already taken within it.

    NOTE: this is what stops a holder of the cluster key from replaying a captured, validly signed
    message under a fresh outer nonce (the datagram replay guard only sees nonces).
    """

    def __init__(self, window_ms: int = WINDOW_MS, max_entries: int = 200_000):
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()

    def check(self, env: Envelope, now_ms: int) -> None:
        """Raise IdentityRefused ('stale' or 'replayed') without remembering anything."""
        if abs(now_ms - env.timestamp_ms) > self.window_ms:
            raise IdentityRefused("stale", f"signed {env.timestamp_ms - now_ms:+d} ms from our clock")
        while self._seen:
            _k, expiry = next(iter(self._seen.items()))
            if expiry >= now_ms and len(self._seen) < self.max_entries:
                break
            self._seen.popitem(last=False)
        if (env.sender, env.msg_id) in self._seen:
            raise IdentityRefused("replayed", f"message {env.msg_id} from {env.sender!r} already taken")

    def take(self, env: Envelope, now_ms: int) -> None:
        """Check, then remember: call only for an envelope whose signature has been verified."""
        self.check(env, now_ms)
        self._seen[(env.sender, env.msg_id)] = now_ms + 2 * self.window_ms

    def __len__(self) -> int:
        return len(self._seen)


class StationPin:
    """A unit endpoint's verifier: only the station may send to a unit, signed by the pinned key.

    Without a key, and only if `first_contact` (trust on first use, a documented site policy),
    the first validly signed station message pins its key; `save` keeps it for the next start.
    """

    def __init__(self, key: Ed25519PublicKey | None, first_contact: bool = False,
                 save: Callable[[Ed25519PublicKey], None] | None = None):
        self.key = key
        self.first_contact = first_contact
        self.save = save

    async def __call__(self, env: Envelope, msg: Any, peer: Any) -> Ed25519PublicKey:
        if env.sender != STATION:
            raise IdentityRefused("not-station", f"a message signed by {env.sender!r}: a unit takes "
                                                 f"messages from the station only")
        if self.key is None:
            if not self.first_contact:
                raise IdentityRefused("no-station-key", "no station key pinned (give --station-key-file)")
            offered = env.offered_key
            env.verify(offered)
            self.key = offered
            if self.save is not None:
                self.save(offered)
            log.warning("pinned the station's key %s on first contact from %s", fingerprint(offered), peer)
        return self.key
