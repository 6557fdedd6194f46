"""The lab API: boot, inspect, drive and tear down guests that run real LIO and open-iscsi."""

import concurrent.futures
import contextlib
import fcntl
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from dvsan_lab import netns, preflight, procs
from dvsan_lab.channel import ExecChannel, Result
from dvsan_lab.errors import ExecChannelError, LabError
from dvsan_lab.topology import DEFAULT_TOPOLOGY, DiskSpec, GuestSpec, Topology

GUEST_DIR = Path(__file__).resolve().parent / "guest"
DEFAULT_BOOT_TIMEOUT = 300.0  # three TCG guests on 2 cores answer in about 50 s; CI may be slower
SHUTDOWN_GRACE = 30.0  # a guest powering off under TCG takes a few seconds

__all__ = ["GuestStatus", "Lab", "LabStatus", "Result", "UpTimings", "find_repo", "format_status"]


def find_repo() -> Path:
    """The dvsan checkout: $DVSAN_REPO, else the one this package was imported from, else cwd's."""
    if env := os.environ.get("DVSAN_REPO"):
        return Path(env).resolve()
    candidates = [Path(__file__).resolve().parents[1], *Path.cwd().resolve().parents]
    candidates.insert(1, Path.cwd().resolve())
    for c in candidates:
        if (c / "pyproject.toml").exists() and (c / "dvsan_lab").is_dir():
            return c
    raise LabError("cannot find the dvsan checkout: run from inside it or set DVSAN_REPO")


@dataclass(frozen=True)
class UpTimings:
    """Seconds spent by `up`: preparing disks and network, until each guest answered, in all."""

    prepare: float
    guests: dict[str, float]
    total: float


@dataclass(frozen=True)
class GuestStatus:
    """One guest as seen from the machine."""

    name: str
    ip: str
    pid: int | None  # the vng process group we started, if recorded
    running: bool  # our qemu/vng processes exist
    answering: bool  # its exec channel answered a ping
    uptime: float | None = None
    on_demand: bool = False  # booted only when asked (Lab.boot): not running is not "down"


@dataclass(frozen=True)
class LabStatus:
    """The whole lab: network pieces and guests."""

    netns: bool
    veth: bool
    guests: tuple[GuestStatus, ...]

    @property
    def up(self) -> bool:
        """Fully usable: network present and every guest answering (an on-demand guest only if
        it was booted)."""
        return self.netns and self.veth and all(g.answering for g in self.guests
                                                if not g.on_demand or g.running)

    @property
    def down(self) -> bool:
        """Nothing of ours left: no network pieces, no guest processes."""
        return not self.netns and not self.veth and not any(g.running for g in self.guests)


