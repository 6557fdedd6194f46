"""The web console in a real browser (Debian's chromium, driven by Playwright) against the real
station process, with a real unit agent loop (in-memory LIO, partitions as files, a wiper slow
enough to watch): sign-in, a viewer offered no action and refused by the API anyway, two
administrators whose tasks run at once and whose pages each follow all of them live to the end,
and refusals shown in the page from the API's own error."""

import os
import re
import threading
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.component.test_console_pages import PASSWORD, make_user
from tests.component.test_host_agent import enrol_host
from tests.component.test_station_autoconf import MiB, online, request, wait_for
from tests.component.test_tasks_api import IQN_C, slow_unit
from tests.component.test_wipe_release import vol

ADMIN_PASSWORD = "test-admin-password-0"       # the component station's first admin
SHOTS = os.environ.get("DVSAN_CONSOLE_SCREENSHOTS")   # a directory: keep the screenshots there


def sign_in(ctx: BrowserContext, station: Any, name: str = "admin", password: str = ADMIN_PASSWORD,
            page: str = "overview") -> Page:
    p = ctx.new_page()
    p.goto(f"{station.url}/console/{page}")
    expect(p).to_have_url(re.compile(r"/console/signin\?next="))
    p.fill("input[name=name]", name)
    p.fill("input[name=password]", password)
    p.click("button[type=submit]")
    expect(p).to_have_url(f"{station.url}/console/{page}")
    expect(p.locator("body")).to_have_attribute("data-ready", "yes")
    return p


def visit(p: Page, station: Any, page: str) -> Page:
    p.goto(f"{station.url}/console/{page}")
    expect(p.locator("body")).to_have_attribute("data-ready", re.compile("yes|error"))
    return p


