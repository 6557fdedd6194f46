"""open-iscsi through iscsiadm: the one module on a host that runs it, and parsers of its output."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dvsan.errors import AdapterError

log = logging.getLogger(__name__)

# Exit codes of iscsiadm, from open-iscsi's include/iscsi_err.h.
ISCSI_ERR_SUCCESS = 0
ISCSI_ERR = 1                     # generic error
ISCSI_ERR_SESS_NOT_FOUND = 2
ISCSI_ERR_NOMEM = 3
ISCSI_ERR_TRANS = 4               # transport error: e.g. connection refused, no route to host
ISCSI_ERR_LOGIN = 5               # generic login failure
ISCSI_ERR_IDBM = 6                # error accessing/managing the node database
ISCSI_ERR_INVAL = 7
ISCSI_ERR_TRANS_TIMEOUT = 8       # connection timer expired while trying to connect
ISCSI_ERR_INTERNAL = 9
ISCSI_ERR_LOGOUT = 10
ISCSI_ERR_PDU_TIMEOUT = 11
ISCSI_ERR_TRANS_NOT_FOUND = 12    # transport module (iscsi_tcp) not loaded
ISCSI_ERR_ACCESS = 13
ISCSI_ERR_TRANS_CAPS = 14
ISCSI_ERR_SESS_EXISTS = 15        # session is already logged in
ISCSI_ERR_INVALID_MGMT_REQ = 16
ISCSI_ERR_ISNS_UNAVAILABLE = 17
ISCSI_ERR_ISCSID_COMM_ERR = 18
ISCSI_ERR_FATAL_LOGIN = 19
ISCSI_ERR_ISCSID_NOTCONN = 20     # could not connect to iscsid (not running)
ISCSI_ERR_NO_OBJS_FOUND = 21      # no records/targets/sessions/portals found
ISCSI_ERR_SYSFS_LOOKUP = 22
ISCSI_ERR_HOST_NOT_FOUND = 23
ISCSI_ERR_LOGIN_AUTH_FAILED = 24  # authorization failure: no ACL for us, or a wrong CHAP secret
ISCSI_ERR_ISNS_QUERY = 25
ISCSI_ERR_ISNS_REG_FAILED = 26
ISCSI_ERR_OP_NOT_SUPP = 27
ISCSI_ERR_BUSY = 28
ISCSI_ERR_AGAIN = 29
ISCSI_ERR_UNKNOWN_DISCOVERY_TYPE = 30
ISCSI_ERR_CHILD_TERMINATED = 31
# open-iscsi 2.0.877+: iscsid refuses to log out a session that is reconnecting (to a dead unit,
# say): "session N cannot be terminated because it's trying to reconnect: try again later".
ISCSI_ERR_SESSION_NOT_CONNECTED = 32
ISCSI_ERR_REQ_TIMEDOUT = 33       # open-iscsi 2.1.6+: a request to iscsid timed out

_RC_NAMES: dict[int, str] = {v: k for k, v in globals().items()
                             if k.startswith("ISCSI_ERR") and isinstance(v, int)}
RC_TIMEOUT = -1        # our own: iscsiadm did not finish in time (no iscsiadm exit code)
RC_NOT_INSTALLED = 127  # our own, like the shell's: the iscsiadm program was not found

DEFAULT_PORT = 3260

# The login budget. iscsiadm --login waits while iscsid retries the first login
# node.session.initial_login_retry_max times, each bounded by node.conn[0].timeo.login_timeout
# (open-iscsi's defaults: 8 x 15 s = 120 s). We set both on the node record before every login, so
# a site's iscsid.conf cannot stretch it, and wait longer than their product: killing iscsiadm
# sooner would report a failure while iscsid goes on and logs in behind our back.
LOGIN_TIMEO = 15                  # node.conn[0].timeo.login_timeout, seconds
INITIAL_LOGIN_RETRY_MAX = 8       # node.session.initial_login_retry_max
LOGIN_BUDGET = LOGIN_TIMEO * INITIAL_LOGIN_RETRY_MAX                  # 120 s
LOGIN_RUN_TIMEOUT = LOGIN_BUDGET + 30.0                               # 150 s, > the budget
MIRROR_REPLACEMENT_TIMEOUT = 5    # node.session.timeo.replacement_timeout of mirror members, s
_SECRET_NAME = re.compile(r"password", re.IGNORECASE)
MASK = "********"


class IscsiadmError(AdapterError):
    """iscsiadm failed (`rc` is its exit code, see ISCSI_ERR_*) or printed what we cannot parse."""

    def __init__(self, message: str, rc: int | None = None) -> None:
        self.rc = rc
        super().__init__(message)

    @property
    def rc_name(self) -> str:
        """The iscsi_err.h name of `rc`, e.g. 'ISCSI_ERR_LOGIN_AUTH_FAILED'."""
        return rc_name(self.rc)


class IscsiadmParseError(IscsiadmError, ValueError):
    """iscsiadm's output did not have the expected shape (also a ValueError)."""


