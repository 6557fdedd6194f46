"""Issue 7's console scenario in a real browser against the real station: two administrators in
two browser contexts start three kinds of task at the same time — a wipe on one unit (a release),
a partitioning of another unit's disk, an assignment — and each one's tasks page, never reloaded,
follows all of them live to their end."""

from typing import Any

import httpx
from playwright.sync_api import Browser, expect

from tests.component.test_console import IQN_D, WATCH, assign_from_page, sign_in, visit
from tests.component.test_console_pages import PASSWORD, make_user
from tests.component.test_partition import unit_with_disk
from tests.component.test_station_autoconf import MiB, online, request, wait_for
from tests.component.test_tasks_api import slow_unit


def unit_p_disks(station: Any) -> list[dict[str, Any]]:
    r = httpx.get(f"{station.url}/api/v1/units/unit-p/disks", headers=station.auth, timeout=10)
    return r.json() if r.status_code == 200 else []  # type: ignore[no-any-return]


def test_gp_a_wipe_a_partitioning_and_an_assignment_at_once_each_followed_live_by_both_admins(
        station, tmp_path, browser: Browser):
    u = slow_unit(station, tmp_path / "disks")                    # unit-z: three volumes, a slow wiper
    p, _ = unit_with_disk(station, tmp_path / "blank", "unit-p")  # unit-p: an empty disk vdz
    make_user(station, "ada", "admin")
    try:
        u.start()
        online(station, 3)
        p.start()
        wait_for(lambda: unit_p_disks(station))
        a = request(station, 12 * MiB).json()
        free = next(v for v in httpx.get(station.url + "/api/v1/volumes", headers=station.auth, timeout=30).json()
                    if v["assigned_to"] is None and v["unit_name"] == "unit-z")
        ctx_a, ctx_b = browser.new_context(), browser.new_context()
        watch = [sign_in(ctx_a, station, page="tasks"), sign_in(ctx_b, station, "ada", PASSWORD, page="tasks")]
        for w in watch:
            expect(w.locator("#live")).to_have_text("· live")
            w.evaluate(WATCH)
        act_a = visit(ctx_a.new_page(), station, "assignments")
        act_b = visit(ctx_b.new_page(), station, "disks")
        u.agent.wiper.gate.clear()            # the unit starts its wipe, then holds it: no progress yet
        # at once: the admin releases host-b's volume (a wipe follows) and assigns a free one;
        # ada lays out unit-p's empty disk
        act_a.locator(f"tr[data-assignment='{a['id']}'] button.action").click()
        box = act_b.locator("section.disk[data-unit='unit-p'][data-disk='vdz']")
        form = box.locator("form.layout")
        form.locator("input[name=label]").check()
        form.locator("input[name=create]").fill("8MiB 8MiB")
        form.locator("button[type=submit]").click()
        assign_from_page(act_a, "host-d", IQN_D, "127.0.0.4", free["id"])
        for w in watch:
            expect(w.locator(".task[data-kind=wipe][data-state=running] progress:not([value])")).to_have_count(1)
        u.agent.wiper.gate.set()
        for w in watch:
            for kind in ("release", "wipe", "partition", "assign"):
                expect(w.locator(f".task[data-kind={kind}][data-state=succeeded]")).to_have_count(1, timeout=60_000)
        for w in watch:
            assert w.evaluate("window.notReloaded")
            seen: list[Any] = w.evaluate("window.seen")
            kinds = {kind for _, kind, *_ in seen}
            assert {"release", "wipe", "partition", "assign"} <= kinds, seen
            for kind in ("wipe", "partition"):
                states = [state for _, k, state, *_ in seen if k == kind]
                assert "running" in states and states[-1] == "succeeded", (kind, seen)
        assert [q["device"] for q in unit_p_disks(station)[0]["partitions"]] == ["vdz1", "vdz2"]
    finally:
        u.close()
        p.close()
