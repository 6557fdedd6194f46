"""Allocation: best fit over free online volumes; a stateful pool model tries to double-allocate."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

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


# --- a stateful model of the pool ---------------------------------------------------------------

UNITS = ("unit-a", "unit-b", "unit-c")
HOSTS = ("host-1", "host-2", "host-3", "host-4")


class Pool(RuleBasedStateMachine):
    """Units bring volumes; hosts ask for storage and give it back; units go offline and come back.

    The pool keeps assignments as a plain list, so a second assignment of one volume would be seen
    rather than silently overwrite the first.
    """

    assignments = Bundle("assignments")

    @initialize()
    def empty(self):
        self.volumes: dict[int, Candidate] = {}
        self.online = dict.fromkeys(UNITS, True)
        self.assigned: list[tuple[int, str, int]] = []  # (volume_id, host, requested)
        self.history: list[tuple[int, bool]] = []  # (volume_id, its unit was online) per allocation
        self.next_id = 1

    def free(self) -> list[Candidate]:
        taken = {vid for vid, _, _ in self.assigned}
        return [v for vid, v in self.volumes.items() if vid not in taken and self.online[v.unit]]

    @rule(unit=st.sampled_from(UNITS), size=st.integers(1, 64).map(lambda g: g * GiB // 4))
    def add_volume(self, unit, size):
        vid = self.next_id
        self.next_id += 1
        self.volumes[vid] = Candidate(vid, unit, f"vd{vid}", size)

    @rule(target=assignments, host=st.sampled_from(HOSTS), size=st.integers(1, 16 * GiB))
    def request(self, host, size):
        free = self.free()
        try:
            got = best_fit(free, size)
        except InsufficientCapacity as e:
            assert all(v.size_bytes < size for v in free), "refused although a free volume fits"
            assert e.largest_free == (max(v.size_bytes for v in free) if free else None)
            return None
        assert got in free
        assert got.size_bytes == min(v.size_bytes for v in free if v.size_bytes >= size)
        self.history.append((got.volume_id, self.online[got.unit]))
        a = (got.volume_id, host, size)
        self.assigned.append(a)
        return a

    @rule(a=consumes(assignments))
    def release(self, a):
        if a is not None:
            self.assigned.remove(a)

    @rule(unit=st.sampled_from(UNITS))
    def take_offline(self, unit):
        self.online[unit] = False

    @rule(unit=st.sampled_from(UNITS))
    def bring_online(self, unit):
        self.online[unit] = True

    @precondition(lambda self: any(not up for up in self.online.values()))
    @rule(size=st.integers(1, 16 * GiB))
    def offline_capacity_is_never_offered(self, size):
        offline = {vid for vid, v in self.volumes.items() if not self.online[v.unit]}
        try:
            assert best_fit(self.free(), size).volume_id not in offline
        except InsufficientCapacity:
            pass

    @invariant()
    def no_volume_is_assigned_twice(self):
        vids = [vid for vid, _, _ in self.assigned]
        assert len(vids) == len(set(vids))

    @invariant()
    def every_assignment_is_large_enough(self):
        for vid, _host, requested in self.assigned:
            assert self.volumes[vid].size_bytes >= requested

    @invariant()
    def offline_volumes_were_never_allocated(self):
        assert all(was_online for _vid, was_online in self.history)


Pool.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestPool = Pool.TestCase
