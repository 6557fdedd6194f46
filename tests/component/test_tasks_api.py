"""Tasks and the event stream over the real station process (loopback, SQLite file), with the real
UnitAgent protocol loop and its Wiper zeroing files slowly enough to be watched: every change is a
task, two wipes run at once with their progress in `GET /api/v1/events`, a second task on a busy
volume is refused with a clear message, and a station killed mid-task marks it interrupted."""

import mmap
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from dvsan_lab.events import Stream
from tests.component.test_host_agent import enrol_host
from tests.component.test_station_autoconf import MiB, online, request, volumes, wait_for
from tests.component.test_wipe_release import unit_with_files, vol, zeros
from unit_agent.wipe import Wiper

IQN_C = "iqn.2026-11.org.dvsan.lab:host-c"


class SlowWiper(Wiper):
    """Writes zeros 1 MiB at a time with a pause after each (`pause`), and not at all while
    `gate` is clear: a wipe long enough to watch, and one that can be held."""

    pause = 0.2

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.gate = threading.Event()
        self.gate.set()

    def _write(self, job: Any, fd: int) -> None:
        with mmap.mmap(-1, MiB) as zero:      # page-aligned, as O_DIRECT wants
            while job.done_bytes < job.order.total_bytes and not job.cancel.is_set():
                if not self.gate.wait(0.1):
                    continue
                assert job.order.total_bytes - job.done_bytes >= MiB
                os.pwrite(fd, zero, job.done_bytes)
                job.done_bytes += MiB
                time.sleep(self.pause)


def slow_unit(station: Any, root: Path, fill: bool = True) -> Any:
    u = unit_with_files(station, root, fill)
    w = u.agent.wiper
    u.agent.wiper = SlowWiper(w.unit, w.devices, sink=w.sink, pool=w.pool, path_of=w.path_of,
                              sysfs_root=w.sysfs_root)
    return u


def user_token(station: Any, tmp_path: Path, name: str, role: str) -> dict[str, str]:
    pw = tmp_path / f"{name}.pw"
    pw.write_text("a-long-enough-password\n")
    pw.chmod(0o600)
    for cmd in (("create-user", name, "--role", role, "--password-file", str(pw)),
                ("create-token", name, "--token-file", str(tmp_path / f"{name}.token"))):
        r = station.admin_command(*cmd)
        assert r.returncode == 0, r.stdout + r.stderr
    return {"Authorization": f"Bearer {(tmp_path / f'{name}.token').read_text().strip()}"}


def test_gp_a_request_is_a_task_answered_202_then_followed_to_its_assignment(station, tmp_path):
    u = unit_with_files(station, tmp_path / "disks")
    try:
        u.start()
        online(station, 3)
        body = {"host": "host-b", "initiator_iqn": "iqn.2026-11.org.dvsan.lab:host-b",
                "host_address": "127.0.0.2", "size": "10MiB"}
        r = httpx.post(station.url + "/api/v1/assignments", headers=station.auth, json=body, timeout=30)
        assert r.status_code == 202, r.text
        task = r.json()
        assert r.headers["location"] == f"/api/v1/tasks/{task['id']}"
        assert (task["kind"], task["object"], task["requested_by"], task["host"]) == (
            "assign", "/hosts/host-b", "user:admin", "host-b")
        done = httpx.get(f"{station.url}/api/v1/tasks/{task['id']}?wait=30", headers=station.auth, timeout=60).json()
        assert done["state"] == "succeeded" and done["step"] == done["total_steps"] == 2, done
        aid = done["result"]["assignment"]
        a = httpx.get(f"{station.url}/api/v1/assignments/{aid}", headers=station.auth, timeout=10).json()
        assert a["device"] == done["result"]["device"] == "vdz2"
        # with ?wait: the operation's own answer, and the task that made it
        w = request(station, 5 * MiB)
        assert w.status_code == 201 and w.headers["dvsan-task"].isdigit()
        # a request nothing fits: the task fails, ?wait answers its error
        big = request(station, 900 * MiB)
        assert big.status_code == 409 and "no free volume" in big.json()["detail"]
        failed = httpx.get(f"{station.url}/api/v1/tasks?state=failed", headers=station.auth, timeout=10).json()
        assert [t["error_kind"] for t in failed] == ["InsufficientCapacity"]
        kinds = httpx.get(f"{station.url}/api/v1/tasks?kind=assign&host=host-b", headers=station.auth, timeout=10).json()
        assert [t["state"] for t in kinds] == ["failed", "succeeded", "succeeded"]
        # a release, then its wipe task, in the list
        rel = httpx.delete(f"{station.url}/api/v1/assignments/{aid}?wait=30", headers=station.auth, timeout=60).json()
        assert rel["wipe_task"] is not None
        wipe = httpx.get(f"{station.url}/api/v1/tasks/{rel['wipe_task']}?wait=30", headers=station.auth, timeout=60).json()
        assert (wipe["kind"], wipe["object"], wipe["state"]) == ("wipe", f"/volumes/{a['volume_id']}", "succeeded")
        assert wipe["step"] == wipe["total_steps"] == 16 * MiB
    finally:
        u.close()


