"""CHAP credentials of assignments: made at allocation, sealed at rest, sealed again on the wire.

Each assignment gets its own one-way CHAP user and secret (random). The station keeps the secret
sealed with a key of its data directory (`secrets.key`, 0600); a push seals it for the unit with a
key derived from the cluster key (dvsan.secretbox); only the host that holds the assignment (and
operators) are answered it in plain, over the REST API.
"""

import secrets
from dataclasses import dataclass

from dvsan import secretbox
from dvsan.model import mutual_aad


@dataclass(frozen=True)
class ChapVault:
    at_rest: bytes          # the data directory's key: seals secrets in the database
    wire: bytes             # derived from the cluster key: seals secrets in EXPORTS

    @classmethod
    def of(cls, at_rest_key: bytes, cluster_key: bytes) -> "ChapVault":
        return cls(at_rest_key, secretbox.derive(cluster_key, secretbox.CHAP_WIRE))

    def new(self, target_iqn: str) -> tuple[str, str]:
        """A fresh (user, secret sealed at rest) for the assignment of `target_iqn`."""
        user = f"dvsan-{secrets.token_hex(6)}"
        return user, secretbox.seal(self.at_rest, secrets.token_urlsafe(18), target_iqn)

    def new_mutual(self, target_iqn: str) -> tuple[str, str]:
        """Mutual CHAP of the assignment of `target_iqn`: the target's own user and secret."""
        user = f"dvsan-t-{secrets.token_hex(6)}"
        return user, secretbox.seal(self.at_rest, secrets.token_urlsafe(18), mutual_aad(target_iqn))

    def reveal(self, target_iqn: str, sealed: str) -> str:
        return secretbox.unseal(self.at_rest, sealed, target_iqn)
