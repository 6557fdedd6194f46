"""dvsan-shell against the real station process (loopback, SQLite file) and a unit agent on
in-memory LIO: login and its 0600 token file, one-shot commands and their exit codes (also from a
bash script), the interactive shell driven on a pseudo-terminal (pexpect): navigate, TAB
completion, assign and release, a refusal shown. Bad input side by side with the good paths."""

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pexpect
import pytest

from tests.component.conftest import free_port
from tests.component.test_station_autoconf import online
from tests.component.test_tasks_api import slow_unit
from tests.component.test_tls import self_signed, tls_station  # noqa: F401 - a fixture
from tests.component.test_wipe_release import unit_with_files

# the test unit sends no heartbeats, and a shell test runs many processes on a loaded machine
pytestmark = pytest.mark.station_args("--liveness-timeout", "600")
SHELL = str(Path(sys.executable).parent / "dvsan-shell")
IQN_B = "iqn.2026-11.org.dvsan.lab:host-b"
PROMPT = re.compile(r"dvsan:(/[^>]*)> ")


def shell_env(tmp_path: Path, name: str = "shell") -> dict[str, str]:
    return {**os.environ, "DVSAN_SHELL_CONFIG": str(tmp_path / f"{name}.json"), "TERM": "dumb",
            "HOME": str(tmp_path), "COLUMNS": "120"}


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SHELL, *args], check=False, env=env, capture_output=True, text=True, timeout=90,
                          input=stdin if stdin is not None else "")


def login(station: Any, env: dict[str, str], user: str = "admin", pw: Path | None = None,
          *extra: str) -> subprocess.CompletedProcess[str]:
    return run(env, "login", "--station", station.url, "--user", user, "--password-file",
               str(pw or station.data_dir / "admin.password"), *extra)


