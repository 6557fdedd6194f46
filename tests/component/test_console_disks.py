"""The console's disks page in a real browser against the real station and a real unit agent loop
whose Partitioner runs sfdisk on an image file (the harness of tests/component/test_partition.py):
an admin initialises an empty disk with GPT and four partitions, watching the task to its end, and
the page shows the table the API answers; a partition the unit itself finds in the way is refused
in the page in the unit's own words and the table is kept; a viewer sees the table, no form."""


from pathlib import Path

from playwright.sync_api import Browser, expect

from dvsan.model import Export
from tests.component.test_console import SHOTS, actions, sign_in
from tests.component.test_console_pages import PASSWORD, make_user
from tests.component.test_partition import disks, reported, sha, unit_with_disk


def test_gp_an_admin_partitions_a_disk_from_the_page_and_ep_the_units_refusal_is_shown(
        station, tmp_path, browser: Browser):
    make_user(station, "vera", "viewer")
    u, img = unit_with_disk(station, tmp_path / "disks")
    try:
        u.start()
        reported(station)
        admin = sign_in(browser.new_context(), station, page="disks")
        box = admin.locator("section.disk[data-unit='unit-z'][data-disk='vdz']")
        expect(box).to_contain_text("no partition table")
        expect(box.locator("td.empty")).to_have_text("No partition.")
        form = box.locator("form.layout")
        form.locator("input[name=label]").check()
        form.locator("input[name=create]").fill("8MiB 8MiB 12MiB 16MiB")
        form.locator("button[type=submit]").click()
        expect(admin.locator("#notice")).to_contain_text("Partitioning of unit-z/vdz is under way: task #")
        row = admin.locator("#live-tasks .task[data-kind='partition']")
        expect(row).to_have_attribute("data-state", "succeeded", timeout=30_000)
        expect(admin.locator("#notice")).to_have_class("ok")
        # the page's table is the one the API answers (the unit's sfdisk's)
        d = disks(station).json()[0]
        assert [p["device"] for p in d["partitions"]] == ["vdz1", "vdz2", "vdz3", "vdz4"]
        rows = box.locator("tr[data-partition]")
        expect(rows).to_have_count(4)
        for i, p in enumerate(d["partitions"]):
            cells = rows.nth(i).locator("td")
            expect(cells.nth(1)).to_have_text(p["device"])
            expect(cells.nth(2)).to_have_text(str(p["start_lba"]))
            expect(cells.nth(3)).to_have_text(str(p["end_lba"]))
        expect(rows.nth(3).locator("td").nth(4)).to_have_text("16.0 MiB")
        expect(box).to_contain_text("gpt label")

        # the unit's LIO exports vdz2 behind the station's back: the page (and the station's view)
        # still offers to delete it; the unit looks at the moment of the change and refuses
        with u.lio._lock:
            u.lio._exports["vdz2"] = Export("vdz2", "iqn.2026-12.org.dvsan.test:sneaky")
        before = sha(img)
        box.locator("tr[data-partition='2'] input[name=delete]").check()
        box.locator("tr[data-partition='3'] input[name=delete]").check()
        form.locator("button[type=submit]").click()
        notice = admin.locator("#notice")
        expect(notice).to_have_class("error", timeout=30_000)
        expect(notice).to_contain_text("vdz2 is exported by LIO as iqn.2026-12.org.dvsan.test:sneaky")
        assert sha(img) == before
        assert [p["device"] for p in disks(station).json()[0]["partitions"]] == ["vdz1", "vdz2", "vdz3", "vdz4"]
        expect(box.locator("tr[data-partition]")).to_have_count(4)
        admin.screenshot(path=str((Path(SHOTS) if SHOTS else tmp_path) / "console-disks.png"), full_page=True)

        # a bad size is refused in the page before anything is sent
        form.locator("input[name=create]").fill("lots")
        form.locator("button[type=submit]").click()
        expect(notice).to_have_text('"lots" is not a size (e.g. 8MiB, 1GiB)')

        # a viewer sees the table and is offered nothing
        viewer = sign_in(browser.new_context(), station, "vera", PASSWORD, page="disks")
        vbox = viewer.locator("section.disk[data-disk='vdz']")
        expect(vbox.locator("tr[data-partition]")).to_have_count(4)
        expect(vbox.locator("form, input[type=checkbox]")).to_have_count(0)
        assert actions(viewer) == 0
    finally:
        u.close()


