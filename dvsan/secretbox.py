"""Secrets that must cross the network or rest in a database: AES-256-GCM under a derived key.

The configuration protocol is signed, not encrypted; the CHAP secrets it carries go sealed with a
key derived from the cluster key (HKDF-SHA256, one purpose string per use), bound to the target
they belong to (the AEAD's associated data), so a sealed secret moved to another export does not
open. The station seals what it keeps in its database with a key of its own data directory.
"""

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dvsan.errors import InvalidInput

CHAP_WIRE = b"dvsan chap on the wire v1"
NONCE = 12


def derive(key: bytes, purpose: bytes) -> bytes:
    """A 256-bit key for one purpose, from a longer-lived one (the cluster key)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(key)


def seal(key: bytes, plaintext: str, bound_to: str) -> str:
    """base64(nonce | ciphertext | tag) of `plaintext`, usable only with the same `bound_to`."""
    nonce = os.urandom(NONCE)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plaintext.encode(), bound_to.encode())).decode()


def unseal(key: bytes, sealed: str, bound_to: str) -> str:
    """The plaintext of `seal`; InvalidInput when it was sealed otherwise, altered or truncated."""
    try:
        raw = base64.b64decode(sealed.encode("ascii"), validate=True)
        if len(raw) < NONCE + 16:
            raise ValueError("too short")
        return AESGCM(key).decrypt(raw[:NONCE], raw[NONCE:], bound_to.encode()).decode()
    except (InvalidTag, ValueError, binascii.Error, UnicodeError) as e:
        raise InvalidInput(f"a sealed secret for {bound_to} does not open (wrong key, altered or "
                           "moved from another object)") from e