def rc_name(rc: int | None) -> str:
    """A readable name for an iscsiadm exit code."""
    if rc is None:
        return "no exit code"
    if rc == RC_TIMEOUT:
        return "timed out"
    if rc == RC_NOT_INSTALLED:
        return "iscsiadm not found"
    return _RC_NAMES.get(rc, f"unknown exit code {rc}")


@dataclass(frozen=True, slots=True)
class DiscoveredTarget:
    """One target a portal offered in sendtargets discovery."""

    portal_ip: str
    port: int
    tpgt: int
    target_iqn: str


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One node record of open-iscsi's database, as `iscsiadm -m node` lists it."""

    portal_ip: str
    port: int
    tpgt: int
    target_iqn: str


@dataclass(frozen=True, slots=True)
class Session:
    """One iSCSI session of this host, as `iscsiadm -m session` lists it."""

    transport: str
    sid: int
    portal_ip: str
    port: int
    tpgt: int
    target_iqn: str


# ---- pure parsers --------------------------------------------------------------------------

_PORTAL_RE = re.compile(
    r"^(?:\[(?P<ip6>[0-9A-Fa-f:.%\w]+)\]|(?P<ip4>[^\s\[\]:,]+))"   # [v6] or v4/name
    r":(?P<port>[0-9]{1,5}),(?P<tpgt>-?[0-9]+)$"
)
_IQN_TOKEN = re.compile(r"^(iqn\.|eui\.|naa\.)\S+$")


def _parse_portal(token: str, line: str) -> tuple[str, int, int]:
    """'10.0.0.1:3260,1' or '[fe80::1]:3260,1' -> (ip, port, tpgt)."""
    m = _PORTAL_RE.match(token)
    if not m:
        raise IscsiadmParseError(f"cannot parse portal {token!r} in iscsiadm output line {line!r}")
    port = int(m.group("port"))
    if not 0 < port < 65536:
        raise IscsiadmParseError(f"bad port {port} in iscsiadm output line {line!r}")
    return m.group("ip6") or m.group("ip4"), port, int(m.group("tpgt"))


def _parse_iqn(token: str, line: str) -> str:
    if not _IQN_TOKEN.match(token):
        raise IscsiadmParseError(
            f"expected a target name, got {token!r} in iscsiadm output line {line!r}")
    return token


