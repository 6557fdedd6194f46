"""Allocation: best fit over free online volumes (the pure core, table-driven and property-based)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dvsan.allocation import best_fit
from dvsan.errors import Conflict, InsufficientCapacity
from dvsan.model import Candidate

GiB = 1024**3


def c(vid, size, unit="unit-a", device=None):
    return Candidate(vid, unit, device or f"vdb{vid}", size)


@pytest.mark.parametrize(
    ("free", "request_", "expected_id"),
    [
        # the smallest that fits, not the first, not the largest
        ([c(1, 100 * GiB), c(2, 20 * GiB), c(3, 50 * GiB)], 30 * GiB, 3),
        # an exact fit beats a larger one
        ([c(1, 40 * GiB), c(2, 30 * GiB), c(3, 31 * GiB)], 30 * GiB, 2),
        # one byte short does not fit
        ([c(1, 30 * GiB - 1), c(2, 31 * GiB)], 30 * GiB, 2),
        # a single candidate that fits
        ([c(7, 1 * GiB)], 1, 7),
        # ties on size: unit name first ...
        (
            [
                c(1, 50 * GiB, unit="unit-b", device="vda2"),
                c(2, 50 * GiB, unit="unit-a", device="vdz9"),
            ],
            10 * GiB,
            2,
        ),
        # ... then device name
        ([c(1, 50 * GiB, device="vdc1"), c(2, 50 * GiB, device="vdb1")], 10 * GiB, 2),
        # ties are broken the same way whatever the order the pool lists them in
        ([c(2, 50 * GiB, device="vdb1"), c(1, 50 * GiB, device="vdc1")], 10 * GiB, 2),
    ],
)
def test_gp_best_fit(free, request_, expected_id):
    assert best_fit(free, request_).volume_id == expected_id
    assert best_fit(reversed(free), request_).volume_id == expected_id
    assert best_fit(iter(free), request_).volume_id == expected_id  # any iterable, consumed once


@pytest.mark.parametrize(
    ("free", "request_", "largest", "where"),
    [
        (
            [c(1, 10 * GiB), c(2, 20 * GiB, unit="unit-b", device="sdc1")],
            30 * GiB,
            "20.0 GiB",
            "unit-b:sdc1",
        ),
        ([c(1, 30 * GiB - 1)], 30 * GiB, "30.0 GiB (32212254719 bytes)", "unit-a:vdb1"),
        ([c(1, 512)], 1024, "512 B", "unit-a:vdb1"),
    ],
)
def test_ep_nothing_fits_names_the_largest_free_volume(free, request_, largest, where):
    with pytest.raises(InsufficientCapacity) as ei:
        best_fit(free, request_)
    e = ei.value
    assert isinstance(e, Conflict)  # the station answers 409
    assert e.requested == request_
    assert e.largest_free == max(x.size_bytes for x in free)
    assert f"the largest free volume is {largest} ({where})" in str(e)


def test_ep_rounding_never_makes_the_request_and_the_largest_look_equal():
    with pytest.raises(InsufficientCapacity) as ei:
        best_fit([c(1, GiB)], GiB + 1)
    msg = str(ei.value)
    assert "1073741825 bytes" in msg and "1073741824 bytes" in msg


def test_ep_empty_pool():
    with pytest.raises(InsufficientCapacity, match="the pool has no free online volume") as ei:
        best_fit([], 1 * GiB)
    assert ei.value.largest_free is None
    assert "1.0 GiB" in str(ei.value)


candidates = st.lists(
    st.builds(
        Candidate,
        volume_id=st.integers(0, 10**6),
        unit=st.sampled_from(["unit-a", "unit-b", "unit-c"]),
        device=st.sampled_from(["vda2", "vda3", "vdb1", "sdc1"]),
        size_bytes=st.integers(1, 2**42),
    ),
    max_size=20,
)


@given(candidates, st.integers(1, 2**42))
def test_gp_best_fit_property(free, size):
    """The answer fits, comes from the pool, and no smaller candidate that fits exists."""
    fitting = [x for x in free if x.size_bytes >= size]
    if not fitting:
        with pytest.raises(InsufficientCapacity) as ei:
            best_fit(free, size)
        assert ei.value.largest_free == (max(x.size_bytes for x in free) if free else None)
        return
    got = best_fit(free, size)
    assert any(got is x for x in free)
    assert got.size_bytes >= size
    assert not any(x.size_bytes < got.size_bytes for x in fitting)
    assert (got.size_bytes, got.unit, got.device) == min(
        (x.size_bytes, x.unit, x.device) for x in fitting
    )


# The stateful test drives the station's own allocation path and database, not a model of it:
# tests/unit/test_allocation_stateful.py (and, over HTTP, tests/component/test_concurrent_allocation.py).
