"""Monitoring's pure parts: the STATS body's checks, rate math and counter resets, the station's
bounded sample window, and the unit's sample (psutil on this machine, LIO counters faked)."""

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dvsan.stats import (
    MAX_VOLUMES,
    StatsRefused,
    SystemFigures,
    VolumeIo,
    build_reports,
    cpu_percent,
    increase,
    parse_report,
    rate,
)
from station.services.stats import StatsStore, _Sums
from unit_agent.stats import sampler, system_figures

NOW = 1_765_000_000_000
SYS = SystemFigures(10.0, 100.0, 2, 1000, 600, "eth1", 5, 6)


def body(**kw: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"unit": "unit-a", "t": NOW, "boot": 7, "part": 0, "parts": 1,
                         "system": SYS.to_wire(),
                         "volumes": [{"device": "vdb1", "read_bytes": 1, "write_bytes": 2, "commands": 3}]}
    b.update(kw)
    return b


def test_gp_a_good_report_parses():
    r = parse_report(body(), NOW)
    assert (r.unit, r.t_ms, r.boot, r.system, r.refused) == ("unit-a", NOW, 7, SYS, ())
    assert r.volumes == (VolumeIo("vdb1", 1, 2, 3),)


@pytest.mark.parametrize(("changes", "reason"), [
    ({"t": "now"}, "bad-field"),
    ({"t": True}, "bad-field"),
    ({"t": NOW + 400_000}, "bad-time"),
    ({"t": NOW - 400_000}, "bad-time"),
    ({"boot": -1}, "negative"),
    ({"boot": 2**64}, "bad-field"),
    ({"unit": ""}, "bad-field"),
    ({"part": 1, "parts": 1}, "bad-field"),
    ({"part": 0, "parts": 65}, "bad-field"),
    ({"system": None}, "bad-field"),
    ({"system": {**SYS.to_wire(), "mem_total": -5}}, "negative"),
    ({"system": {**SYS.to_wire(), "cpu_busy_s": float("inf")}}, "bad-field"),
    ({"system": {**SYS.to_wire(), "cpu_busy_s": 101.0}}, "bad-field"),
    ({"system": {**SYS.to_wire(), "mem_available": 1001}}, "bad-field"),
    ({"system": {**SYS.to_wire(), "nic": 5}}, "bad-field"),
    ({"system": {**SYS.to_wire(), "net_rx_bytes": 1.5}}, "bad-field"),
    ({"volumes": {}}, "bad-field"),
    ({"volumes": [{"device": f"vdb{i}", "read_bytes": 0, "write_bytes": 0, "commands": 0}
                  for i in range(MAX_VOLUMES + 1)]}, "too-many"),
])
def test_ep_a_bad_report_is_refused_whole_with_its_reason(changes, reason):
    with pytest.raises(StatsRefused) as e:
        parse_report(body(**changes), NOW)
    assert e.value.reason == reason


def test_ep_a_report_without_system_in_its_first_part_is_refused():
    b = body()
    del b["system"]
    with pytest.raises(StatsRefused, match="must carry 'system'"):
        parse_report(b, NOW)


@pytest.mark.parametrize(("entry", "reason"), [
    ({"device": "vdb2", "read_bytes": -1, "write_bytes": 0, "commands": 0}, "negative"),
    ({"device": "vdb2", "read_bytes": 0, "write_bytes": "0", "commands": 0}, "bad-field"),
    ({"device": "vdb2", "read_bytes": 0, "write_bytes": 0, "commands": False}, "bad-field"),
    ({"device": "vdb2", "read_bytes": 0, "write_bytes": 0}, "bad-field"),
    ({"device": "../sda", "read_bytes": 0, "write_bytes": 0, "commands": 0}, "bad-field"),
    ({"device": "vdb1", "read_bytes": 0, "write_bytes": 0, "commands": 0}, "duplicate"),
    ("vdb2", "bad-field"),
])
def test_ep_a_bad_volume_entry_is_refused_alone(entry, reason):
    r = parse_report(body(volumes=[*body()["volumes"], entry]), NOW)
    assert r.volumes == (VolumeIo("vdb1", 1, 2, 3),)
    assert [x[1] for x in r.refused] == [reason]


@pytest.mark.parametrize(("prev", "cur", "seconds", "want"), [
    (100, 160, 2.0, 30.0),       # grew by 60 in 2 s
    (100, 100, 5.0, 0.0),
    (100, 40, 2.0, 20.0),        # reset: counted from zero, 40 in 2 s
    (0, 10, 0.0, 0.0),           # no interval: no rate
    (0, 10, -1.0, 0.0),
])
def test_gp_rate_counts_a_reset_from_zero(prev, cur, seconds, want):
    assert rate(prev, cur, seconds) == want