class Lab:
    """Guests `unit-a` (with a partitioned disk), `host-b`, `host-c` on a private bridge.

    State (logs, PID files, disk images, the shared folder) lives in `<repo>/.lab/`. The guests
    see the machine's root filesystem read-only, hence this checkout and its .venv at the same
    paths; `shared_dir` is also writable from inside every guest.
    """

    def __init__(
        self,
        repo: Path | None = None,
        topology: Topology = DEFAULT_TOPOLOGY,
        state_dir: Path | None = None,
        boot_timeout: float | None = None,
        console: bool | None = None,
    ):
        self.repo = (repo or find_repo()).resolve()
        self.topology = topology
        self.state_dir = (state_dir or self.repo / ".lab").resolve()
        self.boot_timeout = boot_timeout or float(
            os.environ.get("DVSAN_LAB_BOOT_TIMEOUT", DEFAULT_BOOT_TIMEOUT)
        )
        # Kernel console into the guest log: useful when a guest does not boot, slower under TCG.
        self.console = console if console is not None else os.environ.get("DVSAN_LAB_CONSOLE") == "1"
        self._specs = {g.name: g for g in topology.guests}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.last_timings: UpTimings | None = None  # of this object's last successful `up`

    # -- names and places -------------------------------------------------------------------

    @property
    def guests(self) -> tuple[str, ...]:
        return tuple(self._specs)

    @property
    def host_ip(self) -> str:
        """The machine's address on the lab network (the station binds here)."""
        return self.topology.host_ip

    @property
    def shared_dir(self) -> Path:
        """A folder read-write on the machine and in every guest, at this same path."""
        return self.state_dir / "shared"

    @property
    def python(self) -> str:
        """The project's virtualenv interpreter, usable inside guests (same path over 9p)."""
        return str(self.repo / ".venv" / "bin" / "python")

    def _spec(self, guest: str) -> GuestSpec:
        try:
            return self._specs[guest]
        except KeyError:
            raise LabError(f"no guest {guest!r} in the lab; guests: {', '.join(self._specs)}") from None

    def ip(self, guest: str) -> str:
        return self.topology.ip(self._spec(guest))

    def initiator_name(self, guest: str) -> str:
        """The iSCSI initiator name written to the guest's /etc/iscsi/initiatorname.iscsi."""
        return self.topology.initiator_name(self._spec(guest))

    def log_path(self, guest: str) -> Path:
        """The guest's output: vng, init script and exec server (and console if enabled)."""
        return self.state_dir / "logs" / f"{self._spec(guest).name}.log"

    def disk_path(self, guest: str) -> Path | None:
        spec = self._spec(guest)
        return self.state_dir / "disks" / f"{spec.name}.img" if spec.disk else None

    def extra_disk_path(self, guest: str, index: int) -> Path:
        """The image of a guest's extra disk `index` (0: vdb)."""
        return self.state_dir / "disks" / f"{self._spec(guest).name}-{chr(ord('b') + index)}.img"

    def _pid_file(self, guest: str) -> Path:
        return self.state_dir / "run" / f"{guest}.pid"

    def _channel(self, guest: str) -> ExecChannel:
        return ExecChannel(
            guest, self.ip(guest), self.topology.exec_port, self.host_ip, str(self.log_path(guest))
        )

    # -- commands in guests -----------------------------------------------------------------

    def exec(
        self,
        guest: str,
        cmd: str,
        timeout: float = 120.0,
        *,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        check: bool = False,
    ) -> Result:
        """Run `cmd` (bash -c, as root) in a guest and wait for it.

        Returns Result(rc, out, err); rc 124 means the command timed out and its process group
        was killed. Raises ExecChannelError if the guest does not answer, CommandFailed if
        `check` and rc != 0. Do not start background jobs here (their open stdout would hold
        the call until the timeout): use `spawn`.
        """
        return self._channel(guest).exec(cmd, timeout, input=input, env=env, cwd=cwd, check=check)

    def spawn(
        self,
        guest: str,
        cmd: str,
        log: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> int:
        """Start a long-running `cmd` in a guest, detached (own session), output appended to `log`.

        Returns at once with the guest PID, which is also its process group: stop it with
        `lab.exec(guest, f"kill -- -{pid}")`. A `log` under `shared_dir` is readable from the
        machine too.
        """
        return self._channel(guest).spawn(cmd, os.fspath(log), env=env, cwd=cwd)

    # -- lifecycle --------------------------------------------------------------------------

    def preflight(self) -> None:
        """Raise PreflightError naming each missing tool/package; installs nothing."""
        preflight.require(self.repo)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # NOTE: two `up`s (a pytest session and a person at a shell) must not race on one state dir.
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LabError(f"another dvsan-lab up/down holds {self.state_dir / 'lock'}") from None
            yield

    def up(self) -> UpTimings:
        """Boot every guest in parallel; return once each answers on its exec channel.

        Refuses if any part of the lab already exists. On failure, tears down what it made and
        raises LabError with the tail of each failing guest's log.
        """
        with self._locked():
            self.preflight()
            if not (st := self.status()).down:
                raise LabError(
                    "the lab is already (partly) up: use it, or run `dvsan-lab down` first\n"
                    + format_status(st)
                )
            if users := netns.subnet_users(self.topology):
                raise LabError(
                    f"the lab subnet {self.topology.subnet}.0/{self.topology.prefixlen} is already "
                    f"in use on this machine by {', '.join(users)}"
                )
            t0 = time.monotonic()
            try:
                self._prepare()
                netns.up(self.topology)
                prepared = time.monotonic() - t0
                for spec in self.topology.guests:
                    if not spec.on_demand:
                        self._start(spec)
                guests = self._wait_all(t0, list(self._procs))
            except BaseException:
                with contextlib.suppress(Exception):
                    self._teardown()
                raise
            self.last_timings = UpTimings(prepared, guests, time.monotonic() - t0)
            return self.last_timings

    def _prepare(self) -> None:
        for sub in ("logs", "run", "disks", "shared"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.state_dir / "hosts").write_text(self.topology.hosts_file())
        for spec in self.topology.guests:
            self._pid_file(spec.name).unlink(missing_ok=True)
            if spec.disk:
                self._make_disk(self.state_dir / "disks" / f"{spec.name}.img", spec.disk)
            for i, extra in enumerate(spec.extra_disks):
                self._make_disk(self.extra_disk_path(spec.name, i), extra)

    @staticmethod
    def _make_disk(path: Path, disk: DiskSpec) -> None:
        # NOTE: a fresh sparse image every `up`, so each lab starts from the same known layout.
        path.unlink(missing_ok=True)
        with open(path, "wb") as f:
            f.truncate(disk.size)
        if not disk.partitions:
            return      # blank: no label at all
        proc = subprocess.run(
            ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path)],
            input=disk.sfdisk_script(), capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise LabError(f"sfdisk could not partition {path}: {proc.stderr.strip()}")

    def _vng_command(self, index: int, spec: GuestSpec, vng: Path, kernel: Path) -> list[str]:
        topo = self.topology
        qemu = [
            f"-netdev tap,id=n0,ifname={topo.tap(index)},script=no,downscript=no",
            f"-device virtio-net-pci,netdev=n0,mac={topo.mac(spec)}",
        ]
        if spec.disk:
            qemu += [
                f"-drive file={self.disk_path(spec.name)},if=none,id=d1,format=raw,cache=unsafe",
                # NOTE: the serial gives a stable /dev/disk/by-id/virtio-<serial> in the guest.
                f"-device virtio-blk-pci,drive=d1,serial={topo.vm_name(spec)}",
            ]
        for i, _extra in enumerate(spec.extra_disks):
            letter = chr(ord("b") + i)
            qemu += [
                f"-drive file={self.extra_disk_path(spec.name, i)},if=none,id=d{i + 2},format=raw,cache=unsafe",
                f"-device virtio-blk-pci,drive=d{i + 2},serial={topo.vm_name(spec)}-{letter}",
            ]
        init = shlex.join([
            "/bin/bash", str(GUEST_DIR / "init.sh"), spec.name, topo.ip(spec), str(topo.prefixlen),
            str(topo.exec_port), topo.initiator_name(spec), str(self.state_dir / "hosts"),
        ])
        cmd = [
            "ip", "netns", "exec", topo.netns,  # so qemu finds the taps, which live in the netns
            str(vng), "--run", str(kernel),
            "--disable-kvm",  # NOTE: this machine's paravirtual KVM never boots the stock kernel
            "--name", topo.vm_name(spec), "--memory", spec.memory, "--cpus", "1",
            f"--rwdir={self.shared_dir}", "--cwd=/",
            # NOTE: with `=`: given as a separate word, argparse takes a value starting with `-`
            # for an option and fails.
            f"--qemu-opts={' '.join(qemu)}",
            "--exec", init,
        ]
        if self.console:
            cmd.append("--verbose")
        return cmd

    def _start(self, spec: GuestSpec) -> None:
        index = self.topology.guests.index(spec)
        vng, kernel = preflight.find_vng(self.repo), preflight.find_kernel()
        if vng is None or kernel is None:
            raise LabError("vng or the guest kernel vanished after preflight")
        env = dict(os.environ)
        # NOTE: vng starts `virtme-run` through the shell, so its own bin dir must be on PATH.
        env["PATH"] = os.pathsep.join([str(vng.parent), env.get("PATH", "")])
        with open(self.log_path(spec.name), "wb") as log:
            # NOTE: stdin from /dev/null, else qemu's stdio chardev fights the caller's terminal;
            # a new session so ^C in the caller's shell or its exit does not kill the guest, and
            # so the whole vng -> virtme-run -> qemu tree shares one process group to stop.
            proc = subprocess.Popen(
                self._vng_command(index, spec, vng, kernel), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.state_dir, env=env, start_new_session=True,
            )
        self._procs[spec.name] = proc
        self._pid_file(spec.name).write_text(f"{proc.pid}\n")

    def _wait_all(self, t0: float, guests: list[str]) -> dict[str, float]:
        with concurrent.futures.ThreadPoolExecutor(max(1, len(guests))) as pool:
            futures = {g: pool.submit(self._wait_one, g, t0) for g in guests}
        failures = [str(f.exception()) for f in futures.values() if f.exception()]
        if failures:
            raise LabError("the lab did not come up:\n" + "\n".join(failures))
        return {g: f.result() for g, f in futures.items()}

    def _wait_one(self, guest: str, t0: float) -> float:
        deadline = t0 + self.boot_timeout
        channel, proc = self._channel(guest), self._procs[guest]
        while True:
            if proc.poll() is not None:
                raise LabError(
                    f"{guest}: vng exited with {proc.returncode} before the guest answered\n"
                    + self._log_tail(guest)
                )
            try:
                channel.ping(timeout=2.0)
                return time.monotonic() - t0
            except ExecChannelError:
                if time.monotonic() > deadline:
                    raise LabError(
                        f"{guest}: no answer on {channel.ip}:{channel.port} within "
                        f"{self.boot_timeout:g}s\n" + self._log_tail(guest)
                    ) from None
                time.sleep(0.5)

    def _log_tail(self, guest: str, lines: int = 15) -> str:
        path = self.log_path(guest)
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            tail = []
        hint = "" if self.console else " (set DVSAN_LAB_CONSOLE=1 to log the kernel console)"
        body = "".join(f"    | {line}\n" for line in tail) or "    | (empty)\n"
        return f"  last lines of {path}{hint}:\n{body}"

    def _guest_pids(self, guest: str) -> tuple[int | None, list[int]]:
        """The recorded process group and its live members that carry this guest's vm name."""
        try:
            pgid = int(self._pid_file(guest).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None, []
        marker = self.topology.vm_name(self._spec(guest))
        return pgid, procs.group_members(pgid, marker)

    def status(self) -> LabStatus:
        """What exists now; pings only the guests whose processes run."""
        guests = []
        in_netns = netns.pids_in_netns(self.topology)
        for name in self._specs:
            pgid, members = self._guest_pids(name)
            if not members:
                # NOTE: a lost PID file must not hide a running guest: look inside our netns too.
                marker = self.topology.vm_name(self._spec(name))
                members = [p for p in in_netns if marker in procs.cmdline(p)]
            answering, uptime = False, None
            if members:
                try:
                    uptime = float(self._channel(name).ping(timeout=3.0)["uptime"])
                    answering = True
                except ExecChannelError:
                    pass
            guests.append(GuestStatus(name, self.ip(name), pgid, bool(members), answering, uptime,
                                      self._spec(name).on_demand))
        return LabStatus(netns.netns_exists(self.topology), netns.veth_exists(self.topology),
                         tuple(guests))

    # -- guests one at a time, in a running lab: boot, power cut, freeze ----------------------

    def _members(self, guest: str) -> list[int]:
        """The guest's processes: its recorded group, else ours in the netns carrying its name."""
        members = self._guest_pids(guest)[1]
        if not members:
            marker = self.topology.vm_name(self._spec(guest))
            members = [p for p in netns.pids_in_netns(self.topology) if marker in procs.cmdline(p)]
        return members

    def running(self, guest: str) -> bool:
        """The guest's emulator processes exist (it may be frozen or still booting)."""
        return bool(self._members(guest))

    def boot(self, *guests: str) -> dict[str, float]:
        """Boot guests into the running lab (on-demand ones, or ones powered off); their disks
        keep what they held, as a real machine's do across a reboot. Returns seconds until each
        answered; guests already running are left alone (and not in the result)."""
        specs = [self._spec(g) for g in guests]
        with self._locked():
            if not netns.netns_exists(self.topology):
                raise LabError("the lab is not up: `dvsan-lab up` first")
            todo = [s for s in specs if not self.running(s.name)]
            t0 = time.monotonic()
            for spec in todo:
                for path, disk in self._disks_of(spec):
                    if not path.exists():
                        self._make_disk(path, disk)
                self._start(spec)
            return self._wait_all(t0, [s.name for s in todo]) if todo else {}

    def _disks_of(self, spec: GuestSpec) -> list[tuple[Path, DiskSpec]]:
        out = [(self.state_dir / "disks" / f"{spec.name}.img", spec.disk)] if spec.disk else []
        return out + [(self.extra_disk_path(spec.name, i), d) for i, d in enumerate(spec.extra_disks)]

    def power_off(self, guest: str) -> None:
        """Pull the plug: kill the guest's emulator at once (no shutdown inside: the kernel, LIO's
        configuration, every session and process in it are simply gone). Disks are kept."""
        members = self._members(guest)
        if members:
            procs.terminate(members, grace=0.0)
            if not procs.wait_gone(members, 30):
                raise LabError(f"{guest}: its emulator ({members}) did not die")
        proc = self._procs.pop(guest, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self._pid_file(guest).unlink(missing_ok=True)

    def reboot(self, guest: str) -> float:
        """A hard reset: power off, boot again (same disks); seconds until it answers again."""
        self.power_off(guest)
        return self.boot(guest)[guest]

    def freeze(self, guest: str) -> None:
        """Stop the guest's emulator (SIGSTOP): to every peer the machine hangs, dead but not gone;
        `thaw` lets it run on as if nothing happened (its clock jumps)."""
        self._signal_guest(guest, signal.SIGSTOP)

    def thaw(self, guest: str) -> None:
        self._signal_guest(guest, signal.SIGCONT)

    def _signal_guest(self, guest: str, sig: int) -> None:
        members = self._members(guest)
        if not members:
            raise LabError(f"{guest} is not running")
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def is_up(self) -> bool:
        """True if the network exists and every guest answers (a cheap status().up)."""
        return self.status().up

    def down(self) -> list[str]:
        """Stop our guests and remove our network pieces; what was done, one line each.

        Touches only what `up` made: processes recorded in PID files (checked to carry this
        lab's vm names) or living in the lab's netns, and the netns and veth by their names.
        Keeps going past failures and raises them together as an ExceptionGroup.
        """
        with self._locked():
            return self._teardown()

    def _teardown(self) -> list[str]:
        done: list[str] = []
        errors: list[Exception] = []
        groups = {g: self._guest_pids(g) for g in self._specs}
        running = {g: members for g, (_, members) in groups.items() if members}

        # Politely first: the exec server exits, the guest powers off, qemu and vng end.
        def ask(guest: str) -> bool:
            try:
                self._channel(guest).shutdown(timeout=3.0)
                return True
            except ExecChannelError:
                return False  # still booting or hung: no use waiting for it

        with concurrent.futures.ThreadPoolExecutor(max(1, len(running))) as pool:
            accepted = [g for g, ok in zip(running, pool.map(ask, running)) if ok]
        waiting = [p for g in accepted for p in running[g]]
        if waiting and not procs.wait_gone(waiting, SHUTDOWN_GRACE):
            done.append("some guests did not power off in time: terminating them")
        for guest, (pgid, _) in groups.items():
            if pgid is None:
                continue
            # NOTE: re-read the group: vng may have spawned qemu after the first look.
            left = procs.group_members(pgid, self.topology.vm_name(self._spec(guest)))
            if left:
                procs.terminate(left)
                done.append(f"{guest}: terminated {' '.join(map(str, left))}")
            elif guest in running:
                done.append(f"{guest}: powered off")
        # Anything still in our netns is ours too (e.g. a qemu whose PID file was lost).
        if strays := netns.pids_in_netns(self.topology):
            killed = procs.terminate(strays)
            done.append(f"terminated strays in netns {self.topology.netns}: {killed}")
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)  # reap our own children so they do not linger as zombies
        self._procs.clear()
        try:
            done += [f"removed {what}" for what in netns.down(self.topology)]
        except LabError as e:
            errors.append(e)
        for guest in self._specs:
            self._pid_file(guest).unlink(missing_ok=True)
        if errors:
            raise ExceptionGroup("dvsan lab teardown had failures", errors)
        return done


def format_status(st: LabStatus) -> str:
    """A few human lines describing a LabStatus."""
    net = f"  netns: {'present' if st.netns else 'absent'}, veth: {'present' if st.veth else 'absent'}"
    lines = [net]
    for g in st.guests:
        state = "answering" if g.answering else ("running, not answering" if g.running else
                                                 "not booted (on demand)" if g.on_demand else "stopped")
        up = f", up {g.uptime:.0f}s" if g.uptime is not None else ""
        lines.append(f"  {g.name:<10} {g.ip:<15} {state}{up}")
    return "\n".join(lines)

