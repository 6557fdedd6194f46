"""The console's monitoring page in a real browser (Debian's chromium) against the real station:
a real unit agent loop sends STATS (its LIO a stand-in with I/O counters, as in
tests/component/test_monitoring.py); the page draws each unit's last hour as inline SVG with the
numbers the API answers, for an admin and a viewer alike; a unit without samples says so, and
the page, never reloaded, draws it once its samples come; the units page shows per-volume I/O."""

import asyncio
import concurrent.futures
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, Page, expect

from dvsan.stats import SystemFigures
from tests.component.test_console import SHOTS, actions, sign_in, visit
from tests.component.test_console_pages import PASSWORD, make_user
from tests.component.test_monitoring import Figures, IoLio, SessionLio
from tests.component.test_station_autoconf import UnitHarness, online, request, wait_for
from unit_agent.stats import sampler

MiB = 1 << 20


def report(u: UnitHarness, lio: Any, figures: Figures, every: float = 0.2) -> concurrent.futures.Future[Any]:
    """The unit agent's STATS loop, as `--stats-interval` starts it; cancel the future to stop it."""
    return asyncio.run_coroutine_threadsafe(
        u.agent.report_stats(every, sampler(u.agent.name, lio, None, figures)), u.loop)


def stats(station: Any, unit: str) -> dict[str, Any]:
    r = station.get(f"/api/v1/units/{unit}/stats?minutes=60")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def js_bytes(n: float) -> str:
    """console.js's bytes(), for the values the test knows exactly."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{round(n) if n >= 100 or i == 0 else f'{n:.1f}'} {units[i]}"


def legend(p: Page, unit: str, chart: str, series: str, device: str | None = None) -> Any:
    sel = f"section[data-unit='{unit}'] figure[data-chart='{chart}']"
    if device:
        sel += f"[data-device='{device}']"
    return p.locator(f"{sel} .legend[data-series='{series}']")


def path_of(p: Page, unit: str, chart: str, series: str, device: str | None = None) -> str:
    sel = f"section[data-unit='{unit}'] figure[data-chart='{chart}']"
    if device:
        sel += f"[data-device='{device}']"
    return p.locator(f"{sel} path[data-series='{series}']").get_attribute("d") or ""


def test_gp_monitoring_charts_show_the_apis_numbers_to_admin_and_viewer_and_ep_no_samples_yet(
        station, browser: Browser, tmp_path):
    shots = Path(SHOTS) if SHOTS else tmp_path
    make_user(station, "vera", "viewer")
    u = UnitHarness(station)
    lio = IoLio()
    u.lio = lio
    u.agent.lio = lio
    u.start()
    online(station, 3)
    a = request(station, "1GiB").json()
    dev = a["device"]
    quiet = UnitHarness(station, "unit-y")         # online, sends no sample (yet)
    quiet.lio = quiet.agent.lio = IoLio()
    try:
        quiet.start()
        online(station, 6)
        figures = Figures()
        with lio.io_lock:
            lio.io[dev] = (3 * MiB, 5 * MiB, 40)
        loop = report(u, lio, figures)
        wait_for(lambda: (v := stats(station, "unit-z")["volumes"]) and v[0]["samples"][-1]["write_bytes"] == 5 * MiB)
        # the host writes on and the unit gets busier: then the unit stops reporting, so the API's
        # answer stays what the page must show
        with lio.io_lock:
            lio.io[dev] = (3 * MiB, 69 * MiB, 1040)
        figures.now = SystemFigures(60.0, 200.0, 2, 4 << 30, 2 << 30, "eth1", 51000, 2000)
        wait_for(lambda: (s := stats(station, "unit-z"))["volumes"][0]["samples"][-1]["write_bytes"] == 69 * MiB
                 and s["samples"][-1]["mem_available"] == 2 << 30, 15)
        loop.cancel()
        wait_for(lambda: loop.done())
        st = stats(station, "unit-z")
        last, vlast = st["samples"][-1], st["volumes"][0]["samples"][-1]
        assert last["net_rx_bytes_per_s"] is not None and vlast["write_bytes_per_s"] > 0

        admin = sign_in(browser.new_context(), station, page="monitoring")
        viewer = sign_in(browser.new_context(), station, "vera", PASSWORD, page="monitoring")
        for p in (admin, viewer):
            expect(p.locator("nav a[href='/console/monitoring']")).to_be_visible()
            # a path per line, drawn from the samples (the first point of a rate is null: from the second)
            for chart, series in (("cpu", "cpu"), ("memory", "used"), ("network", "rx"), ("network", "tx")):
                assert path_of(p, "unit-z", chart, series).startswith("M"), (chart, series)
            for series in ("read", "write"):
                assert path_of(p, "unit-z", "volume", series, dev).startswith("M"), series
            # the legends: the API's numbers, written for people
            cpu = legend(p, "unit-z", "cpu", "cpu")
            expect(cpu).to_have_attribute("data-value", str(last["cpu_percent"]).removesuffix(".0"))
            expect(cpu.locator("strong")).to_have_text(f"{last['cpu_percent']:.1f} %")
            expect(legend(p, "unit-z", "memory", "used").locator("strong")).to_have_text(js_bytes(2 << 30))
            for series, key in (("rx", "net_rx_bytes_per_s"), ("tx", "net_tx_bytes_per_s")):
                got = float(legend(p, "unit-z", "network", series).get_attribute("data-value") or "nan")
                assert got == last[key], series
            for series, key in (("read", "read_bytes_per_s"), ("write", "write_bytes_per_s")):
                loc = legend(p, "unit-z", "volume", series, dev)
                assert float(loc.get_attribute("data-value") or "nan") == vlast[key], series
                expect(loc.locator("strong")).to_have_text(f"{js_bytes(vlast[key])}/s")
            expect(p.locator(f"figure[data-device='{dev}'] figcaption")).to_contain_text(f"volume #{a['volume_id']}")
            # a unit that has sent nothing: said in words, no empty chart
            quiet_box = p.locator("section[data-unit='unit-y']")
            expect(quiet_box.locator(".empty")).to_have_text(
                "No samples yet: this unit has sent no monitoring sample in the last hour.")
            expect(quiet_box.locator("svg")).to_have_count(0)
            assert actions(p) == 0
        # the page reads again by itself: unit-y's samples come, and its charts appear, unreloaded
        marks = viewer.evaluate("performance.getEntriesByType('navigation').length")
        quiet_loop = report(quiet, quiet.agent.lio, Figures())
        try:
            expect(viewer.locator("section[data-unit='unit-y'] figure[data-chart='cpu'] path[data-series='cpu']")).to_have_count(1, timeout=25_000)
            expect(viewer.locator("section[data-unit='unit-y'] .empty")).to_have_count(0)
            assert viewer.evaluate("performance.getEntriesByType('navigation').length") == marks
            assert viewer.evaluate("window.dvsan.refreshes") >= 2
            admin.reload()
            expect(admin.locator("section[data-unit='unit-y'] figure[data-chart='cpu'] path[data-series='cpu']")).to_have_count(1)
            admin.screenshot(path=str(shots / "console-monitoring.png"), full_page=True)
        finally:
            quiet_loop.cancel()
        # the units page: each exported volume's newest read and write rates
        visit(viewer, station, "units")
        expect(viewer.locator(f"td[data-io='unit-z/{dev}']")).to_have_text(
            f"{js_bytes(vlast['read_bytes_per_s'])}/s · {js_bytes(vlast['write_bytes_per_s'])}/s")
    finally:
        quiet.close()
        u.close()


def test_gp_the_hosts_page_says_whether_each_host_is_logged_in(station, browser: Browser):
    r = httpx.post(station.url + "/api/v1/hosts", headers=station.auth, timeout=10,
                   json={"name": "host-b", "initiator_iqns": ["iqn.2026-11.org.dvsan.lab:host-b"]})
    assert r.status_code == 201, r.text
    u = UnitHarness(station)
    lio = SessionLio()
    u.lio = u.agent.lio = lio
    try:
        u.start()
        online(station, 3)
        a = request(station, "1GiB").json()
        p = sign_in(browser.new_context(), station, page="hosts")
        tag = p.locator("tr[data-host='host-b'] [data-sessions]")
        expect(tag).to_have_text("session unknown")          # no sample from the unit yet
        with lio.io_lock:
            lio.io[a["device"]] = (0, 0, 0)
            lio.logged_in[a["device"]] = 1
        report(u, lio, Figures())
        wait_for(lambda: station.get(f"/api/v1/assignments/{a['id']}").json()["sessions"] == 1)
        visit(p, station, "hosts")
        expect(tag).to_have_text("logged in")
        with lio.io_lock:
            lio.logged_in[a["device"]] = 0
        wait_for(lambda: station.get(f"/api/v1/assignments/{a['id']}").json()["sessions"] == 0)
        visit(p, station, "hosts")
        expect(tag).to_have_text("not logged in")
    finally:
        u.close()