@pytest.fixture
def pool(station: Any, tmp_path: Path) -> Iterator[list[dict[str, Any]]]:
    """A unit (in-memory LIO, file-backed partitions) whose three volumes are online."""
    u = unit_with_files(station, tmp_path / "disks")
    try:
        u.start()
        yield online(station, 3)
    finally:
        u.close()


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    """The error a failed command printed: exactly one line on stderr, never a traceback."""
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("dvsan-shell:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_gp_login_keeps_a_0600_token_and_one_shot_commands_answer_text_and_json(station, pool, tmp_path):
    env = shell_env(tmp_path)
    vols = pool
    r = login(station, env)
    assert r.returncode == 0 and "logged in to" in r.stdout, r.stderr
    cfg = tmp_path / "shell.json"
    assert cfg.stat().st_mode & 0o777 == 0o600
    assert json.loads(cfg.read_text())["user"] == "admin"
    r = run(env, "/units", "ls")
    assert r.returncode == 0 and "o- unit-z ." in r.stdout and "[online 127.0.0.1:3260]" in r.stdout
    r = run(env, "/volumes", "ls", "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(v["id"] for v in json.loads(r.stdout)) == sorted(v["id"] for v in vols)
    vid = vols[1]["id"]
    r = run(env, "--json", f"/volumes/{vid}", "info")
    assert json.loads(r.stdout) == station.get("/api/v1/volumes").json()[1]
    r = run(env, f"/volumes/{vid}", "info")
    assert re.search(r"^device +vdz2$", r.stdout, re.MULTILINE) and "16.0 MiB (16777216 bytes)" in r.stdout
    # disks: the station has no disks route yet: the unit's volumes grouped by their disk
    r = run(env, "ls", "/units/unit-z/disks", "2")
    assert r.returncode == 0 and "o- vdz ." in r.stdout and "3 volumes (3 free)" in r.stdout
    assert "o- vdz3 ." in r.stdout
    r = run(env, "/units/unit-z/disks/vdz/vdz1", "info", "--json")
    assert json.loads(r.stdout)["device"] == "vdz1"
    # commands from a pipe: a script of lines, from the top of the tree
    r = run(env, stdin="# a comment\ncd /units\nls\n/volumes info\n")
    assert r.returncode == 0 and "o- units" in r.stdout and f"{vid}: unit-z vdz2" in r.stdout
    r = run(env, "help")
    assert "dvsan-shell: the admin shell" in r.stdout and "ls" in r.stdout
    r = run(env, "info", "--json")
    assert json.loads(r.stdout) | {"user": "admin", "station": station.url, "status": "ok"} == json.loads(r.stdout)


def test_gp_the_interactive_shell_navigates_completes_assigns_refuses_and_releases(station, pool, tmp_path):
    env = shell_env(tmp_path)
    assert login(station, env).returncode == 0
    c = pexpect.spawn(SHELL, env=env, encoding="utf-8", timeout=30, dimensions=(50, 120))
    c.logfile_read = open(tmp_path / "pty.log", "w")  # noqa: SIM115 - read when a step fails
    c.expect_exact("`help` for commands")
    c.expect(PROMPT)
    # navigate with TAB completion
    c.send("cd /vol\t")
    c.expect_exact("cd /volumes/")
    c.send("\r")
    c.expect(PROMPT)
    assert c.match.group(1) == "/volumes"
    c.sendline("ls")
    c.expect_exact("[3 volumes, 56.0 MiB, 3 free]")
    c.expect(PROMPT)
    c.sendline("cd ../units/unit-z/disks/vdz")
    c.expect(PROMPT)
    assert c.match.group(1) == "/units/unit-z/disks/vdz"
    c.sendline("ls")
    c.expect_exact("o- vdz2 .")
    c.expect(PROMPT)
    c.sendline("cd")                              # alone: to the top
    c.expect(PROMPT)
    assert c.match.group(1) == "/"
    c.sendline(f"/hosts enroll host-b {IQN_B} token_file={tmp_path / 'host-b.token'}")
    c.expect_exact("host host-b enrolled")
    c.expect(PROMPT)
    # TAB completes the host's path, the command and its parameter's name
    c.send("/hosts/ho\t")
    c.expect_exact("/hosts/host-b/")
    c.send("\x15")                                # Ctrl-U: clear the line
    c.send("/hosts/host-b ass\t")
    c.expect_exact("assign ")
    c.send("si\t")
    c.expect_exact("size=")
    c.send("10MiB address=127.0.0.2\r")
    c.expect(r"assigning 10MiB to host-b: task \d+")
    c.expect(r"assigned volume (\d+) \(unit-z vdz2, 16.0 MiB\) to host-b as assignment (\d+)")
    vid, aid = c.match.group(1), c.match.group(2)
    c.expect(PROMPT)
    # a refusal is shown, and the shell goes on
    c.sendline("/hosts/host-b assign 900MiB")
    c.expect_exact("error: task")
    c.expect_exact("no free volume of at least 900.0 MiB: the largest free volume is 32.0 MiB")
    c.expect(PROMPT)
    c.sendline("ls /volumes")
    c.expect_exact(f"o- {vid} ")
    c.expect_exact("assigned to host-b]")
    c.expect(PROMPT)
    # release by TAB-completed id
    c.send("cd /hosts/host-b/assignments\r")
    c.expect(PROMPT)
    c.send("release \t\t")                      # two TABs: the choices (ids, and the keyword)
    c.expect(rf"\n{aid} +assignment=")
    c.expect_exact("release ")
    c.send(f"{aid}\r")
    c.expect(rf"released assignment {aid}: volume {vid} on unit-z; the unit is zeroing it \(task (\d+)")
    wipe = c.match.group(1)
    c.expect(PROMPT)
    c.sendline(f"/tasks/{wipe} wait")
    c.expect_exact(f"task {wipe} wipe /volumes/{vid}: succeeded")
    c.expect(PROMPT)
    c.sendline("ls")
    c.expect_exact("o- assignments ")
    c.expect_exact("[0 assignments]")
    c.expect(PROMPT)
    c.sendline("exit")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0
    assert station.get("/api/v1/assignments?host=host-b").json() == []
    assert (tmp_path / "host-b.token").stat().st_mode & 0o777 == 0o600


def test_gp_one_shot_mode_in_a_bash_script_gives_each_outcome_its_exit_code(station, pool, tmp_path):
    env = shell_env(tmp_path)
    assert login(station, env).returncode == 0
    assert run(env, "/hosts", "enroll", "host-b", IQN_B).returncode == 0
    script = tmp_path / "ops.sh"
    script.write_text(f"""set -u
cd {tmp_path}
dvsan-shell /units ls > units.txt; echo "units=$?"
dvsan-shell /hosts/host-b assign 10MiB address=127.0.0.2 --json > a.json; echo "assign=$?"
dvsan-shell /hosts/host-b assign 900MiB 2>> err.txt; echo "too_large=$?"
dvsan-shell /volumes/999 info 2>> err.txt; echo "no_path=$?"
dvsan-shell /hosts/host-b assign ten-gigs 2>> err.txt; echo "bad_size=$?"
dvsan-shell --frobnicate /units ls 2>> err.txt; echo "bad_flag=$?"
dvsan-shell /units ls --jsn 2>> err.txt; echo "bad_word=$?"
id=$(python3 -c 'import json; print(json.load(open("a.json"))["id"])')
if dvsan-shell /hosts/host-b/assignments/$id release > rel.txt; then echo "release=0"; else echo "release=$?"; fi
""")
    r = subprocess.run(["bash", str(script)], check=False, env={**env, "PATH": f"{Path(SHELL).parent}:{env['PATH']}"},
                       capture_output=True, text=True, timeout=300)
    codes = dict(line.split("=") for line in r.stdout.split())
    assert codes == {"units": "0", "assign": "0", "too_large": "1", "no_path": "2", "bad_size": "2",
                     "bad_flag": "2", "bad_word": "2", "release": "0"}, (r.stdout, r.stderr)
    assert "unit-z" in (tmp_path / "units.txt").read_text()
    assert json.loads((tmp_path / "a.json").read_text())["host"] == "host-b"
    assert "released assignment" in (tmp_path / "rel.txt").read_text()
    err = (tmp_path / "err.txt").read_text()
    assert "Traceback" not in err
    assert "no free volume of at least 900.0 MiB" in err
    assert "no such path /volumes/999" in err
    assert "not a size: 'ten-gigs'" in err
    assert "unrecognized arguments: --frobnicate" in err
    assert "unrecognized arguments: --jsn" in err
    # the refused size never reached the station: one assign task failed (900MiB), no other
    failed = station.get("/api/v1/tasks?kind=assign&state=failed").json()
    assert len(failed) == 1 and failed[0]["error_kind"] == "InsufficientCapacity"


def test_ep_logins_and_token_files_that_cannot_be_used_are_refused_clearly(station, tmp_path):
    env = shell_env(tmp_path)
    cfg = tmp_path / "shell.json"
    # no login yet
    r = run(env, "/units", "ls")
    assert r.returncode == 4 and "not logged in" in one_line_error(r)
    # a wrong password: refused, nothing written
    bad = tmp_path / "bad.pw"
    bad.write_text("not-the-password-at-all\n")
    bad.chmod(0o600)
    r = login(station, env, "admin", bad)
    assert r.returncode == 4 and "login refused" in one_line_error(r) and not cfg.exists()
    # a password file others may read is refused before anything is sent
    loose = tmp_path / "loose.pw"
    loose.write_text("test-admin-password-0\n")
    loose.chmod(0o644)
    r = login(station, env, "admin", loose)
    assert r.returncode == 2 and "accessible by group or others" in one_line_error(r)
    # no station there: one line, exit 3
    dead = f"http://127.0.0.1:{free_port()}"
    r = run(env, "login", "--station", dead, "--user", "admin", "--password-file",
            str(station.data_dir / "admin.password"))
    assert r.returncode == 3 and f"cannot reach the station at {dead}" in one_line_error(r)
    r = run(env, "login", "--station", "station:7480", "--user", "admin")
    assert r.returncode == 2 and "give a URL" in one_line_error(r)
    # the good path
    assert login(station, env).returncode == 0
    assert run(env, "/units", "ls").returncode == 0
    good = cfg.read_text()
    # a login file others may read: refused, not used
    cfg.chmod(0o644)
    r = run(env, "/units", "ls")
    assert r.returncode == 4 and "refusing to use it" in one_line_error(r) and "mode 0644" in r.stderr
    cfg.chmod(0o600)
    assert run(env, "/units", "ls").returncode == 0
    # expired (judged locally), then a token the station does not know (judged by the station)
    data = json.loads(good)
    cfg.write_text(json.dumps({**data, "expires_at": "2001-01-01T00:00:00Z"}))
    r = run(env, "/units", "ls")
    assert r.returncode == 4 and "expired at 2001-01-01" in one_line_error(r)
    cfg.write_text(json.dumps({**data, "token": "dvsan_" + "x" * 40}))
    r = run(env, "/units", "ls")
    assert r.returncode == 4 and "refused the stored token" in one_line_error(r)
    assert "dvsan-shell login" in r.stderr
    cfg.write_text("{not json")
    r = run(env, "/units", "ls")
    assert r.returncode == 4 and "not a dvsan-shell login file" in one_line_error(r)
    # a station that went away: one line, exit 3, within the timeout
    cfg.write_text(json.dumps({**data, "station": dead}))
    r = run(env, "--timeout", "2", "/units", "ls")
    assert r.returncode == 3 and "cannot reach the station" in one_line_error(r)
    r = run(env, "--timeout", "-1", "/units", "ls")
    assert r.returncode == 2 and "seconds between 0 and 86400" in r.stderr
    # logout revokes the token at the station, then forgets it
    cfg.write_text(good)
    token = data["token"]
    assert httpx.get(station.url + "/api/v1/units", headers={"Authorization": f"Bearer {token}"},
                     timeout=10).status_code == 200
    r = run(env, "logout")
    assert r.returncode == 0 and not cfg.exists()
    assert httpx.get(station.url + "/api/v1/units", headers={"Authorization": f"Bearer {token}"},
                     timeout=10).status_code == 401


def test_ep_refusals_of_the_station_are_shown_as_it_words_them_beside_the_same_command_allowed(station, pool, tmp_path):
    admin = shell_env(tmp_path, "admin")
    viewer = shell_env(tmp_path, "vera")
    vols = pool
    vid = vols[0]["id"]
    assert login(station, admin).returncode == 0
    pw = tmp_path / "vera.pw"
    pw.write_text("vera-is-a-viewer-0\n")
    pw.chmod(0o600)
    r = run(admin, "/users", "create", "vera", "viewer", f"password_file={pw}")
    assert r.returncode == 0 and "user vera created (viewer)" in r.stdout, r.stderr
    r = run(admin, "/users", "create", "walt", "superuser", f"password_file={pw}")
    assert r.returncode == 2 and "one of admin, operator, viewer" in one_line_error(r)
    assert login(station, viewer, "vera", pw).returncode == 0
    # a viewer reads, and is refused writes with the permission named
    assert run(viewer, "/volumes", "ls").returncode == 0
    r = run(viewer, f"/volumes/{vid}", "wipe")
    assert r.returncode == 1
    assert "refused (403 Forbidden): user 'vera' (role viewer) lacks the permission 'volumes.wipe' " \
           f"on /volumes/{vid}" in one_line_error(r)
    r = run(viewer, "ls", "/users")
    assert r.returncode == 1 and "lacks the permission 'users.admin'" in one_line_error(r)
    # granted operator on the unit: the same wipe now passes the guard, and the station's
    # next reason shows (the volume is clean)
    r = run(admin, "/users/vera", "grant", "operator", "/units/unit-z")
    assert r.returncode == 0 and "vera is operator on /units/unit-z and under it" in r.stdout
    r = run(viewer, f"/volumes/{vid}", "wipe")
    assert r.returncode == 1 and f"refused (409 Conflict): volume {vid} is clean" in one_line_error(r)
    r = run(admin, "/users/vera", "grants", "--json")
    grant = json.loads(r.stdout)[0]
    assert (grant["role"], grant["object"]) == ("operator", "/units/unit-z")
    r = run(admin, "/users/vera", "grant", "operator", "/nowhere/x")
    assert r.returncode == 1 and "(422)" in one_line_error(r) and "object" in r.stderr
    r = run(admin, "/users/vera", "ungrant", str(grant["id"]))
    assert r.returncode == 0 and "taken back" in r.stdout
    assert run(viewer, f"/volumes/{vid}", "wipe").returncode == 1
    assert "volumes.wipe" in run(viewer, f"/volumes/{vid}", "wipe").stderr
    # partitioning: a bad layout is refused before anything is sent
    r = run(admin, "/units/unit-z/disks/vdz", "partition", "create=lots")
    assert r.returncode == 2 and "not a size: 'lots'" in one_line_error(r)
    r = run(admin, "/units/unit-z/disks/vdz", "partition")
    assert r.returncode == 2 and "nothing to change" in one_line_error(r)
    # enrolment never overwrites a token file
    existing = tmp_path / "kept.token"
    existing.write_text("keep me\n")
    r = run(admin, "/hosts", "enroll", "host-c", "iqn.2026-11.org.dvsan.lab:host-c",
            f"token_file={existing}")
    assert r.returncode == 2 and "never overwritten" in one_line_error(r)
    assert existing.read_text() == "keep me\n"
    assert run(admin, "/hosts", "ls", "--json").stdout.strip() == "[]"
    r = run(admin, "/hosts", "enroll", "host-b", IQN_B)
    assert r.returncode == 0 and "shown this once" in r.stdout
    r = run(admin, "/hosts/host-b", "assign", "size=1MiB")
    assert r.returncode == 2 and "give address=IP" in one_line_error(r)
    r = run(admin, "/hosts/host-b", "assign", "1MiB", "volume=1")
    assert r.returncode == 2 and "either a SIZE" in one_line_error(r)
    r = run(admin, f"/volumes/{vid}", "assign", "host-b", "address=127.0.0.2", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["volume_id"] == vid, r.stderr
    # a task that already ended cannot be cancelled: the station's 409
    task = station.get("/api/v1/tasks?kind=assign").json()[0]["id"]
    r = run(admin, f"/tasks/{task}", "cancel")
    assert r.returncode == 1 and "already ended (succeeded)" in one_line_error(r)
    r = run(admin, f"/volumes/{vid}", "assign", "host-b")
    assert r.returncode == 1 and "(409" in one_line_error(r)


def test_ep_an_interactive_shell_survives_a_station_that_goes_away(station, tmp_path):
    env = shell_env(tmp_path)
    assert login(station, env).returncode == 0
    c = pexpect.spawn(SHELL, ["--timeout", "3"], env=env, encoding="utf-8", timeout=30, dimensions=(50, 120))
    c.logfile_read = open(tmp_path / "pty.log", "w")  # noqa: SIM115 - read at the end
    c.expect(PROMPT)
    c.sendline("ls /units")
    c.expect_exact("[0 units]")
    c.expect(PROMPT)
    station.stop()
    c.sendline("ls /units")
    c.expect_exact(f"error: cannot reach the station at {station.url}")
    c.expect(PROMPT)                                  # still there
    c.sendline("/volumes/1 info")
    c.expect_exact("error: cannot reach the station")
    c.expect(PROMPT)
    station.start()
    c.sendline("ls /units")
    c.expect_exact("[0 units]")
    c.expect(PROMPT)
    c.sendeof()
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0
    assert "Traceback" not in (tmp_path / "pty.log").read_text()


def test_gp_over_tls_the_ca_file_given_at_login_is_kept_and_an_unknown_ca_is_refused(tls_station, tmp_path):  # noqa: F811
    st = tls_station
    env = shell_env(tmp_path)
    # without the CA: the certificate is not trusted; one line, exit 3, a hint, nothing written
    r = login(st, env)
    assert r.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in one_line_error(r)
    assert "give the station's CA with --ca-file" in r.stderr and not (tmp_path / "shell.json").exists()
    r = login(st, env, "admin", None, "--ca-file", str(tmp_path / "nowhere.pem"))
    assert r.returncode == 2 and "--ca-file" in one_line_error(r)
    # with it: logged in, and the CA is kept for the next runs
    r = login(st, env, "admin", None, "--ca-file", str(st.ca_file))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "shell.json").read_text())["ca_file"] == str(st.ca_file)
    r = run(env, "/units", "ls", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stderr
    # a CA that did not sign the station's certificate, given for one run: refused
    other, _ = self_signed(tmp_path, "other")
    r = run(env, "--ca-file", str(other), "/units", "ls")
    assert r.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in one_line_error(r)


def test_gp_a_long_task_shows_its_progress_and_ctrl_c_stops_watching_not_the_task(station, tmp_path):
    env = shell_env(tmp_path)
    u = slow_unit(station, tmp_path / "disks")
    try:
        u.start()
        online(station, 3)
        assert login(station, env).returncode == 0
        assert run(env, "/hosts", "enroll", "host-b", IQN_B).returncode == 0
        r = run(env, "/hosts/host-b", "assign", "10MiB", "address=127.0.0.2", "--json")
        assert r.returncode == 0, r.stderr
        aid = json.loads(r.stdout)["id"]
        u.agent.wiper.gate.clear()                    # the unit starts the wipe, then stalls
        c = pexpect.spawn(SHELL, env=env, encoding="utf-8", timeout=30, dimensions=(50, 120))
        c.logfile_read = open(tmp_path / "pty.log", "w")  # noqa: SIM115 - read at the end
        c.expect(PROMPT)
        c.sendline(f"/hosts/host-b/assignments/{aid} release")
        c.expect(r"the unit is zeroing it \(task (\d+)")
        wipe = c.match.group(1)
        c.expect(PROMPT)
        c.sendline(f"/tasks/{wipe} wait")
        c.expect(rf"task {wipe} wipe /volumes/\d+: running \d+% \(\S+ \S+ of 16.0 MiB\)")
        c.sendintr()                                  # Ctrl-C: stop watching
        c.expect_exact(f"stopped watching task {wipe}; it goes on at the station")
        c.expect(PROMPT)
        assert station.get(f"/api/v1/tasks/{wipe}").json()["state"] == "running"
        u.agent.wiper.gate.set()
        c.sendline(f"/tasks/{wipe} wait")
        c.expect_exact(f"task {wipe} wipe /volumes/")
        c.expect_exact(": succeeded")
        c.expect(PROMPT)
        c.sendline("exit")
        c.expect(pexpect.EOF)
    finally:
        u.close()


def test_gp_partition_from_the_shell_an_empty_disk_gets_four_partitions(station, tmp_path):
    """Needs the station's disks and layout routes and the unit's partitioner (the partitioning
    work of issue 7): skipped on a tree without them."""
    part = pytest.importorskip("tests.component.test_partition")
    env = shell_env(tmp_path)
    u, _img = part.unit_with_disk(station, tmp_path / "disks")
    try:
        u.start()
        part.reported(station)
        assert login(station, env).returncode == 0
        r = run(env, "ls", "/units/unit-z/disks")
        assert r.returncode == 0 and "o- vdz ." in r.stdout and "no partition table, 64.0 MiB, 0 partitions" in r.stdout
        r = run(env, "/units/unit-z/disks/vdz", "partition", "label=gpt", "create=8MiB,8MiB,12MiB,16MiB:dvsan-4")
        assert r.returncode == 0, r.stderr
        assert "unit-z vdz: the new partition table is applied" in r.stdout
        assert re.search(r"partitioning unit-z vdz: task \d+", r.stderr)
        r = run(env, "ls", "/units/unit-z/disks/vdz")
        assert r.returncode == 0 and "[gpt, 64.0 MiB, 4 partitions, 4 volumes (4 free)" in r.stdout, r.stdout
        assert "o- vdz4 ." in r.stdout
        got = {p["device"]: p["name"] for p in station.get("/api/v1/units/unit-z/disks").json()[0]["partitions"]}
        assert got == {"vdz1": "", "vdz2": "", "vdz3": "", "vdz4": "dvsan-4"}
        # the unit refuses a change it cannot make, and the shell shows its reason
        r = run(env, "/volumes/1", "assign", "host-b", f"initiator={IQN_B}", "address=127.0.0.2")
        assert r.returncode == 0, r.stderr
        r = run(env, "/units/unit-z/disks/vdz", "partition", "delete=1")
        assert r.returncode == 1 and "vdz1" in one_line_error(r), r.stderr
    finally:
        u.close()
