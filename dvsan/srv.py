"""SRV target selection per RFC 2782: priority first, then weighted random order within a priority."""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from dvsan.errors import DiscoveryError

# RFC 2782: 'A Target of "." means that the service is decidedly not available at this domain.'
NOT_AVAILABLE = "."


class Rng(Protocol):
    """The one random primitive the selection needs (random.Random fits); injectable for tests."""

    def randint(self, a: int, b: int) -> int: ...


@dataclass(frozen=True)
class SrvRecord:
    """One SRV resource record's data; `target` without the trailing dot ('.' for the root)."""

    priority: int
    weight: int
    port: int
    target: str

    @classmethod
    def of(cls, priority: int, weight: int, port: int, target: str) -> "SrvRecord":
        """Normalise a target as DNS libraries print it ('station.example.org.' -> without the dot)."""
        t = target.strip()
        t = NOT_AVAILABLE if t in ("", ".") else t.rstrip(".").lower()
        return cls(int(priority), int(weight), int(port), t)


def _weighted_order(group: list[SrvRecord], rng: Rng) -> list[SrvRecord]:
    """RFC 2782's selection within one priority, repeated until every record is placed.

    Each round: weight-0 records go first in the list (so they are picked only when the random
    number is 0), a number is drawn uniformly from 0..sum(weights) inclusive, and the first record
    whose running sum of weights reaches it is taken. When only weight-0 records are left the RFC
    allows "any order"; one is drawn uniformly, so that equal zero weights still share the load.
    """
    left = [r for r in group if r.weight == 0] + [r for r in group if r.weight > 0]
    out: list[SrvRecord] = []
    while left:
        total = sum(r.weight for r in left)
        if total == 0:
            i = rng.randint(0, len(left) - 1)
        else:
            n, running, i = rng.randint(0, total), 0, 0
            for i, r in enumerate(left):
                running += r.weight
                if running >= n:
                    break
        out.append(left.pop(i))
    return out


def order(records: Iterable[SrvRecord], rng: Rng) -> list[SrvRecord]:
    """The order in which to contact `records`: lowest priority first, weighted random within one.

    Records whose target is '.' are left out; when every record is '.', the domain says the
    service is not available and this raises DiscoveryError('not-available'). No records: [].
    Draws (for scripted tests): one `randint` per record, priority by priority, in the order
    `_weighted_order` describes.
    """
    recs = list(records)
    usable = [r for r in recs if r.target != NOT_AVAILABLE]
    if recs and not usable:
        raise DiscoveryError("not-available", "the SRV record says the service is not available "
                             "in this domain (target '.')")
    out: list[SrvRecord] = []
    for prio in sorted({r.priority for r in usable}):
        out += _weighted_order([r for r in usable if r.priority == prio], rng)
    return out
