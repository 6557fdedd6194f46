"""The end-to-end flow on a booted lab: a real station on the bridge, agents in guests, host I/O.

Shared by `dvsan-lab demo` (prints what happened and the timings) and tests/lab/test_e2e.py
(asserts each step). Nothing here talks to anything but the lab's own addresses.
"""

import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dvsan_lab.errors import LabError

API_PORT = 7480
UDP_PORT = 7479
UNIT_PORT = 7478


def wait_for(pred: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `pred` until it returns something truthy; raise LabError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except (httpx.HTTPError, LabError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise LabError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@dataclass
class Station:
    """A real `dvsan-station` process on the machine, bound to the lab bridge address."""

    repo: Path
    data_dir: Path
    host: str
    proc: subprocess.Popen[bytes] | None = None
    args: tuple[str, ...] = ()
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir / "station.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{API_PORT}"

    @property
    def pool_key(self) -> str:
        """A name for this station's pool, unique per data directory (units pin one pool per state
        directory: a lab reused across runs must not meet an earlier run's pin)."""
        return f"{self.data_dir.name}-{hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:8]}"

    @property
    def key_file(self) -> Path:
        return self.data_dir / "cluster.key"

    @property
    def token(self) -> str:
        """The lab admin's API token (made by bootstrap() before the station first starts)."""
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def bootstrap(self) -> None:
        """The first admin and its token, as an operator makes them: `dvsan-station create-user`
        and `create-token` on the station's data directory (no REST call works before)."""
        exe = Path(sys.executable).with_name("dvsan-station")
        pw = self.data_dir / "admin.password"
        if not pw.exists():
            fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, (secrets.token_urlsafe(18) + "\n").encode())
            os.close(fd)
        for cmd in (["create-user", "admin", "--role", "admin", "--password-file", str(pw)],
                    ["create-token", "admin", "--token-file", str(self.data_dir / "admin.token"),
                     "--label", "lab"]):
            r = subprocess.run([str(exe), "--data-dir", str(self.data_dir), "--log-level", "warning", *cmd],
                               capture_output=True, text=True, timeout=120, check=False)
            if r.returncode != 0:
                raise LabError(f"dvsan-station {cmd[0]} failed: {r.stdout}{r.stderr}")

    def start(self) -> float:
        """Start the station and wait for /healthz; returns seconds taken."""
        t0 = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "admin.token").exists():
            self.bootstrap()
        exe = Path(sys.executable).with_name("dvsan-station")
        # NOTE: a station left by an earlier run that was killed (or a fixture that failed before
        # its teardown) would hold the lab's fixed ports: the lab's address is ours, so stop it.
        stray = subprocess.run(["pgrep", "-f", f"{exe} .*--api-host {self.host} "], capture_output=True,
                               text=True, check=False).stdout.split()
        for pid in stray:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        if stray:
            wait_for(lambda: not subprocess.run(["pgrep", "-f", f"{exe} .*--api-host {self.host} "],
                                                capture_output=True, check=False).stdout, 15,
                     "a stray station of an earlier run to exit")
        self.proc = subprocess.Popen(
            [str(exe), "--data-dir", str(self.data_dir), "--api-host", self.host, "--api-port",
             str(API_PORT), "--udp-host", self.host, "--udp-port", str(UDP_PORT),
             # the lab's units enrol on first contact (docs/security.md); self.args may override
             "--enrolment", "first-come", *self.args],
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115 stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})

        def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise LabError(f"station exited with {self.proc.returncode}; see {self.log_path}")
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200

        wait_for(healthy, 60, "the station's /healthz")
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def get(self, path: str) -> Any:
        r = httpx.get(self.url + path, timeout=30, headers=self.auth)
        r.raise_for_status()
        return r.json()

    def volumes(self, unit: str | None = None) -> list[dict[str, Any]]:
        return [v for v in self.get("/api/v1/volumes") if unit is None or v["unit_name"] == unit]


