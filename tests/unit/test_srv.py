"""RFC 2782 SRV ordering: scripted draws for exact cases, hypothesis for the properties."""

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvsan.errors import DiscoveryError
from dvsan.srv import SrvRecord, order


class ScriptedRng:
    """Hands out the given numbers in turn; checks each lies in the range the code asked for."""

    def __init__(self, draws: list[int]):
        self.draws = list(draws)
        self.asked: list[tuple[int, int]] = []

    def randint(self, a: int, b: int) -> int:
        self.asked.append((a, b))
        v = self.draws.pop(0) if self.draws else a
        assert a <= v <= b, f"scripted draw {v} outside {a}..{b}"
        return v


def rec(target: str, priority: int = 10, weight: int = 5, port: int = 7479) -> SrvRecord:
    return SrvRecord(priority, weight, port, target)


A, B, C = "a.example.org", "b.example.org", "c.example.org"

CASES = [
    # (id, records, draws, expected targets in order, ranges asked for)
    ("one record", [rec(A)], [3], [A], [(0, 5)]),
    ("lower priority first whatever the weights",
     [rec(A, priority=20, weight=100), rec(B, priority=10, weight=1)], [], [B, A], [(0, 1), (0, 100)]),
    ("draw at the first running sum picks the first", [rec(A, weight=10), rec(B, weight=30)], [10, 0],
     [A, B], [(0, 40), (0, 30)]),
    ("draw past the first running sum picks the second", [rec(A, weight=10), rec(B, weight=30)], [11, 0],
     [B, A], [(0, 40), (0, 10)]),
    ("weight 0 is placed first and taken only on a draw of 0", [rec(B, weight=5), rec(A, weight=0)], [0, 0],
     [A, B], [(0, 5), (0, 5)]),
    ("weight 0 is passed over on any other draw", [rec(A, weight=0), rec(B, weight=5)], [1, 0],
     [B, A], [(0, 5), (0, 0)]),
    ("all weights 0: any order, drawn uniformly", [rec(A, weight=0), rec(B, weight=0), rec(C, weight=0)],
     [2, 0, 0], [C, A, B], [(0, 2), (0, 1), (0, 0)]),
    ("priorities are ordered independently",
     [rec(C, priority=2, weight=1), rec(A, priority=1, weight=1), rec(B, priority=1, weight=3)],
     [2, 0, 0], [B, A, C], [(0, 4), (0, 1), (0, 1)]),
    ("a '.' target among real ones is left out", [rec(".", weight=50), rec(A)], [0], [A], [(0, 5)]),
    ("no records, no stations", [], [], [], []),
]


@pytest.mark.parametrize("records,draws,expected,asked", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gp_order_table(records, draws, expected, asked):
    rng = ScriptedRng(draws)
    assert [r.target for r in order(records, rng)] == expected
    assert rng.asked == asked


def test_ep_only_dot_target_means_service_not_available():
    with pytest.raises(DiscoveryError) as e:
        order([SrvRecord.of(0, 0, 1, ".")], random.Random(1))
    assert e.value.reason == "not-available" and "not available" in str(e.value)


@pytest.mark.parametrize("raw,want", [("Station.Example.ORG.", "station.example.org"), (".", "."),
                                      ("", "."), ("unit-z.storage.dvsan.test", "unit-z.storage.dvsan.test")])
def test_gp_target_normalised(raw, want):
    assert SrvRecord.of(1, 2, 3, raw).target == want


def test_gp_weights_share_first_place_in_proportion():
    rng = random.Random(2782)
    recs = [rec(A, weight=1), rec(B, weight=9), rec(C, weight=0)]
    n = 20_000
    first = Counter(order(recs, rng)[0].target for _ in range(n))
    # one draw from 0..10 (11 values): the weight-0 record wins on 0, A on 1, B on 2..10
    assert abs(first[A] / n - 1 / 11) < 0.01
    assert abs(first[B] / n - 9 / 11) < 0.01
    assert abs(first[C] / n - 1 / 11) < 0.01


records_st = st.lists(
    st.builds(SrvRecord, priority=st.integers(0, 3), weight=st.integers(0, 20), port=st.integers(1, 65535),
              target=st.sampled_from([".", A, B, C, "d.example.org", "e.example.org"])),
    max_size=12)


@settings(max_examples=300)
@given(records_st, st.integers(0, 2**32))
def test_prop_order_is_a_priority_sorted_permutation_of_usable_records(records, seed):
    usable = [r for r in records if r.target != "."]
    if records and not usable:
        with pytest.raises(DiscoveryError):
            order(records, random.Random(seed))
        return
    out = order(records, random.Random(seed))
    assert Counter(out) == Counter(usable)
    assert [r.priority for r in out] == sorted(r.priority for r in out)
    assert out == order(records, random.Random(seed))   # the random source alone decides


@settings(max_examples=200)
@given(st.lists(st.integers(1, 20), min_size=2, max_size=6), st.integers(0, 2**32))
def test_prop_positive_weight_beats_weight_zero_unless_draw_is_zero(weights, seed):
    recs = [rec(f"w{i}.example.org", weight=w) for i, w in enumerate(weights)] + [rec(A, weight=0)]
    first_draw = random.Random(seed).randint(1, sum(weights))
    rng = ScriptedRng([first_draw])
    assert order(recs, rng)[0].target != A
