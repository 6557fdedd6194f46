"""Allocation: which free volume answers a request for storage. Pure functions of the pool."""

from collections.abc import Iterable

from dvsan.errors import InsufficientCapacity
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
