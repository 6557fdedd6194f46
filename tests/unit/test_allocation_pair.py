"""Mirror pairs: two free volumes on two different units, best fit (the pure core)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dvsan.allocation import best_pair
from dvsan.errors import Conflict, InsufficientPair
from dvsan.model import Candidate

GiB = 1024**3


def c(vid: int, size: int, unit: str = "unit-a", device: str | None = None) -> Candidate:
    return Candidate(vid, unit, device or f"vdb{vid}", size)


@pytest.mark.parametrize(("free", "size", "expected"), [
    # the best fit of each unit, not two on the best unit
    ([c(1, 10 * GiB), c(2, 11 * GiB), c(3, 50 * GiB, "unit-b")], 10 * GiB, {1, 3}),
    # the smallest larger member: unit-c's 12 beats unit-b's 50
    ([c(1, 10 * GiB), c(2, 50 * GiB, "unit-b"), c(3, 12 * GiB, "unit-c")], 10 * GiB, {1, 3}),
    # too small does not count, even if it is the only one on its unit
    ([c(1, 10 * GiB), c(2, 9 * GiB, "unit-b"), c(3, 40 * GiB, "unit-c")], 10 * GiB, {1, 3}),
    # equal larger member: the smaller sum
    ([c(1, 20 * GiB), c(2, 20 * GiB, "unit-b"), c(3, 15 * GiB, "unit-c")], 10 * GiB, {3, 1}),
    # ties: unit name, then device
    ([c(1, 10 * GiB, "unit-c"), c(2, 10 * GiB, "unit-b"), c(3, 10 * GiB, "unit-a", "vdc1"),
      c(4, 10 * GiB, "unit-a", "vdb1")], 1, {4, 2}),
])
def test_gp_best_pair(free, size, expected):
    for order in (free, list(reversed(free))):
        a, b = best_pair(order, size)
        assert {a.volume_id, b.volume_id} == expected
        assert a.unit != b.unit
        assert a.size_bytes <= b.size_bytes


@pytest.mark.parametrize("free", [
    [],                                                            # nothing free
    [c(1, 10 * GiB), c(2, 20 * GiB), c(3, 30 * GiB)],              # all on one unit
    [c(1, 10 * GiB), c(2, 5 * GiB, "unit-b")],                     # unit-b's too small
])
def test_ep_no_pair_on_two_units_is_a_clear_conflict(free):
    with pytest.raises(InsufficientPair) as e:
        best_pair(free, 10 * GiB)
    assert isinstance(e.value, Conflict)
    msg = str(e.value)
    assert msg.startswith("no two units each have a free volume of at least 10.0 GiB"), msg
    assert "free: " in msg
    for x in free:
        assert x.unit in msg
    if not free:
        assert "nothing" in msg


def test_ep_the_message_names_each_units_largest_free_volume():
    with pytest.raises(InsufficientPair) as e:
        best_pair([c(1, 30 * GiB), c(2, 10 * GiB), c(3, 5 * GiB, "unit-b")], 20 * GiB)
    assert "unit-a: largest 30.0 GiB" in str(e.value) and "unit-b: largest 5.0 GiB" in str(e.value)
    assert e.value.largest_free == {"unit-a": 30 * GiB, "unit-b": 5 * GiB}


cands = st.lists(st.builds(Candidate, st.integers(1, 10**6), st.sampled_from(["unit-a", "unit-b", "unit-c"]),
                           st.sampled_from(["vdb1", "vdb2", "vdc1"]), st.integers(1, 100)), max_size=12,
                 unique_by=lambda x: (x.unit, x.device))


@given(cands, st.integers(1, 100))
def test_gp_a_pair_is_never_on_one_unit_and_no_other_pair_fits_better(free, size):
    pairs = [(a, b) for a in free for b in free if a.unit < b.unit
             and a.size_bytes >= size and b.size_bytes >= size]
    if not pairs:
        with pytest.raises(InsufficientPair):
            best_pair(free, size)
        return
    a, b = best_pair(free, size)
    assert a.unit != b.unit and min(a.size_bytes, b.size_bytes) >= size
    got = (max(a.size_bytes, b.size_bytes), a.size_bytes + b.size_bytes)
    assert got == min((max(x.size_bytes, y.size_bytes), x.size_bytes + y.size_bytes) for x, y in pairs)
