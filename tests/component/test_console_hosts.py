"""The console's hosts page in a real browser against the real station: who may use a host's
storage (its users and groups) is shown per host and given when an operator enrols it; a user or
group the station does not know is refused in the page and nothing is enrolled; a viewer sees
who may use each host and is offered no form."""

import httpx
from playwright.sync_api import Browser, expect

from tests.component.test_console import actions, sign_in
from tests.component.test_console_pages import PASSWORD, make_user

IQN = "iqn.2026-11.org.dvsan.lab:host-t"


def test_gp_an_operator_enrols_a_host_for_a_user_and_a_group_and_ep_an_unknown_user_is_refused(
        station, browser: Browser):
    for name, role in (("otto", "operator"), ("alice", "viewer"), ("vera", "viewer")):
        make_user(station, name, role)
    r = httpx.post(station.url + "/api/v1/groups", headers=station.auth, timeout=30, json={"name": "tenant-a"})
    assert r.status_code == 201, r.text
    op = sign_in(browser.new_context(), station, "otto", PASSWORD, page="hosts")
    form = op.locator("#enrol-form")
    expect(form).to_be_visible()
    # a user the station does not know: the station's refusal in the page, and no host
    form.locator("input[name=name]").fill("host-t")
    form.locator("textarea[name=iqns]").fill(IQN)
    form.locator("input[name=users]").fill("alice nobody")
    form.locator("input[name=groups]").fill("tenant-a")
    form.locator("button[type=submit]").click()
    expect(op.locator("#notice")).to_contain_text("not found (404, NotFound): no user 'nobody'")
    assert station.get("/api/v1/hosts").json() == []
    # the same form, corrected
    form.locator("input[name=users]").fill("alice")
    form.locator("button[type=submit]").click()
    expect(op.locator("#enrolled-token code")).to_be_visible()
    row = op.locator("tr[data-host='host-t']")
    expect(row.locator("[data-user]")).to_have_text(["user alice"])
    expect(row.locator("[data-group]")).to_have_text(["group tenant-a"])
    (h,) = station.get("/api/v1/hosts").json()
    assert (h["users"], h["groups"]) == (["alice"], ["tenant-a"])
    # a viewer sees who may use it, and no form or button
    viewer = sign_in(browser.new_context(), station, "vera", PASSWORD, page="hosts")
    vrow = viewer.locator("tr[data-host='host-t']")
    expect(vrow.locator("td.users")).to_have_text("user alicegroup tenant-a")
    expect(viewer.locator("#enrol-form")).to_be_hidden()
    assert actions(viewer) == 0