def test_ep_bad_task_calls_are_refused_clearly(station, tmp_path):
    enrol_host(station, tmp_path, "host-c", IQN_C)
    h = {"Authorization": f"Bearer {(tmp_path / 'host-c.token').read_text().strip()}"}
    u = unit_with_files(station, tmp_path / "disks")
    try:
        u.start()
        online(station, 3)
        t = httpx.post(station.url + "/api/v1/assignments", headers=station.auth, timeout=30, json={
            "host": "host-b", "initiator_iqn": "iqn.2026-11.org.dvsan.lab:host-b",
            "host_address": "127.0.0.2", "size": "10MiB"}).json()
        for q in ("wait=-1", "wait=abc", "wait=99999"):
            r = httpx.post(f"{station.url}/api/v1/assignments?{q}", headers=station.auth, timeout=10, json={})
            assert r.status_code == 422, (q, r.text)
        assert httpx.get(f"{station.url}/api/v1/tasks/999999", headers=station.auth, timeout=10).status_code == 404
        assert httpx.get(f"{station.url}/api/v1/tasks/0", headers=station.auth, timeout=10).status_code == 422
        assert httpx.get(f"{station.url}/api/v1/tasks?state=bogus", headers=station.auth, timeout=10).status_code == 422
        assert httpx.get(f"{station.url}/api/v1/tasks", timeout=10).status_code == 401
        assert httpx.get(f"{station.url}/api/v1/events", timeout=10).status_code == 401
        # a host sees nothing of another host's tasks, not even that they exist
        assert httpx.get(f"{station.url}/api/v1/tasks/{t['id']}", headers=h, timeout=10).status_code == 404
        assert httpx.get(f"{station.url}/api/v1/tasks", headers=h, timeout=10).json() == []
        assert httpx.post(f"{station.url}/api/v1/tasks/{t['id']}/cancel", headers=h, timeout=10).status_code == 404
        httpx.get(f"{station.url}/api/v1/tasks/{t['id']}?wait=30", headers=station.auth, timeout=60)
        r = httpx.post(f"{station.url}/api/v1/tasks/{t['id']}/cancel", headers=station.auth, timeout=10)
        assert r.status_code == 409 and "already ended (succeeded)" in r.json()["detail"]
    finally:
        u.close()