@pytest.mark.parametrize(("prev", "cur", "want"), [
    ((10, 100), (60, 200), 50.0),
    ((10, 100), (10, 200), 0.0),
    ((10, 100), (10, 100), 0.0),     # no time passed
    ((50, 900), (5, 10), 50.0),      # reboot: both totals start again
])
def test_gp_cpu_percent(prev, cur, want):
    assert cpu_percent(prev[0], prev[1], cur[0], cur[1]) == want


@given(st.lists(st.integers(min_value=0, max_value=2**40), min_size=1, max_size=50))
def test_gp_station_sums_never_go_down_and_add_every_increase(values):
    sums = _Sums([0.0], [0.0], 1)
    out = [sums.add([float(v)], 1)[0] for v in values]
    assert out == sorted(out)
    assert out[-1] == sum(increase(p, c) for p, c in zip([0, *values], values, strict=False))


def test_gp_sums_reset_per_counter_and_all_at_a_new_boot():
    s = _Sums([0.0, 0.0], [0.0, 0.0], 1)
    assert s.add([100.0, 50.0], 1) == [100.0, 50.0]
    assert s.add([10.0, 70.0], 1) == [110.0, 70.0]       # first reset, second grew
    assert s.add([80.0, 90.0], 2) == [190.0, 160.0]      # new boot: both counted from zero


def report(t: int, vols: dict[str, tuple[int, int, int]], *, boot: int = 7, system: bool = True) -> Any:
    return parse_report(body(t=t, boot=boot, system=SYS.to_wire() if system else None,
                             volumes=[{"device": d, "read_bytes": r, "write_bytes": w, "commands": c}
                                      for d, (r, w, c) in vols.items()]), t)


def test_gp_the_window_keeps_one_point_per_resolution_and_drops_old_ones():
    store = StatsStore(window_s=60, resolution_s=10)
    for i in range(200):                     # a sample a second for 200 s
        store.take(report(NOW + i * 1000, {"vdb1": (i, i, i)}), {"vdb1": 3})
    pts = store.volumes[("unit-a", "vdb1")].points
    assert len(pts) <= 60 / 10 + 2
    assert pts[0][0] >= NOW + 199_000 - 60_000
    assert all(b[0] - a[0] >= 10_000 for a, b in zip(list(pts)[:-2], list(pts)[1:-1], strict=True))
    assert pts[-1][1:] == (199.0, 199.0, 199.0)     # the newest sample is always the last point
    rows = store.volume_samples("unit-a", 0)[0]["samples"]
    assert all(r["read_bytes_per_s"] is None or r["read_bytes_per_s"] == pytest.approx(1.0, rel=0.01)
               for r in rows)


def test_ep_unknown_volumes_too_many_series_and_old_samples_are_refused_and_counted():
    store = StatsStore(max_units=1, max_volume_series=2)
    got = store.take(report(NOW, {"vdb1": (1, 1, 1), "vdb2": (1, 1, 1), "vdb3": (1, 1, 1), "vdb9": (0, 0, 0)}),
                     {"vdb1": 1, "vdb2": 2, "vdb3": 3})
    assert got["volumes_taken"] == 2
    assert sorted(r["reason"] for r in got["refused"]) == ["too-many-series", "unknown-volume"]
    assert set(store.volumes) == {("unit-a", "vdb1"), ("unit-a", "vdb2")}
    with pytest.raises(StatsRefused) as e:
        store.take(report(NOW - 1, {}), {})
    assert e.value.reason == "out-of-order"
    other = parse_report(body(unit="unit-b"), NOW)
    with pytest.raises(StatsRefused) as e:
        store.take(other, {})
    assert e.value.reason == "too-many-series"
    assert store.counts["refused_unknown-volume"] == 1 and store.counts["refused_too-many-series"] == 2
    assert store.counts["refused_out-of-order"] == 1 and store.counts["accepted"] == 1


def test_gp_prune_forgets_series_that_left_the_window():
    store = StatsStore(window_s=60)
    store.take(report(NOW, {"vdb1": (1, 1, 1)}), {"vdb1": 1})
    store.prune(NOW + 30_000)
    assert store.units and store.volumes
    store.prune(NOW + 61_000)
    assert not store.units and not store.volumes