def parse_discovery(output: str) -> list[DiscoveredTarget]:
    """Parse `iscsiadm -m discovery -t sendtargets -p IP:PORT` output.

    Sample:
        10.213.77.11:3260,1 iqn.2026-11.org.dvsan:unit-a:vda2
        [fd00::11]:3260,1 iqn.2026-11.org.dvsan:unit-a:vda3
    Lines starting with 'iscsiadm:' are messages, not targets, and are skipped.
    """
    out: list[DiscoveredTarget] = []
    for line in output.splitlines():
        line = line.strip()
        if not line or line.startswith("iscsiadm:"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise IscsiadmParseError(f"expected 'PORTAL,TPGT TARGET', got {line!r}")
        ip, port, tpgt = _parse_portal(fields[0], line)
        out.append(DiscoveredTarget(ip, port, tpgt, _parse_iqn(fields[1], line)))
    return out


def parse_node_records(output: str) -> list[NodeRecord]:
    """Parse `iscsiadm -m node` output (the same shape as discovery's).

    Sample:
        10.213.77.11:3260,1 iqn.2026-11.org.dvsan:unit-a:vda2
        10.213.77.12:3260,1 iqn.2026-11.org.dvsan:unit-a:vda2
    """
    return [NodeRecord(t.portal_ip, t.port, t.tpgt, t.target_iqn) for t in parse_discovery(output)]


def parse_sessions(output: str) -> list[Session]:
    """Parse `iscsiadm -m session` output.

    Sample (open-iscsi 2.1; older versions print no '(non-flash)'):
        tcp: [1] 10.213.77.11:3260,1 iqn.2026-11.org.dvsan:unit-a:vda2 (non-flash)
        tcp: [12] [fd00::11]:3260,1 iqn.2026-11.org.dvsan:unit-a:vda3 (non-flash)
    """
    out: list[Session] = []
    for line in output.splitlines():
        line = line.strip()
        if not line or line.startswith("iscsiadm:"):
            continue
        fields = line.split()
        if len(fields) not in (4, 5) or not re.fullmatch(r"[\w-]+:", fields[0]):
            raise IscsiadmParseError(
                f"expected 'TRANSPORT: [SID] PORTAL,TPGT TARGET', got {line!r}")
        if len(fields) == 5 and not re.fullmatch(r"\([\w-]+\)", fields[4]):
            raise IscsiadmParseError(f"unexpected trailing field {fields[4]!r} in {line!r}")
        sid_token = fields[1]
        if not re.fullmatch(r"\[[0-9]+\]", sid_token):
            raise IscsiadmParseError(f"bad session id {sid_token!r} in {line!r}")
        ip, port, tpgt = _parse_portal(fields[2], line)
        out.append(Session(transport=fields[0][:-1], sid=int(sid_token[1:-1]), portal_ip=ip,
                           port=port, tpgt=tpgt, target_iqn=_parse_iqn(fields[3], line)))
    return out


def parse_initiator_name(text: str) -> str:
    """The InitiatorName from /etc/iscsi/initiatorname.iscsi.

    Sample:
        ## DO NOT EDIT OR REMOVE THIS FILE!
        InitiatorName=iqn.1993-08.org.debian:01:5e4f3a2b1c0d
    """
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("InitiatorName="):
            name = line.split("=", 1)[1].strip()
            if name:
                return name
    raise IscsiadmParseError("no InitiatorName= line in the initiator name file")


def mask_args(args: Sequence[str]) -> list[str]:
    """The arguments with CHAP secrets replaced, for logs and error messages.

    `-n node.session.auth.password -v SECRET` -> `... -v ********`; also `--value=SECRET`.
    """
    out = list(args)
    secret_next = False
    for i, a in enumerate(out):
        if a in ("-n", "--name") and i + 1 < len(out):
            secret_next = bool(_SECRET_NAME.search(out[i + 1]))
        elif a.startswith("--name="):
            secret_next = bool(_SECRET_NAME.search(a))
        elif a in ("-v", "--value") and secret_next and i + 1 < len(out):
            out[i + 1] = MASK
            secret_next = False
        elif a.startswith("--value=") and secret_next:
            out[i] = "--value=" + MASK
            secret_next = False
    return out


def find_session_device(sysfs: str, target_iqn: str, portal_ip: str | None = None,
                        lun: int = 0) -> str | None:
    """The /dev path of LUN `lun` of a logged-in session to `target_iqn`, found through sysfs.

    Layout read (no udev needed):
        /sys/class/iscsi_session/session3/targetname          -> iqn...:unit-a:vda2
        /sys/class/iscsi_connection/connection3:0/persistent_address -> 10.213.77.11
        /sys/class/iscsi_session/session3/device/target2:0:0/2:0:0:0/block/sda
    """
    base = Path(sysfs)
    try:
        sessions = sorted(os.listdir(base / "class" / "iscsi_session"))
    except OSError:
        return None
    for sname in sessions:
        sdir = base / "class" / "iscsi_session" / sname
        if _read(sdir / "targetname") != target_iqn:
            continue
        if portal_ip is not None and not _session_has_portal(base, sname, portal_ip):
            continue
        for hctl in sorted((sdir / "device").glob("target*/*:*:*:*")):
            if hctl.name.rsplit(":", 1)[-1] != str(lun):
                continue
            try:
                blocks = sorted(os.listdir(hctl / "block"))
            except OSError:
                continue
            if blocks:
                return f"/dev/{blocks[0]}"
    return None


def find_session_devices(sysfs: str, target_iqn: str) -> list[str]:
    """The block device names (sda, ...) of every session to `target_iqn`, on any portal, any LUN."""
    base = Path(sysfs) / "class" / "iscsi_session"
    try:
        sessions = sorted(os.listdir(base))
    except OSError:
        return []
    out: list[str] = []
    for sname in sessions:
        if _read(base / sname / "targetname") != target_iqn:
            continue
        for hctl in sorted((base / sname / "device").glob("target*/*:*:*:*")):
            try:
                out += sorted(os.listdir(hctl / "block"))
            except OSError:
                continue
    return list(dict.fromkeys(out))


def _session_has_portal(base: Path, sname: str, portal_ip: str) -> bool:
    sid = sname.removeprefix("session")
    want = portal_ip.strip("[]")
    conns = list((base / "class" / "iscsi_connection").glob(f"connection{sid}:*"))
    if not conns:
        return True  # NOTE: no connection entry (mid-recovery): the target name alone decides
    for c in conns:
        for attr in ("persistent_address", "address"):
            if _read(c / attr) == want:
                return True
    return False


def _read(p: Path) -> str | None:
    try:
        return p.read_text().strip()
    except OSError:
        return None


def _portal(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip and not ip.startswith("[") else f"{ip}:{port}"


# ---- the adapter ---------------------------------------------------------------------------

Runner = Callable[[list[str], float], "subprocess.CompletedProcess[str]"]


def _subprocess_runner(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


class Iscsiadm:
    """Discovery, login, logout and sessions through iscsiadm; every call goes through `_run`."""

    def __init__(self, executable: str = "iscsiadm", sysfs: str = "/sys", timeout: float = 60.0,
                 runner: Runner | None = None, login_timeout: float = LOGIN_RUN_TIMEOUT,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        """`runner(argv, timeout)` stands in for subprocess.run in tests; devices are in `sysfs`.

        `login_timeout` bounds a login; it must exceed LOGIN_BUDGET (see there).
        """
        if login_timeout <= LOGIN_BUDGET:
            raise ValueError(f"login_timeout {login_timeout} s must exceed open-iscsi's login "
                             f"budget of {LOGIN_BUDGET} s")
        self.executable = executable
        self.sysfs = sysfs
        self.timeout = timeout
        self.login_timeout = login_timeout
        self._runner = runner or _subprocess_runner
        self._sleep = sleep

    def _run(self, args: Sequence[str], ok: Sequence[int] = (ISCSI_ERR_SUCCESS,),
             timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run iscsiadm; an exit code outside `ok` raises IscsiadmError with a readable message."""
        argv = [self.executable, *args]
        shown = " ".join(mask_args(argv))
        limit = self.timeout if timeout is None else timeout
        t0 = time.monotonic()
        try:
            proc = self._runner(argv, limit)
        except subprocess.TimeoutExpired as e:
            raise IscsiadmError(f"{shown}: no answer within {limit:.0f} s",
                                RC_TIMEOUT) from e
        except FileNotFoundError as e:
            raise IscsiadmError(f"{shown}: iscsiadm is not installed (open-iscsi)",
                                RC_NOT_INSTALLED) from e
        log.debug("%s -> %d in %.0f ms", shown, proc.returncode, (time.monotonic() - t0) * 1000)
        if proc.returncode not in ok:
            detail = _last_message(proc.stderr) or _last_message(proc.stdout) or "no message"
            raise IscsiadmError(f"{shown} failed with exit {proc.returncode} "
                                f"({rc_name(proc.returncode)}): {detail}", proc.returncode)
        return proc

    def discover(self, portal_ip: str, port: int = DEFAULT_PORT) -> list[DiscoveredTarget]:
        """Sendtargets discovery at a portal: every target it offers (ACLs are not applied here)."""
        proc = self._run(["-m", "discovery", "-t", "sendtargets", "-p", _portal(portal_ip, port)],
                         ok=(ISCSI_ERR_SUCCESS, ISCSI_ERR_NO_OBJS_FOUND))
        if proc.returncode == ISCSI_ERR_NO_OBJS_FOUND:
            return []
        return parse_discovery(proc.stdout)

    def login(self, target_iqn: str, portal_ip: str, port: int = DEFAULT_PORT) -> None:
        """Log in to a target; an existing session counts as success.

        Creates the node record first when discovery has not (exit 21), sets the login budget on
        it (LOGIN_TIMEO x INITIAL_LOGIN_RETRY_MAX) and waits `login_timeout`, longer than that.
        """
        node = ["-m", "node", "-T", target_iqn, "-p", _portal(portal_ip, port)]
        try:
            self._set_login_budget(node)
        except IscsiadmError as e:
            if e.rc != ISCSI_ERR_NO_OBJS_FOUND:
                raise
            # NOTE: no node record for this target yet: make one, then log in.
            self._run([*node, "-o", "new"])
            self._set_login_budget(node)
        self._run([*node, "--login"], ok=(ISCSI_ERR_SUCCESS, ISCSI_ERR_SESS_EXISTS),
                  timeout=self.login_timeout)

    def _set_login_budget(self, node: list[str]) -> None:
        for name, value in (("node.session.initial_login_retry_max", INITIAL_LOGIN_RETRY_MAX),
                            ("node.conn[0].timeo.login_timeout", LOGIN_TIMEO)):
            self._run([*node, "-o", "update", "-n", name, "-v", str(value)])

    def logout(self, target_iqn: str, portal_ip: str, port: int = DEFAULT_PORT) -> None:
        """Log out of a target at one portal; no session (or no record) there counts as success.

        The caller verifies with `sessions()` that nothing is left: exit 21 only says that this
        one portal's record had no session.
        """
        self._run(["-m", "node", "-T", target_iqn, "-p", _portal(portal_ip, port), "--logout"],
                  ok=(ISCSI_ERR_SUCCESS, ISCSI_ERR_NO_OBJS_FOUND))

    def logout_session(self, sid: int) -> None:
        """Log out of one session by its id, whatever portal or record it came from."""
        self._run(["-m", "session", "-r", str(sid), "-u"],
                  ok=(ISCSI_ERR_SUCCESS, ISCSI_ERR_NO_OBJS_FOUND, ISCSI_ERR_SESS_NOT_FOUND))

    def remove_session(self, session: Session, attempts: int = 5, wait: float = 3.0) -> None:
        """Remove a session even while it is stuck reconnecting to a dead unit (`release --force`).

        open-iscsi refuses to log out a session in reopen with ISCSI_ERR_SESSION_NOT_CONNECTED
        (32, "try again later"). Then: delete its node record (so nothing logs it in again at boot
        or on an iscsid restart) and retry the logout by session id, `attempts` times `wait` s
        apart: iscsid accepts it between two reconnect attempts. The caller has already deleted
        the session's SCSI devices through sysfs, so no I/O can reach the extent meanwhile.
        NOTE: the kernel has no sysfs file that removes an iSCSI session (only iscsid, over
        netlink); if it stays, the error says so (open-iscsi issue 513).
        """
        try:
            self.logout_session(session.sid)
            return
        except IscsiadmError as e:
            if e.rc not in (ISCSI_ERR_SESSION_NOT_CONNECTED, ISCSI_ERR_LOGOUT, ISCSI_ERR_REQ_TIMEDOUT,
                            RC_TIMEOUT, ISCSI_ERR_BUSY, ISCSI_ERR_AGAIN):
                raise
            first = e
        log.warning("session %d to %s is stuck (%s): deleting its node record and retrying",
                    session.sid, session.target_iqn, first.rc_name)
        self.delete_node(session.target_iqn, session.portal_ip, session.port)
        last = first
        for _ in range(attempts):
            self._sleep(wait)
            try:
                self.logout_session(session.sid)
                return
            except IscsiadmError as e:
                last = e
        raise IscsiadmError(
            f"session {session.sid} to {session.target_iqn} at {_portal(session.portal_ip, session.port)} "
            f"is still there after {attempts + 1} logouts ({last}); its node record and SCSI devices "
            "are gone, so it carries no I/O and will not come back at boot; iscsid drops it once the "
            "unit answers again or iscsid is restarted", last.rc) from last

    def delete_node(self, target_iqn: str, portal_ip: str, port: int = DEFAULT_PORT) -> None:
        """Forget the node record of a target (so it is not logged in at boot); none is success."""
        self._run(["-m", "node", "-T", target_iqn, "-p", _portal(portal_ip, port), "-o", "delete"],
                  ok=(ISCSI_ERR_SUCCESS, ISCSI_ERR_NO_OBJS_FOUND))

    def set_replacement_timeout(self, target_iqn: str, portal_ip: str, port: int = DEFAULT_PORT,
                                seconds: int = MIRROR_REPLACEMENT_TIMEOUT) -> None:
        """Set node.session.timeo.replacement_timeout on a node record (before its login).

        It is how long the SCSI layer queues I/O while a session reconnects before failing it
        upwards (open-iscsi's default is 120 s). A mirror member's I/O must fail fast, so md marks
        the member faulty and the array goes on degraded instead of stalling with its unit.
        """
        if seconds < 0:
            raise ValueError(f"replacement timeout {seconds} s is negative")
        self._run(["-m", "node", "-T", target_iqn, "-p", _portal(portal_ip, port), "-o", "update",
                   "-n", "node.session.timeo.replacement_timeout", "-v", str(int(seconds))])

    def set_chap(self, target_iqn: str, portal_ip: str, port: int, username: str,
                 password: str, mutual: tuple[str, str] | None = None) -> None:
        """Set CHAP credentials on a node record (the password never reaches a log line); with
        `mutual` (the target's user and secret) the host checks the target's answer too."""
        node = ["-m", "node", "-T", target_iqn, "-p", _portal(portal_ip, port), "-o", "update"]
        settings = [("node.session.auth.authmethod", "CHAP"),
                    ("node.session.auth.username", username),
                    ("node.session.auth.password", password)]
        if mutual is not None:
            settings += [("node.session.auth.username_in", mutual[0]),
                         ("node.session.auth.password_in", mutual[1])]
        for name, value in settings:
            self._run([*node, "-n", name, "-v", value])

    def node_records(self) -> list[NodeRecord]:
        """Every node record in open-iscsi's database; none is an empty list (exit 21)."""
        proc = self._run(["-m", "node"], ok=(ISCSI_ERR_SUCCESS, ISCSI_ERR_NO_OBJS_FOUND))
        if proc.returncode == ISCSI_ERR_NO_OBJS_FOUND:
            return []
        return parse_node_records(proc.stdout)

    def session_devices(self, target_iqn: str) -> list[str]:
        """Block device names of every session to `target_iqn` (sysfs), on any portal."""
        return find_session_devices(self.sysfs, target_iqn)

    def sessions(self) -> list[Session]:
        """This host's iSCSI sessions; none is an empty list (iscsiadm exits 21 then)."""
        proc = self._run(["-m", "session"], ok=(ISCSI_ERR_SUCCESS, ISCSI_ERR_NO_OBJS_FOUND))
        if proc.returncode == ISCSI_ERR_NO_OBJS_FOUND:
            return []
        return parse_sessions(proc.stdout)

    def wait_for_device(self, target_iqn: str, portal_ip: str, lun: int = 0,
                        timeout: float = 30) -> str:
        """The /dev path of a logged-in target's LUN, waiting for the SCSI scan to make it.

        Looks through sysfs, not udev's /dev/disk/by-path, which may not exist (no udevd).
        """
        deadline = time.monotonic() + timeout
        while True:
            dev = find_session_device(self.sysfs, target_iqn, portal_ip, lun)
            # devtmpfs makes the node itself; it can lag the sysfs entry by a moment.
            if dev is not None and os.path.exists(dev):
                return dev
            if time.monotonic() >= deadline:
                raise IscsiadmError(f"no block device for LUN {lun} of {target_iqn} at {portal_ip} "
                                    f"after {timeout:.0f} s (not logged in, or no such LUN)")
            time.sleep(0.1)

    def initiator_name(self, path: str = "/etc/iscsi/initiatorname.iscsi") -> str:
        """This host's initiator IQN, as open-iscsi will present it."""
        try:
            with open(path) as f:
                return parse_initiator_name(f.read())
        except OSError as e:
            raise IscsiadmError(f"cannot read the initiator name from {path}: {e}") from e


def _last_message(text: str) -> str:
    """The most telling line of iscsiadm's messages: the last naming an error, else the last."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower() or "fail" in ln.lower():
            return ln
    return lines[-1] if lines else ""