def test_gp_two_wipes_run_at_once_with_progress_in_the_stream_and_a_second_task_is_refused(station, tmp_path):
    disks = tmp_path / "disks"
    u = slow_unit(station, disks)
    viewer = user_token(station, tmp_path, "vera", "viewer")
    enrol_host(station, tmp_path, "host-c", IQN_C)
    host_c = {"Authorization": f"Bearer {(tmp_path / 'host-c.token').read_text().strip()}"}
    try:
        u.start()
        online(station, 3)
        a = request(station, 12 * MiB).json()     # vdz2, 16 MiB
        b = request(station, 20 * MiB).json()     # vdz3, 32 MiB
        seen, hidden = Stream(station, viewer), Stream(station, host_c)
        assert seen.status == hidden.status == 200
        out: list[Any] = []
        threads = [threading.Thread(target=lambda x=x: out.append(httpx.delete(
            f"{station.url}/api/v1/assignments/{x['id']}?wait=30", headers=station.auth, timeout=60).json()))
            for x in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wipe_ids = sorted(r["wipe_task"] for r in out)
        assert len(wipe_ids) == 2 and None not in wipe_ids, out
        # while both run: a second task on the volume is refused, naming the one that holds it
        busy = httpx.post(f"{station.url}/api/v1/volumes/{a['volume_id']}/wipe", headers=station.auth, timeout=10)
        assert busy.status_code == 409, busy.text
        assert f"/volumes/{a['volume_id']} is busy: task" in busy.json()["detail"]
        for w in wipe_ids:
            done = httpx.get(f"{station.url}/api/v1/tasks/{w}?wait=60", headers=station.auth, timeout=90).json()
            assert done["state"] == "succeeded", done
        wait_for(lambda: len(seen.tasks(kind="wipe", state="succeeded")) == 2, 10)
        # both visible with progress, and running at the same time
        running: set[int] = set()
        both = False
        for d in seen.tasks(kind="wipe"):
            (running.add if d["state"] == "running" else running.discard)(d["id"])
            both = both or running >= set(wipe_ids)
        assert both, "the two wipes never ran at the same time"
        for w in wipe_ids:
            mid = [d["step"] for d in seen.tasks(id=w, state="running") if 0 < d["step"] < d["total_steps"]]
            assert mid, f"no progress seen for wipe task {w}"
            assert mid == sorted(mid)
        assert zeros(disks / "vdz2") and zeros(disks / "vdz3")
        # the stream of host-c saw none of it (host-b's storage, the station's wipes)
        assert hidden.tasks() == []
        seen.close()
        hidden.close()
    finally:
        u.close()


def test_ep_a_station_killed_mid_wipe_marks_the_task_interrupted_and_hands_nothing_out(station, tmp_path):
    disks = tmp_path / "disks"
    u = slow_unit(station, disks)
    try:
        u.start()
        online(station, 3)
        a = request(station, 20 * MiB).json()
        u.agent.wiper.gate.clear()             # the unit starts the wipe, then stalls
        rel = httpx.delete(f"{station.url}/api/v1/assignments/{a['id']}?wait=30", headers=station.auth, timeout=60).json()
        task = httpx.get(f"{station.url}/api/v1/tasks/{rel['wipe_task']}", headers=station.auth, timeout=10).json()
        assert task["state"] in ("queued", "running"), task
        wait_for(lambda: httpx.get(f"{station.url}/api/v1/tasks/{rel['wipe_task']}", headers=station.auth,
                                   timeout=10).json()["state"] == "running")
        station.proc.send_signal(signal.SIGKILL)
        station.proc.wait(10)
        station.start()
        t = httpx.get(f"{station.url}/api/v1/tasks/{rel['wipe_task']}", headers=station.auth, timeout=10).json()
        assert t["state"] == "interrupted" and "station stopped" in t["message"], t
        assert vol(station, a["volume_id"])["wipe_state"] in ("needed", "running")
        # not handed out meanwhile: the 32 MiB volume is taken by nobody
        r = request(station, 20 * MiB, host="host-c", iqn=IQN_C)
        assert r.status_code == 409, r.text
        # the unit goes on; after its next report the wipe is followed by a new task, to the end
        u.agent.wiper.gate.set()
        wait_for(lambda: vol(station, a["volume_id"])["wipe_state"] == "clean", timeout=60)
        assert zeros(disks / "vdz3")
        assert request(station, 20 * MiB, host="host-c", iqn=IQN_C).status_code == 201
        assert all(v["wipe_state"] == "clean" for v in volumes(station) if v["assigned_to"] is None)
    finally:
        u.close()