def test_gp_a_large_unit_sends_several_parts_each_taken():
    vols = [VolumeIo(f"sd{chr(97 + i // 26)}{chr(97 + i % 26)}", i, i, i) for i in range(600)]
    bodies = build_reports("unit-a", NOW, 7, SYS, vols)
    assert [b["part"] for b in bodies] == [0, 1, 2] and {b["parts"] for b in bodies} == {3}
    assert ["system" in b for b in bodies] == [True, False, False]
    store = StatsStore()
    known = {v.device: i for i, v in enumerate(vols)}
    assert sum(store.take(parse_report(b, NOW), known)["volumes_taken"] for b in bodies) == 600
    assert len(store.units["unit-a"].points) == 1


def test_gp_the_unit_sample_reads_lio_and_psutil():
    class Io:
        def io_counters(self) -> dict[str, tuple[int, int, int]]:
            return {"vdb1": (1 << 20, 2 << 20, 9)}
    bodies = sampler("unit-a", Io(), None)()
    (b,) = bodies
    r = parse_report(b, b["t"])                 # what the unit sends, the station takes
    assert r.volumes == (VolumeIo("vdb1", 1 << 20, 2 << 20, 9),)
    assert r.system is not None and r.system.nic == "*" and r.system.cpus >= 1
    assert sampler("unit-a", None, "lo")()[0]["system"]["nic"] == "lo"


def test_gp_system_figures_are_consistent():
    f = system_figures(None)
    assert 0 <= f.cpu_busy_s <= f.cpu_total_s and 0 <= f.mem_available <= f.mem_total


def test_gp_and_ep_the_stats_interval_setting(capsys):
    from unit_agent.cli import main
    from unit_agent.settings import UnitSettings

    assert UnitSettings(name="unit-a").stats_interval == 10.0
    assert UnitSettings(name="unit-a", stats_interval=0).stats_interval == 0     # off
    assert main(["--name", "unit-a", "--stats-interval", "-1"]) == 2
    assert "stats_interval" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--name", "unit-a", "--stats-interval", "often"])


@pytest.mark.parametrize(("extra", "want"), [
    ({}, None), ({"sessions": 0}, 0), ({"sessions": 2}, 2),
])
def test_gp_a_volume_entry_may_say_its_logged_in_initiators(extra, want):
    vol = {"device": "vdb1", "read_bytes": 1, "write_bytes": 2, "commands": 3, **extra}
    r = parse_report(body(volumes=[vol]), NOW)
    assert r.volumes == (VolumeIo("vdb1", 1, 2, 3, want),) and r.refused == ()
    assert VolumeIo("vdb1", 1, 2, 3, want).to_wire() == vol


@pytest.mark.parametrize(("sessions", "reason"), [(-1, "negative"), (65_537, "bad-field"), ("1", "bad-field"),
                                                  (True, "bad-field"), (None, "bad-field")])
def test_ep_a_bad_session_count_refuses_its_entry_alone(sessions, reason):
    bad = {"device": "vdb2", "read_bytes": 0, "write_bytes": 0, "commands": 0, "sessions": sessions}
    r = parse_report(body(volumes=[*body()["volumes"], bad]), NOW)
    assert r.volumes == (VolumeIo("vdb1", 1, 2, 3),) and [x[1] for x in r.refused] == [reason]


def test_gp_the_session_count_is_the_newest_and_only_while_fresh():
    store = StatsStore()
    vol = {"device": "vdb1", "read_bytes": 1, "write_bytes": 2, "commands": 3}
    assert store.sessions_of("unit-a", "vdb1", NOW) is None                  # never reported
    store.take(parse_report(body(volumes=[vol]), NOW), {"vdb1": 1})
    assert store.sessions_of("unit-a", "vdb1", NOW) is None                  # an agent that does not say
    store.take(parse_report(body(t=NOW + 1000, volumes=[{**vol, "sessions": 1}]), NOW), {"vdb1": 1})
    store.take(parse_report(body(t=NOW + 2000, volumes=[{**vol, "sessions": 0}]), NOW), {"vdb1": 1})
    assert store.sessions_of("unit-a", "vdb1", NOW + 2000) == 0
    assert store.sessions_of("unit-a", "vdb1", NOW + 62_000) == 0
    assert store.sessions_of("unit-a", "vdb1", NOW + 62_001) is None          # too old to tell
    assert store.sessions_of("unit-a", "vdb9", NOW) is None


def test_gp_the_unit_sample_carries_each_exports_sessions():
    class Io:
        def io_counters(self) -> dict[str, tuple[int, int, int]]:
            return {"vdb1": (0, 0, 0), "vdb2": (0, 0, 0)}

        def session_counts(self) -> dict[str, int]:
            return {"vdb1": 1}
    (b,) = sampler("unit-a", Io(), None)()
    assert [v.get("sessions") for v in b["volumes"]] == [1, None]