def test_gp_sign_in_sign_out_and_ep_a_wrong_password_is_shown(station, context: BrowserContext):
    p = context.new_page()
    p.goto(station.url + "/")
    expect(p).to_have_url(f"{station.url}/console/signin?next=/console/overview")
    p.fill("input[name=name]", "admin")
    p.fill("input[name=password]", "not-the-password")
    p.click("button[type=submit]")
    expect(p.locator("#notice")).to_have_text("Sign-in refused: wrong user name or password")
    expect(p).to_have_url(re.compile(r"/console/signin"))
    assert not [c for c in context.cookies() if c["name"] == "dvsan_session"]
    p.fill("input[name=password]", ADMIN_PASSWORD)
    p.click("button[type=submit]")
    expect(p).to_have_url(f"{station.url}/console/overview")
    expect(p.locator("#who")).to_have_text("admin (admin)")
    expect(p.locator("nav a[href='/console/users']")).to_be_visible()
    cookie = next(c for c in context.cookies() if c["name"] == "dvsan_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert p.evaluate("document.cookie") == ""            # the page's script cannot read it
    p.click("#signout")
    expect(p).to_have_url(f"{station.url}/console/signin")
    # the session is over at the station, not only in this browser
    r = httpx.get(station.url + "/api/v1/me", cookies={"dvsan_session": cookie["value"]}, timeout=30)
    assert r.status_code == 401
    p.goto(station.url + "/console/units")
    expect(p).to_have_url(f"{station.url}/console/signin?next=/console/units")


IQN_B = "iqn.2026-11.org.dvsan.lab:host-b"
IQN_D = "iqn.2026-11.org.dvsan.lab:host-d"
WRITE = """async ([method, path, body, csrf]) => {
  const headers = {"Content-Type": "application/json"};
  if (csrf) headers["X-CSRF-Token"] = window.dvsan.csrf;
  const r = await fetch(path, {method, headers, body: body ? JSON.stringify(body) : undefined});
  return [r.status, await r.text()];
}"""


def assign_from_page(p: Page, host: str, iqn: str, address: str, volume_id: int) -> None:
    """Fill the assignments page's form for one chosen volume and send it."""
    p.fill("#assign-form input[name=host]", host)
    p.fill("#assign-form input[name=initiator_iqn]", iqn)
    p.fill("#assign-form input[name=host_address]", address)
    p.select_option("#assign-form select[name=volume_id]", str(volume_id))
    p.click("#assign-form button[type=submit]")


def width(loc: Any) -> float:
    box = loc.bounding_box()
    assert box is not None, loc
    return float(box["width"])


def actions(p: Page) -> int:
    """How many action buttons and forms the page offers (visible ones)."""
    return p.locator("button.action:visible, form[data-needs]:visible").count()


def test_ep_a_viewer_is_offered_no_action_and_the_api_refuses_it_anyway(station, tmp_path, browser: Browser):
    enrol_host(station, tmp_path, "host-b", IQN_B)
    u = slow_unit(station, tmp_path / "disks")
    make_user(station, "vera", "viewer")
    try:
        u.start()
        online(station, 3)
        a = request(station, 12 * MiB).json()
        admin_ctx, viewer_ctx = browser.new_context(), browser.new_context()
        admin = sign_in(admin_ctx, station, page="assignments")
        viewer = sign_in(viewer_ctx, station, "vera", PASSWORD, page="assignments")
        for p in (admin, viewer):
            expect(p.locator(f"tr[data-assignment='{a['id']}']")).to_be_visible()
        # side by side: the same pages offer the admin its actions and the viewer none
        for name, offered in (("assignments", 2), ("hosts", 2), ("units", 0), ("tasks", 0), ("overview", 0)):
            visit(admin, station, name)
            visit(viewer, station, name)
            assert actions(admin) >= offered, name
            assert actions(viewer) == 0, (name, viewer.locator("button.action:visible").all_inner_texts())
        expect(viewer.locator("nav a[href='/console/users']")).to_be_hidden()
        expect(viewer.locator("nav a[href='/console/audit']")).to_be_hidden()
        expect(admin.locator("nav a[href='/console/users']")).to_be_visible()
        # a viewer who goes to an admin's page anyway is told why it shows nothing
        visit(viewer, station, "users")
        expect(viewer.locator("#notice")).to_contain_text(
            "not permitted (403, Forbidden): user 'vera' (role viewer) lacks the permission 'users.admin'")
        assert actions(viewer) == 0
        # and its session, used from the page's own script, is refused every write
        for method, path, body in (("DELETE", f"/api/v1/assignments/{a['id']}", None),
                                   ("POST", "/api/v1/assignments", {"host": "host-b", "initiator_iqn": IQN_B,
                                                                    "host_address": "127.0.0.2", "volume_id": 1}),
                                   ("POST", f"/api/v1/volumes/{a['volume_id']}/wipe", None),
                                   ("POST", "/api/v1/users", {"name": "eve", "role": "admin", "password": "x" * 16})):
            status, text = viewer.evaluate(WRITE, [method, station.url + path, body, True])
            assert status == 403 and "lacks the permission" in text, (method, path, status, text)
        # without the session's CSRF token, even the admin's write is refused
        status, text = admin.evaluate(WRITE, ["DELETE", f"/api/v1/assignments/{a['id']}", None, False])
        assert status == 403 and "X-CSRF-Token" in text, text
        assert vol(station, a["volume_id"])["assigned_to"] == "host-b"
        # the admin's, with it, is done: the viewer's 403 was its permission, nothing else
        status, text = admin.evaluate(WRITE, ["DELETE", f"/api/v1/assignments/{a['id']}?wait=30", None, True])
        assert status == 200, text
        wait_for(lambda: vol(station, a["volume_id"])["wipe_state"] == "clean", 60)
    finally:
        u.close()


# Records, in the page, every state and progress value each task row of the live list ever showed.
WATCH = """() => {
  window.seen = [];
  window.notReloaded = true;
  const box = document.querySelector('#live-tasks');
  const note = () => { for (const row of box.querySelectorAll('.task')) {
    const bar = row.querySelector('progress');
    window.seen.push([Number(row.dataset.task), row.dataset.kind, row.dataset.state,
                      bar.hasAttribute('value') ? bar.value : null, bar.max]);
  } };
  new MutationObserver(note).observe(box, {childList: true, subtree: true});
}"""


def test_gp_two_admins_start_tasks_at_once_and_each_page_follows_all_of_them_live(station, tmp_path,
                                                                                   browser: Browser):
    u = slow_unit(station, tmp_path / "disks")
    make_user(station, "ada", "admin")
    try:
        u.start()
        online(station, 3)
        a = request(station, 12 * MiB).json()                                  # vdz2, 16 MiB
        b = request(station, 20 * MiB, host="host-c", iqn=IQN_C).json()        # vdz3, 32 MiB
        free = next(v for v in httpx.get(station.url + "/api/v1/volumes", headers=station.auth, timeout=30).json()
                    if v["assigned_to"] is None)                                # vdz1, 8 MiB
        ctx_a, ctx_b = browser.new_context(), browser.new_context()
        watch = [sign_in(ctx_a, station, page="tasks"), sign_in(ctx_b, station, "ada", PASSWORD, page="tasks")]
        for w in watch:
            expect(w.locator("#live")).to_have_text("· live")            # its event stream is open
            w.evaluate(WATCH)
        act_a = visit(ctx_a.new_page(), station, "assignments")
        act_b = visit(ctx_b.new_page(), station, "assignments")
        u.agent.wiper.gate.clear()            # the unit starts its wipes, then holds them: no progress yet
        # at once: admin releases host-b's volume, ada host-c's, admin assigns the free one to host-d
        act_a.locator(f"tr[data-assignment='{a['id']}'] button.action").click()
        act_b.locator(f"tr[data-assignment='{b['id']}'] button.action").click()
        assign_from_page(act_a, "host-d", IQN_D, "127.0.0.4", free["id"])
        for w in watch:
            # both wipes run, shown without a number while the unit has reported none
            expect(w.locator(".task[data-kind=wipe][data-state=running] progress:not([value])")).to_have_count(2)
        u.agent.wiper.gate.set()
        for w in watch:
            for kind, n in (("release", 2), ("wipe", 2), ("assign", 1)):
                expect(w.locator(f".task[data-kind={kind}][data-state=succeeded]")).to_have_count(n, timeout=60_000)
        expect(act_a.locator("#notice")).to_contain_text(f"Volume #{free['id']} (unit-z/vdz1) assigned to host-d")
        # ada's assignments page, never reloaded, followed the end of the admin's tasks too
        expect(act_b.locator(f"tr[data-volume='{free['id']}']")).to_contain_text("host-d")
        for gone in (a, b):
            expect(act_b.locator(f"tr[data-volume='{gone['volume_id']}']")).to_have_count(0)
        for w in watch:
            assert w.evaluate("window.notReloaded") and w.evaluate("window.dvsan.events") >= 10
            seen = w.evaluate("window.seen")
            wipes = {t for t, kind, *_ in seen if kind == "wipe"}
            assert len(wipes) == 2, seen
            for t in wipes:
                mine = [(state, value, top) for i, _, state, value, top in seen if i == t]
                assert ("running", None, 1) in mine, mine                       # indeterminate first
                mid = [value for state, value, top in mine if state == "running" and value and 0 < value < top]
                assert mid and mid == sorted(mid), mine                          # then moving forward
                assert mine[-1][0] == "succeeded"
        assert {v["device"]: v["assigned_to"] for v in httpx.get(
            station.url + "/api/v1/volumes", headers=station.auth, timeout=30).json()} == {
            "vdz1": "host-d", "vdz2": None, "vdz3": None}
    finally:
        u.close()


def test_ep_refusals_are_shown_in_the_page_with_the_stations_reason(station, tmp_path, page: Page):
    u = slow_unit(station, tmp_path / "disks")
    try:
        u.start()
        online(station, 3)
        p = sign_in(page.context, station, page="assignments")
        form = p.locator("#assign-form")
        form.locator("input[name=host]").fill("host-b")
        form.locator("input[name=initiator_iqn]").fill(IQN_B)
        form.locator("input[name=host_address]").fill("not-an-address")
        form.locator("input[name=size]").fill("1MiB")
        form.locator("button[type=submit]").click()
        expect(p.locator("#notice")).to_contain_text("invalid input (422): host_address:")
        expect(p.locator("#notice")).to_contain_text("not an IP address: 'not-an-address'")
        form.locator("input[name=host_address]").fill("127.0.0.2")
        form.locator("input[name=size]").fill("900MiB")                 # larger than any volume
        form.locator("button[type=submit]").click()
        expect(p.locator("#notice")).to_contain_text("refused (409, InsufficientCapacity): no free volume")
        # the unit goes away while the form still offers its volume: the station refuses, and says why
        vid = next(v["id"] for v in httpx.get(station.url + "/api/v1/volumes", headers=station.auth,
                                              timeout=30).json() if v["device"] == "vdz1")
        form.locator("select[name=volume_id]").select_option(str(vid))
        assert u.stop()
        wait_for(lambda: vol(station, vid)["state"] == "offline")
        form.locator("button[type=submit]").click()
        expect(p.locator("#notice")).to_contain_text(f"refused (409, Conflict): volume {vid} is offline on unit unit-z")
        expect(p.locator("#notice")).to_have_class("error")
        assert httpx.get(station.url + "/api/v1/assignments", headers=station.auth, timeout=30).json() == []
    finally:
        u.close()


def test_gp_screenshots_of_the_main_pages(station, tmp_path, browser: Browser):
    """Screenshots of the main pages mid-way through two wipes (DVSAN_CONSOLE_SCREENSHOTS=docs/img
    keeps them for the README); the overview's bars say what they show."""
    out = Path(SHOTS) if SHOTS else tmp_path / "shots"
    out.mkdir(parents=True, exist_ok=True)
    u = slow_unit(station, tmp_path / "disks")
    enrol_host(station, tmp_path, "host-b", IQN_B)
    enrol_host(station, tmp_path, "host-c", IQN_C)
    make_user(station, "vera", "viewer")
    make_user(station, "otto", "operator")
    httpx.post(station.url + "/api/v1/grants", headers=station.auth, timeout=30,
               json={"user": "vera", "role": "operator", "object": "/units/unit-z"}).raise_for_status()
    try:
        u.start()
        online(station, 3)
        a = request(station, 12 * MiB).json()
        b = request(station, 20 * MiB, host="host-c", iqn=IQN_C).json()
        ctx = browser.new_context(viewport={"width": 1200, "height": 720})
        p = sign_in(ctx, station, page="tasks")
        released: list[Any] = []
        threads = [threading.Thread(target=lambda x=x: released.append(httpx.delete(
            f"{station.url}/api/v1/assignments/{x['id']}?wait=30", headers=station.auth, timeout=60).json()))
            for x in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wipes = [r["wipe_task"] for r in released]
        wait_for(lambda: any(t["step"] * 3 > t["total_steps"] for t in (httpx.get(
            f"{station.url}/api/v1/tasks/{w}", headers=station.auth, timeout=30).json() for w in wipes)), 60)
        u.agent.wiper.gate.clear()            # hold both wipes mid-way for the pictures
        expect(p.locator(".task[data-kind=wipe][data-state=running] progress[value]")).to_have_count(2)
        p.screenshot(path=str(out / "console-tasks.png"))
        visit(p, station, "overview")
        total = p.locator(".bar-row[data-unit='all units']")
        expect(total).to_contain_text("8.0 MiB free of 56.0 MiB · 48.0 MiB wiping")
        widths = {k: width(total.locator(f".bar .{k}")) for k in ("free", "wiping", "assigned")}
        assert widths["assigned"] == 0 and abs(widths["wiping"] / widths["free"] - 6) < 0.1, widths
        expect(p.locator("#unit-states [data-state=online]")).to_have_text("online 1")
        expect(p.locator("#live-tasks .task[data-kind=wipe]")).to_have_count(2)
        p.screenshot(path=str(out / "console-overview.png"))
        u.agent.wiper.gate.set()
        wait_for(lambda: all(httpx.get(f"{station.url}/api/v1/tasks/{w}", headers=station.auth,
                                       timeout=30).json()["state"] == "succeeded" for w in wipes), 60)
        request(station, 12 * MiB)
        visit(p, station, "units")
        expect(p.locator("section[data-unit=unit-z] tbody tr")).to_have_count(3)
        expect(p.locator("section[data-unit=unit-z] tr[data-volume]").first).to_contain_text("2048")
        p.screenshot(path=str(out / "console-units.png"))
        for name in ("assignments", "hosts", "users"):
            visit(p, station, name)
            expect(p.locator("#notice")).to_be_hidden()
            p.screenshot(path=str(out / f"console-{name}.png"))
        ctx.close()
    finally:
        u.close()


def test_gp_an_admin_enrols_a_host_makes_a_user_and_grants_it_from_the_pages(station, page: Page):
    p = sign_in(page.context, station, page="hosts")
    p.fill("#enrol-form input[name=name]", "host-b")
    p.fill("#enrol-form textarea[name=iqns]", IQN_B)
    p.click("#enrol-form button[type=submit]")
    expect(p.locator("#enrolled-token code")).to_have_text(re.compile(r"^dvsan_\d+_\S+$"))
    token = p.locator("#enrolled-token code").inner_text()
    r = httpx.get(station.url + "/api/v1/assignments", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200 and r.json() == []          # the token shown once is the host's
    expect(p.locator("tr[data-host=host-b]")).to_contain_text(IQN_B)
    p.click("#enrol-form button[type=submit]")             # again: refused, and the page says why
    expect(p.locator("#notice")).to_contain_text("refused (409, Conflict): host 'host-b' is enrolled already")
    visit(p, station, "users")
    p.fill("#user-form input[name=name]", "otto")
    p.select_option("#user-form select[name=role]", "operator")
    p.fill("#user-form input[name=password]", "short")
    p.click("#user-form button[type=submit]")              # the browser's own check: minlength
    assert p.locator("#user-form input[name=password]").evaluate("e => e.validity.tooShort")
    p.fill("#user-form input[name=password]", PASSWORD)
    p.click("#user-form button[type=submit]")
    expect(p.locator("tr[data-user=otto]")).to_contain_text("operator")
    p.fill("#grant-form input[name=user]", "otto")
    p.fill("#grant-form input[name=object]", "/units/unit-a")
    p.click("#grant-form button[type=submit]")
    expect(p.locator("#grants tbody tr")).to_contain_text("/units/unit-a")
    p.fill("#grant-form input[name=object]", "units/unit-a")
    p.click("#grant-form button[type=submit]")
    expect(p.locator("#notice")).to_contain_text("invalid input (422): object:")
    grants = httpx.get(station.url + "/api/v1/grants", headers=station.auth, timeout=30).json()
    assert [(g["user_name"], g["role"], g["object"]) for g in grants] == [("otto", "operator", "/units/unit-a")]
    visit(p, station, "audit")
    expect(p.locator("#audit tbody tr").first).to_contain_text("POST /api/v1/grants")


def test_ep_a_unit_that_does_not_apply_is_shown_and_a_queued_task_is_cancelled_from_the_page(
        station, tmp_path, browser: Browser):
    u = slow_unit(station, tmp_path / "disks")
    held = threading.Event()
    apply = u.lio.apply

    def stuck(actions: Any) -> None:          # the unit's kernel write hangs until the test lets go
        held.wait(60)
        apply(actions)
    u.lio.apply = stuck  # type: ignore[method-assign]
    try:
        u.start()
        online(station, 3)
        u.agent.apply_timeout = 5
        ctx = browser.new_context()
        tasks = sign_in(ctx, station, page="tasks")
        form = visit(ctx.new_page(), station, "assignments")
        form.fill("#assign-form input[name=host]", "host-b")
        form.fill("#assign-form input[name=initiator_iqn]", IQN_B)
        form.fill("#assign-form input[name=host_address]", "127.0.0.2")
        form.fill("#assign-form input[name=size]", "5MiB")
        form.click("#assign-form button[type=submit]")
        expect(tasks.locator(".task[data-kind=assign][data-state=running]")).to_have_count(1)
        # another request for the same host waits its turn: queued, and cancelled from the page
        r = httpx.post(station.url + "/api/v1/assignments", headers=station.auth, timeout=30, json={
            "host": "host-b", "initiator_iqn": IQN_B, "host_address": "127.0.0.2", "size": "5MiB"})
        assert r.status_code == 202, r.text
        queued = tasks.locator(f".task[data-task='{r.json()['id']}']")
        expect(queued).to_have_attribute("data-state", "queued")
        queued.locator("button.action").click()
        expect(queued).to_have_attribute("data-state", "cancelled")
        expect(queued.locator("button")).to_have_count(0)
        # the first fails when the unit does not apply in time; its page says so, from the station
        expect(form.locator("#notice")).to_contain_text("unit unavailable (503", timeout=30_000)
        expect(form.locator("#notice")).to_contain_text("unit-z is busy")
        expect(tasks.locator(".task[data-kind=assign][data-state=failed] .msg")).to_contain_text("Unavailable")
        assert httpx.get(station.url + "/api/v1/assignments", headers=station.auth, timeout=30).json() == []
    finally:
        held.set()
        u.close()