class Flow:
    """Drives agents in the guests of a booted lab against one station."""

    def __init__(self, lab: Any, station: Station):
        self.lab = lab
        self.station = station
        self.venv_bin = Path(sys.executable).parent
        self.unit_pids: dict[str, int] = {}
        self.enrolled: set[str] = set()     # hosts enrolled at this flow's station, token in place
        # hosts whose state file and token live on the shared folder instead of the guest's /var/lib
        # and /etc (lost at a reboot): a real host keeps them on its disk
        self.keep_across_reboots: set[str] = set()

    # --- unit agent ------------------------------------------------------------------------
    def start_unit(self, guest: str, disk: str = "vda", extra: str = "", at_boot: bool = False) -> int:
        """Start the unit agent in `guest`. `at_boot`: also at every boot of the guest from now on
        (as a systemd unit would; the lab's autostart script), with its state on the shared folder
        so that it survives the reboot as a real disk's /var/lib would."""
        if at_boot:
            state = Path(self.lab.shared_dir) / "unit-state" / guest / self.station.pool_key
            extra = f"{extra} --state-dir {state}"
        cmd = (f"{self.venv_bin}/dvsan-unit-agent --name {guest} --station {self.lab.host_ip}:{UDP_PORT} "
               f"--cluster-key-file {self.station.key_file} --portal-address {self.lab.ip(guest)} "
               f"--station-key-file {self.station.data_dir / 'station_identity.pub'} "
               # NOTE: the lab's unit disk is scratch that hosts format in tests: offer it all
               f"--listen-port {UNIT_PORT} --disk {disk} --offer all-unmounted --log-level info "
               # one pool pin per station: each test module's station is a pool of its own
               f"--state-dir /var/lib/dvsan-unit/{self.station.pool_key} {extra}")
        if at_boot:
            auto = self.autostart_file(guest)
            auto.parent.mkdir(parents=True, exist_ok=True)
            auto.write_text(f"#!/bin/bash\nexec {cmd} >>/tmp/dvsan-unit-agent-{guest}.log 2>&1\n")
        pid = self.lab.spawn(guest, cmd, f"/tmp/dvsan-unit-agent-{guest}.log")
        self.unit_pids[guest] = pid
        return pid

    def autostart_file(self, guest: str) -> Path:
        return Path(self.lab.shared_dir) / "autostart" / f"{guest}.sh"

    def stop_all_units(self, guest: str) -> None:
        """Stop every unit agent in `guest` (also one its autostart began) and forget its autostart."""
        self.autostart_file(guest).unlink(missing_ok=True)
        self.unit_pids.pop(guest, None)
        self.lab.exec(guest, "pkill -TERM -f '[b]in/dvsan-unit-agent'; for i in $(seq 1 150); do "
                             "pgrep -f '[b]in/dvsan-unit-agent' >/dev/null || exit 0; sleep 0.2; done; "
                             "pkill -KILL -f '[b]in/dvsan-unit-agent'; true", timeout=60)

    def stop_unit(self, guest: str, timeout: float = 30, sig: str = "TERM") -> None:
        pid = self.unit_pids.pop(guest)
        self.lab.exec(guest, f"kill -{sig} {pid}; for i in $(seq 1 {int(timeout * 5)}); do "
                             f"kill -0 {pid} 2>/dev/null || exit 0; sleep 0.2; done; exit 1", check=True)

    def unit_log(self, guest: str) -> str:
        return str(self.lab.exec(guest, f"cat /tmp/dvsan-unit-agent-{guest}.log").out)

    def wait_pool(self, unit: str, n: int, state: str = "online", timeout: float = 90) -> list[dict[str, Any]]:
        def ready() -> list[dict[str, Any]] | None:
            vols = self.station.volumes(unit)
            return vols if len(vols) == n and all(v["state"] == state for v in vols) else None
        return wait_for(ready, timeout, f"{n} {state} volumes of {unit} in the pool")  # type: ignore[no-any-return]

    def sfdisk(self, guest: str, disk: str = "vda") -> dict[str, Any]:
        r = self.lab.exec(guest, f"sfdisk --json /dev/{disk}", check=True)
        return json.loads(r.out)["partitiontable"]  # type: ignore[no-any-return]

    # --- host agent ------------------------------------------------------------------------
    def enrol_host(self, guest: str) -> None:
        """Enrol `guest` at this flow's station with its initiator name, as an operator does, and
        put the host's token in the guest (/etc/dvsan/host.token, 0600)."""
        r = httpx.post(self.station.url + "/api/v1/hosts", headers=self.station.auth, timeout=30,
                       json={"name": guest, "initiator_iqns": [self.lab.initiator_name(guest)]})
        if r.status_code != 201:
            raise LabError(f"enrolling {guest} failed: {r.status_code} {r.text}")
        token = Path(self.token_file(guest))
        self.lab.exec(guest, f"mkdir -p {token.parent} && umask 077 && cat > {token}",
                      input=r.json()["token"]["token"] + "\n", check=True)
        self.enrolled.add(guest)

    def host_agent(self, guest: str, args: str, timeout: float = 180) -> Any:
        if guest not in self.enrolled:
            self.enrol_host(guest)
        return self.lab.exec(guest, f"{self.venv_bin}/dvsan-host-agent --station {self.station.url} "
                                    f"--name {guest} --token-file {self.token_file(guest)} "
                                    f"--state-file {self.state_file(guest)} {args}",
                             timeout=timeout)

    def keep_host_state(self, guest: str) -> None:
        """From now on the host's state file and token live where a reboot keeps them (what it
        holds already moves along)."""
        if guest in self.keep_across_reboots:
            return
        old_state, old_token = self.state_file(guest), self.token_file(guest)
        self.keep_across_reboots.add(guest)
        new = self._host_disk(guest)
        self.lab.exec(guest, f"mkdir -p {new} && chmod 700 {new} && "
                             f"{{ [ ! -e {old_state} ] || cp -p {old_state} {self.state_file(guest)}; }} && "
                             f"{{ [ ! -e {old_token} ] || cp -p {old_token} {self.token_file(guest)}; }}",
                      check=True)

    def _host_disk(self, guest: str) -> Path:
        return Path(self.lab.shared_dir) / "host-disk" / guest / self.station.pool_key

    def state_file(self, guest: str) -> str:
        if guest in self.keep_across_reboots:
            return str(self._host_disk(guest) / "assignments.json")
        return "/var/lib/dvsan-host/assignments.json"

    def token_file(self, guest: str) -> str:
        if guest in self.keep_across_reboots:
            return str(self._host_disk(guest) / "host.token")
        return "/etc/dvsan/host.token"

    def host_agent_command(self, guest: str, args: str) -> str:
        """The host agent's command line in `guest` (for spawn and autostart scripts)."""
        return (f"{self.venv_bin}/dvsan-host-agent --station {self.station.url} --name {guest} "
                f"--token-file {self.token_file(guest)} --state-file {self.state_file(guest)} {args}")

    def request(self, guest: str, size: str) -> dict[str, Any]:
        r = self.host_agent(guest, f"--json request {size}")
        if r.rc != 0:
            raise LabError(f"host agent in {guest} failed (rc {r.rc}): {r.err.strip()}")
        return json.loads(r.out.strip().splitlines()[-1])  # type: ignore[no-any-return]

    def station_assign(self, guest: str, volume_id: int) -> dict[str, Any]:
        """An operator assigns this very volume to `guest` (REST), the host picks it up with
        `sync`; the host's record of it (with `device_path`)."""
        if guest not in self.enrolled:
            self.enrol_host(guest)
        r = httpx.post(self.station.url + "/api/v1/assignments?wait=120", headers=self.station.auth,
                       timeout=150, json={"host": guest, "initiator_iqn": self.lab.initiator_name(guest),
                                          "host_address": self.lab.ip(guest), "volume_id": volume_id})
        if r.status_code != 201:
            raise LabError(f"assigning volume {volume_id} to {guest} failed: {r.status_code} {r.text}")
        aid = r.json()["id"]
        sync = self.host_agent(guest, "--json sync")
        if sync.rc != 0:
            raise LabError(f"sync in {guest} failed (rc {sync.rc}): {sync.out} {sync.err}")
        return self.held(guest)[str(aid)]

    def held(self, guest: str) -> dict[str, dict[str, Any]]:
        """The host agent's records in `guest` (`status --json`), by assignment id."""
        r = self.host_agent(guest, "--json status")
        if r.rc != 0:
            raise LabError(f"status in {guest} failed (rc {r.rc}): {r.err}")
        return {str(a["id"]): a for a in json.loads(r.out)}

    def release(self, guest: str, assignment_id: int) -> Any:
        return self.host_agent(guest, f"--json release {assignment_id}")

    # --- I/O in guests -----------------------------------------------------------------------
    def write_pattern(self, guest: str, dev: str, mib: int, tag: str) -> str:
        """Write `mib` MiB of random bytes at the start of `dev` (direct I/O); their sha256."""
        r = self.lab.exec(guest, f"head -c {mib}M /dev/urandom > /tmp/{tag}.bin && "
                                 f"dd if=/tmp/{tag}.bin of={dev} bs=1M oflag=direct status=none && "
                                 f"sync && sha256sum < /tmp/{tag}.bin", timeout=300, check=True)
        return str(r.out.split()[0])

    def read_sha(self, guest: str, dev: str, mib: int) -> str:
        r = self.lab.exec(guest, f"dd if={dev} bs=1M count={mib} iflag=direct status=none | sha256sum",
                          timeout=300, check=True)
        return str(r.out.split()[0])

    def iscsiadm(self, guest: str, args: str, timeout: float = 120) -> Any:
        return self.lab.exec(guest, f"iscsiadm {args}", timeout=timeout)

    def relogin(self, guest: str, a: dict[str, Any]) -> str:
        """Log out of and back in to an assignment's target; the new block device's path."""
        node = f"-m node -T {a['target_iqn']} -p {a['unit_address']}:{a['portal_port']}"
        self.lab.exec(guest, f"iscsiadm {node} --logout", check=True, timeout=120)
        self.lab.exec(guest, f"iscsiadm {node} --login", check=True, timeout=120)
        return self.device_of(guest, a["target_iqn"])

    def device_of(self, guest: str, target_iqn: str, timeout: float = 60) -> str:
        """The block device of a logged-in target, found through sysfs."""
        script = (f"for s in /sys/class/iscsi_session/session*; do "
                  f"[ \"$(cat $s/targetname)\" = {target_iqn} ] || continue; "
                  f"for b in $s/device/target*/*/block/*; do [ -e \"$b\" ] && echo /dev/$(basename $b); done; done")

        def found() -> str | None:
            lines = self.lab.exec(guest, script).out.split()
            return lines[0] if lines else None

        return wait_for(found, timeout, f"block device of {target_iqn} in {guest}")  # type: ignore[no-any-return]

    def fio(self, guest: str, dev: str, rw: str, size_mib: int = 256, runtime: int = 20) -> float:
        """fio sequential 1 MiB, iodepth 8, direct; MiB/s."""
        dev_real = self.lab.exec(guest, f"readlink -f {dev}", check=True).out.strip()
        r = self.lab.exec(guest, f"fio --name=seq{rw} --filename={dev_real} --rw={rw} --bs=1M --iodepth=8 "
                                 f"--ioengine=libaio --direct=1 --size={size_mib}M --runtime={runtime} "
                                 f"--output-format=json", timeout=runtime + 120, check=True)
        job = json.loads(r.out[r.out.index("{"):])["jobs"][0]
        return float(job["read" if rw == "read" else "write"]["bw"]) / 1024.0


def reset_host(lab: Any, guest: str) -> None:
    """Forget every iSCSI session, node record and dvsan state a host guest has (for a clean run)."""
    lab.exec(guest, "iscsiadm -m node --logoutall=all >/dev/null 2>&1; "
                    "iscsiadm -m node -o delete >/dev/null 2>&1; rm -rf /var/lib/dvsan-host; true",
             timeout=120)
