"""Allocation: which free volume answers a request for storage. Pure functions of the pool."""

from collections.abc import Iterable

from dvsan.errors import InsufficientCapacity, InsufficientPair
from dvsan.model import Candidate


def best_fit(free: Iterable[Candidate], size_bytes: int) -> Candidate:
    """The smallest free volume of at least `size_bytes`; ties broken by unit then device name.

    Raises InsufficientCapacity naming the largest free volume when none is large enough.
    """
    fitting = None
    largest = None
    for c in free:
        if largest is None or c.size_bytes > largest.size_bytes:
            largest = c
        if c.size_bytes >= size_bytes:
            key = (c.size_bytes, c.unit, c.device)
            if fitting is None or key < (fitting.size_bytes, fitting.unit, fitting.device):
                fitting = c
    if fitting is None:
        raise InsufficientCapacity(
            size_bytes,
            largest.size_bytes if largest else None,
            f"{largest.unit}:{largest.device}" if largest else None,
        )
    return fitting


def best_pair(free: Iterable[Candidate], size_bytes: int) -> tuple[Candidate, Candidate]:
    """Two free volumes of at least `size_bytes` on two different units: the members of a mirror.

    Best fit: the pair with the smallest larger member, then the smallest sum; that is the
    best-fitting volume of each unit, the two smallest of those (ties by unit, then device).
    Never two on one unit. Raises InsufficientPair naming what each unit has free otherwise.
    """
    per_unit: dict[str, Candidate] = {}
    largest: dict[str, Candidate] = {}
    for c in free:
        if c.unit not in largest or c.size_bytes > largest[c.unit].size_bytes:
            largest[c.unit] = c
        if c.size_bytes >= size_bytes:
            best = per_unit.get(c.unit)
            if best is None or (c.size_bytes, c.device) < (best.size_bytes, best.device):
                per_unit[c.unit] = c
    ranked = sorted(per_unit.values(), key=lambda c: (c.size_bytes, c.unit, c.device))
    if len(ranked) < 2:
        raise InsufficientPair(size_bytes, {u: c.size_bytes for u, c in largest.items()})
    return ranked[0], ranked[1]
