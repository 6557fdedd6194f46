"""host_agent.iscsiadm: parsers on real and malformed output, exit codes, masking, device lookup."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvsan.errors import AdapterError
from host_agent import iscsiadm as ia
from host_agent.iscsiadm import (
    DiscoveredTarget,
    Iscsiadm,
    IscsiadmError,
    IscsiadmParseError,
    Session,
    find_session_device,
    mask_args,
    parse_discovery,
    parse_initiator_name,
    parse_sessions,
)

T2 = "iqn.2026-11.org.dvsan:unit-a:vda2"
T3 = "iqn.2026-11.org.dvsan:unit-a:vda3"

# Real output of open-iscsi 2.1.8 in the lab guests.
DISCOVERY_REAL = f"10.213.77.11:3260,1 {T2}\n10.213.77.11:3260,1 {T3}\n"
SESSIONS_REAL = f"tcp: [1] 10.213.77.11:3260,1 {T2} (non-flash)\n"
LOGIN_AUTH_FAILED_STDERR = (
    f"iscsiadm: Could not login to [iface: default, target: {T2}, portal: 10.213.77.11,3260].\n"
    "iscsiadm: initiator reported error (24 - iSCSI login failed due to authorization failure)\n"
    "iscsiadm: Could not log into all portals\n"
)


def test_gp_parse_discovery_real_sample() -> None:
    assert parse_discovery(DISCOVERY_REAL) == [
        DiscoveredTarget("10.213.77.11", 3260, 1, T2),
        DiscoveredTarget("10.213.77.11", 3260, 1, T3),
    ]


@pytest.mark.parametrize(("text", "want"), [
    ("", []),
    ("\n\n", []),
    ("iscsiadm: No portals found\n", []),
    (f"[fd00::11]:3260,1 {T2}", [DiscoveredTarget("fd00::11", 3260, 1, T2)]),
    (f"  10.0.0.5:3261,7   {T2}  \r\n", [DiscoveredTarget("10.0.0.5", 3261, 7, T2)]),
    (f"unit-a.lab:3260,1 {T2}", [DiscoveredTarget("unit-a.lab", 3260, 1, T2)]),
    ("10.0.0.5:3260,1 eui.0123456789abcdef",
     [DiscoveredTarget("10.0.0.5", 3260, 1, "eui.0123456789abcdef")]),
])
def test_gp_parse_discovery_variants(text: str, want: list[DiscoveredTarget]) -> None:
    assert parse_discovery(text) == want


@pytest.mark.parametrize("text", [
    "garbage",
    f"10.213.77.11:3260 {T2}",                 # no TPGT
    f"10.213.77.11,1 {T2}",                    # no port
    f"10.213.77.11:99999,1 {T2}",              # port out of range
    f"10.213.77.11:0,1 {T2}",
    "10.213.77.11:3260,1",                     # no target
    "10.213.77.11:3260,1 not-an-iqn",
    f"10.213.77.11:3260,1 {T2} extra",
    f"fd00::11:3260,1 {T2}",                   # IPv6 without brackets
    f"[fd00::11:3260,1 {T2}",
    f":3260,1 {T2}",
    f"10.213.77.11:3260,x {T2}",
])
def test_ep_parse_discovery_malformed_is_a_clear_error(text: str) -> None:
    with pytest.raises(IscsiadmParseError) as ei:
        parse_discovery(text)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, AdapterError)
    assert "iscsiadm" in str(ei.value) or "expected" in str(ei.value)


def test_gp_parse_sessions_real_sample() -> None:
    assert parse_sessions(SESSIONS_REAL) == [Session("tcp", 1, "10.213.77.11", 3260, 1, T2)]


@pytest.mark.parametrize(("text", "want"), [
    ("", []),
    ("iscsiadm: No active sessions.\n", []),
    (f"tcp: [12] [fd00::11]:3260,1 {T3}", [Session("tcp", 12, "fd00::11", 3260, 1, T3)]),
    # open-iscsi before 2.0.874 printed no "(non-flash)".
    (f"tcp: [3] 10.0.0.1:3260,1 {T2}\niser: [4] 10.0.0.2:3260,2 {T3} (non-flash)\n",
     [Session("tcp", 3, "10.0.0.1", 3260, 1, T2), Session("iser", 4, "10.0.0.2", 3260, 2, T3)]),
])
def test_gp_parse_sessions_variants(text: str, want: list[Session]) -> None:
    assert parse_sessions(text) == want


@pytest.mark.parametrize("text", [
    "garbage",
    "tcp:",
    f"tcp [1] 10.0.0.1:3260,1 {T2}",           # no colon after the transport
    f"tcp: 1 10.0.0.1:3260,1 {T2}",            # sid without brackets
    f"tcp: [x] 10.0.0.1:3260,1 {T2}",
    f"tcp: [] 10.0.0.1:3260,1 {T2}",
    f"tcp: [1] 10.0.0.1 {T2}",
    "tcp: [1] 10.0.0.1:3260,1",
    f"tcp: [1] 10.0.0.1:3260,1 {T2} (non-flash) extra",
    "tcp: [1] 10.0.0.1:3260,1 foo",
])
def test_ep_parse_sessions_malformed_is_a_clear_error(text: str) -> None:
    with pytest.raises(IscsiadmParseError):
        parse_sessions(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_ep_parsers_never_crash_on_garbage(text: str) -> None:
    for parser in (parse_discovery, parse_sessions, parse_initiator_name, ia.parse_node_records):
        try:
            parser(text)
        except IscsiadmParseError:
            pass


def test_gp_parse_initiator_name() -> None:
    text = ("## DO NOT EDIT OR REMOVE THIS FILE!\n"
            "## If you remove this file, the iSCSI daemon will not start.\n"
            "InitiatorName=iqn.1993-08.org.debian:01:5e4f3a2b1c0d\n")
    assert parse_initiator_name(text) == "iqn.1993-08.org.debian:01:5e4f3a2b1c0d"
    assert parse_initiator_name("  InitiatorName= iqn.2026-11.org.dvsan.lab:host-b \n") == \
        "iqn.2026-11.org.dvsan.lab:host-b"


@pytest.mark.parametrize("text", ["", "# InitiatorName=iqn.x", "InitiatorName=", "Initiator=iqn.x"])
def test_ep_parse_initiator_name_missing(text: str) -> None:
    with pytest.raises(IscsiadmParseError, match="InitiatorName"):
        parse_initiator_name(text)


PW, PW_IN = "node.session.auth.password", "node.session.auth.password_in"


@pytest.mark.parametrize(("args", "want"), [
    (["-n", PW, "-v", "s3cret"], ["-n", PW, "-v", "********"]),
    (["-n", PW_IN, "-v", "s3cret"], ["-n", PW_IN, "-v", "********"]),
    (["--name=discovery.sendtargets.auth.password", "--value=s3cret"],
     ["--name=discovery.sendtargets.auth.password", "--value=********"]),
    (["-n", "node.session.auth.username", "-v", "alice"],
     ["-n", "node.session.auth.username", "-v", "alice"]),
    (["-m", "session"], ["-m", "session"]),
    (["-n", "node.session.auth.password"], ["-n", "node.session.auth.password"]),
])
def test_gp_mask_args(args: list[str], want: list[str]) -> None:
    assert mask_args(args) == want


def test_gp_rc_names_follow_iscsi_err_h() -> None:
    assert (ia.ISCSI_ERR_SUCCESS, ia.ISCSI_ERR_IDBM, ia.ISCSI_ERR_TRANS_TIMEOUT,
            ia.ISCSI_ERR_SESS_EXISTS, ia.ISCSI_ERR_NO_OBJS_FOUND,
            ia.ISCSI_ERR_LOGIN_AUTH_FAILED) == (0, 6, 8, 15, 21, 24)
    assert ia.rc_name(24) == "ISCSI_ERR_LOGIN_AUTH_FAILED"
    # open-iscsi 2.0.877+ (32) and 2.1.6+ (33)
    assert ia.rc_name(32) == "ISCSI_ERR_SESSION_NOT_CONNECTED"
    assert ia.rc_name(33) == "ISCSI_ERR_REQ_TIMEDOUT"
    assert ia.rc_name(0) == "ISCSI_ERR_SUCCESS"
    assert ia.rc_name(99) == "unknown exit code 99"
    assert ia.rc_name(None) == "no exit code"


# ---- the adapter with a scripted runner -------------------------------------------------------

class Script:
    """Stands in for subprocess.run: answers each call from a list of (rc, stdout, stderr)."""

    def __init__(self, *answers: tuple[int, str, str] | BaseException) -> None:
        self.answers = list(answers)
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        a = self.answers.pop(0)
        if isinstance(a, BaseException):
            raise a
        return subprocess.CompletedProcess(argv, a[0], a[1], a[2])


NODE2 = ["iscsiadm", "-m", "node", "-T", T2, "-p", "10.213.77.11:3260"]


def budget(node: list[str]) -> list[list[str]]:
    """The two updates that pin the login budget on a node record before each login."""
    return [[*node, "-o", "update", "-n", "node.session.initial_login_retry_max", "-v", "8"],
            [*node, "-o", "update", "-n", "node.conn[0].timeo.login_timeout", "-v", "15"]]


def test_gp_login_existing_session_is_success() -> None:
    run = Script((0, "", ""), (0, "", ""),
                 (15, "", "iscsiadm: default: 1 session requested, but 1 already present.\n"))
    Iscsiadm(runner=run).login(T2, "10.213.77.11")
    assert run.calls == [*budget(NODE2), [*NODE2, "--login"]]


def test_gp_login_without_node_record_creates_one() -> None:
    run = Script((21, "", "iscsiadm: No records found\n"), (0, "", ""), (0, "", ""), (0, "", ""),
                 (0, "Login ... successful.\n", ""))
    Iscsiadm(runner=run).login(T2, "fd00::11", 3261)
    node = ["iscsiadm", "-m", "node", "-T", T2, "-p", "[fd00::11]:3261"]
    assert run.calls == [budget(node)[0], [*node, "-o", "new"], *budget(node), [*node, "--login"]]


class TimedScript(Script):
    """A Script that also records the timeout each call was given."""

    def __init__(self, *answers: tuple[int, str, str] | BaseException) -> None:
        super().__init__(*answers)
        self.timeouts: list[float] = []

    def __call__(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.timeouts.append(timeout)
        return super().__call__(argv, timeout)


def test_gp_login_waits_longer_than_open_iscsis_own_login_budget() -> None:
    """Item 12: the budget is pinned on the record (8 x 15 s = 120 s) and the login waits 150 s."""
    assert ia.LOGIN_BUDGET == ia.INITIAL_LOGIN_RETRY_MAX * ia.LOGIN_TIMEO == 120
    run = TimedScript((0, "", ""), (0, "", ""), (0, "", ""))
    Iscsiadm(runner=run).login(T2, "10.213.77.11")
    assert run.calls[-1][-1] == "--login"
    assert run.timeouts[-1] == ia.LOGIN_RUN_TIMEOUT == 150 > ia.LOGIN_BUDGET
    assert run.timeouts[:2] == [60.0, 60.0]   # other calls keep the ordinary timeout


def test_ep_a_login_timeout_inside_the_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="must exceed open-iscsi's login budget of 120 s"):
        Iscsiadm(runner=Script(), login_timeout=120)


def test_ep_login_that_outlives_our_wait_says_so() -> None:
    run = Script((0, "", ""), (0, "", ""), subprocess.TimeoutExpired(["iscsiadm"], 150))
    with pytest.raises(IscsiadmError, match="no answer within 150 s") as ei:
        Iscsiadm(runner=run).login(T2, "10.213.77.11")
    assert ei.value.rc == ia.RC_TIMEOUT


def test_ep_login_refused_carries_rc_and_a_readable_message() -> None:
    run = Script((0, "", ""), (0, "", ""), (24, "Logging in to [...]\n", LOGIN_AUTH_FAILED_STDERR))
    with pytest.raises(IscsiadmError) as ei:
        Iscsiadm(runner=run).login(T2, "10.213.77.11")
    e = ei.value
    assert e.rc == ia.ISCSI_ERR_LOGIN_AUTH_FAILED and e.rc_name == "ISCSI_ERR_LOGIN_AUTH_FAILED"
    assert "exit 24 (ISCSI_ERR_LOGIN_AUTH_FAILED)" in str(e)
    assert "authorization failure" in str(e)


@pytest.mark.parametrize("method", ["logout", "delete_node"])
def test_gp_logout_and_delete_of_nothing_are_success(method: str) -> None:
    run = Script((21, "", "iscsiadm: No matching sessions found\n"))
    getattr(Iscsiadm(runner=run), method)(T2, "10.213.77.11", 3260)
    assert len(run.calls) == 1


def test_gp_no_sessions_and_no_portals_are_empty_lists() -> None:
    run = Script((21, "", "iscsiadm: No active sessions.\n"),
                 (21, "", "iscsiadm: No portals found\n"))
    a = Iscsiadm(runner=run)
    assert a.sessions() == []
    assert a.discover("10.213.77.11") == []


def test_gp_sessions_and_discovery_parse_output() -> None:
    run = Script((0, SESSIONS_REAL, ""), (0, DISCOVERY_REAL, ""))
    a = Iscsiadm(runner=run)
    assert a.sessions()[0].target_iqn == T2
    assert [t.target_iqn for t in a.discover("10.213.77.11")] == [T2, T3]
    assert run.calls[1] == ["iscsiadm", "-m", "discovery", "-t", "sendtargets",
                            "-p", "10.213.77.11:3260"]


@pytest.mark.parametrize(("answer", "rc", "fragment"), [
    (subprocess.TimeoutExpired(["iscsiadm"], 5), ia.RC_TIMEOUT, "no answer within"),
    (FileNotFoundError("iscsiadm"), ia.RC_NOT_INSTALLED, "not installed"),
    ((20, "", "iscsiadm: can not connect to iSCSI daemon (111)!\n"), ia.ISCSI_ERR_ISCSID_NOTCONN,
     "can not connect to iSCSI daemon"),
    ((4, "", "iscsiadm: cannot make connection to 10.213.77.11: No route to host\n"),
     ia.ISCSI_ERR_TRANS,
     "No route to host"),
    ((6, "", ""), ia.ISCSI_ERR_IDBM, "no message"),
])
def test_ep_failures_are_iscsiadm_errors(answer: tuple[int, str, str] | BaseException, rc: int,
                                         fragment: str) -> None:
    with pytest.raises(IscsiadmError, match=fragment) as ei:
        Iscsiadm(runner=Script(answer)).sessions()
    assert ei.value.rc == rc


def test_ep_garbage_output_of_a_successful_run_is_a_parse_error() -> None:
    with pytest.raises(IscsiadmParseError):
        Iscsiadm(runner=Script((0, "tcp: [1] garbage\n", ""))).sessions()


def test_gp_chap_password_never_reaches_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="host_agent.iscsiadm")
    run = Script((0, "", ""), (0, "", ""), (6, "", "iscsiadm: Could not update record\n"))
    with pytest.raises(IscsiadmError) as ei:
        Iscsiadm(runner=run).set_chap(T2, "10.213.77.11", 3260, "alice", "t0p-s3cret")
    assert run.calls[2][-1] == "t0p-s3cret"               # the real value went to iscsiadm
    assert "t0p-s3cret" not in str(ei.value)
    assert "t0p-s3cret" not in caplog.text and "********" in caplog.text


def test_gp_replacement_timeout_goes_on_the_node_record() -> None:
    run = Script((0, "", ""))
    Iscsiadm(runner=run).set_replacement_timeout(T2, "10.213.77.11", 3260, 5)
    assert run.calls == [["iscsiadm", "-m", "node", "-T", T2, "-p", "10.213.77.11:3260", "-o", "update",
                          "-n", "node.session.timeo.replacement_timeout", "-v", "5"]]


def test_ep_replacement_timeout_without_a_node_record_is_an_error() -> None:
    with pytest.raises(IscsiadmError, match="replacement_timeout") as ei:
        Iscsiadm(runner=Script((21, "", "iscsiadm: No records found\n"))).set_replacement_timeout(T2, "10.0.0.1", 3260, 5)
    assert ei.value.rc == 21
    with pytest.raises(ValueError, match="negative"):
        Iscsiadm(runner=Script()).set_replacement_timeout(T2, "10.0.0.1", 3260, -1)


# ---- finding the block device through sysfs ---------------------------------------------------

def fake_session(sysfs: Path, sid: int, target: str, ip: str, hctl: str, block: str | None) -> None:
    s = sysfs / "class" / "iscsi_session" / f"session{sid}"
    s.mkdir(parents=True)
    (s / "targetname").write_text(target + "\n")
    host, _, tgt, _ = hctl.split(":")
    dev = s / "device" / f"target{host}:0:{tgt}" / hctl
    dev.mkdir(parents=True)
    if block:
        (dev / "block" / block).mkdir(parents=True)
    c = sysfs / "class" / "iscsi_connection" / f"connection{sid}:0"
    c.mkdir(parents=True)
    (c / "persistent_address").write_text(ip + "\n")


def test_gp_find_session_device(tmp_path: Path) -> None:
    fake_session(tmp_path, 1, T3, "10.213.77.11", "2:0:0:0", "sda")
    fake_session(tmp_path, 2, T2, "10.213.77.99", "3:0:0:0", "sdb")   # same target, other portal
    fake_session(tmp_path, 3, T2, "10.213.77.11", "4:0:0:0", "sdc")
    assert find_session_device(str(tmp_path), T2, "10.213.77.11") == "/dev/sdc"
    assert find_session_device(str(tmp_path), T3, "10.213.77.11") == "/dev/sda"
    assert find_session_device(str(tmp_path), T2, "10.213.77.11", lun=1) is None
    assert find_session_device(str(tmp_path), "iqn.2026-11.org.dvsan:unit-a:nope", None) is None


def test_ep_find_session_device_before_the_scan_and_without_sysfs(tmp_path: Path) -> None:
    fake_session(tmp_path, 1, T2, "10.213.77.11", "2:0:0:0", None)
    assert find_session_device(str(tmp_path), T2, "10.213.77.11") is None
    assert find_session_device(str(tmp_path / "nothing"), T2, "10.213.77.11") is None


def test_ep_wait_for_device_times_out_with_a_clear_error(tmp_path: Path) -> None:
    a = Iscsiadm(sysfs=str(tmp_path), runner=Script())
    with pytest.raises(IscsiadmError, match="no block device for LUN 0"):
        a.wait_for_device(T2, "10.213.77.11", timeout=0.2)


# ---- node records, logout by session id, and a session stuck reconnecting ----------------------

NODES_REAL = f"10.213.77.11:3260,1 {T2}\n10.213.77.12:3260,1 {T2}\n10.213.77.11:3260,1 {T3}\n"
STUCK_STDERR = (f"iscsiadm: Could not logout of [sid: 4, target: {T2}, portal: 10.213.77.11,3260].\n"
                "iscsiadm: initiator reported error (32 - target likely not connected)\n"
                "iscsiadm: Could not logout of all requested sessions\n")
STUCK = Session("tcp", 4, "10.213.77.11", 3260, 1, T2)


def test_gp_node_records_parse_and_none_is_empty() -> None:
    run = Script((0, NODES_REAL, ""), (21, "", "iscsiadm: No records found\n"))
    a = Iscsiadm(runner=run)
    assert a.node_records() == [ia.NodeRecord("10.213.77.11", 3260, 1, T2),
                                ia.NodeRecord("10.213.77.12", 3260, 1, T2),
                                ia.NodeRecord("10.213.77.11", 3260, 1, T3)]
    assert a.node_records() == []
    assert run.calls[0] == ["iscsiadm", "-m", "node"]


def test_ep_node_records_garbage_is_a_parse_error() -> None:
    with pytest.raises(IscsiadmParseError):
        Iscsiadm(runner=Script((0, "10.0.0.1 garbage\n", ""))).node_records()


def test_gp_remove_session_logs_out_by_session_id() -> None:
    run = Script((0, "Logout of [sid: 4, ...] successful.\n", ""))
    Iscsiadm(runner=run, sleep=lambda s: None).remove_session(STUCK)
    assert run.calls == [["iscsiadm", "-m", "session", "-r", "4", "-u"]]


def test_gp_remove_session_stuck_reconnecting_deletes_the_record_and_retries() -> None:
    """Item 12: exit 32 is not the end: the record goes and a later logout by id succeeds."""
    waits: list[float] = []
    run = Script((32, "", STUCK_STDERR), (0, "", ""), (32, "", STUCK_STDERR), (0, "", ""))
    Iscsiadm(runner=run, sleep=waits.append).remove_session(STUCK, attempts=3, wait=2.0)
    logout = ["iscsiadm", "-m", "session", "-r", "4", "-u"]
    assert run.calls == [logout, [*NODE2, "-o", "delete"], logout, logout]
    assert waits == [2.0, 2.0]


def test_ep_remove_session_that_stays_stuck_says_what_is_left_and_why() -> None:
    run = Script((32, "", STUCK_STDERR), (0, "", ""), (32, "", STUCK_STDERR), (32, "", STUCK_STDERR))
    with pytest.raises(IscsiadmError) as ei:
        Iscsiadm(runner=run, sleep=lambda s: None).remove_session(STUCK, attempts=2)
    msg = str(ei.value)
    assert ei.value.rc == ia.ISCSI_ERR_SESSION_NOT_CONNECTED
    assert "session 4" in msg and "still there after 3 logouts" in msg
    assert "ISCSI_ERR_SESSION_NOT_CONNECTED" in msg and "node record and SCSI devices are gone" in msg


def test_ep_remove_session_other_failures_are_not_retried() -> None:
    run = Script((20, "", "iscsiadm: can not connect to iSCSI daemon (111)!\n"))
    with pytest.raises(IscsiadmError, match="iSCSI daemon") as ei:
        Iscsiadm(runner=run, sleep=lambda s: None).remove_session(STUCK)
    assert ei.value.rc == ia.ISCSI_ERR_ISCSID_NOTCONN and len(run.calls) == 1


def test_ep_plain_logout_of_a_stuck_session_is_an_error_naming_32() -> None:
    with pytest.raises(IscsiadmError, match=r"exit 32 \(ISCSI_ERR_SESSION_NOT_CONNECTED\)"):
        Iscsiadm(runner=Script((32, "", STUCK_STDERR))).logout_session(4)


def test_gp_find_session_devices_on_every_portal(tmp_path: Path) -> None:
    fake_session(tmp_path, 1, T2, "10.213.77.11", "2:0:0:0", "sda")
    fake_session(tmp_path, 2, T2, "10.213.77.12", "3:0:0:0", "sdb")
    fake_session(tmp_path, 3, T3, "10.213.77.11", "4:0:0:0", "sdc")
    fake_session(tmp_path, 5, T2, "10.213.77.13", "5:0:0:0", None)   # before the scan
    assert ia.find_session_devices(str(tmp_path), T2) == ["sda", "sdb"]
    assert Iscsiadm(sysfs=str(tmp_path), runner=Script()).session_devices(T3) == ["sdc"]
    assert ia.find_session_devices(str(tmp_path / "none"), T2) == []
