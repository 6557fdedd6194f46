"""host_agent.detach, the cases its mutants showed untested: the portal a record names, what
--force goes past and says, the failures a LeftBehind names, and what is logged."""

from __future__ import annotations

import logging

import pytest

from dvsan.errors import AdapterError, Conflict
from host_agent.blockdev import BlockDeviceError, DeviceInUse
from host_agent.detach import LeftBehind, detach, portals_of
from host_agent.iscsiadm import IscsiadmError, NodeRecord
from tests.unit.test_host_detach import HELD, OTHER, FakeBlock, FakeIscsi, T, logged_in


class FailingBlock(FakeBlock):
    """A block layer whose flush or delete of a device fails."""

    def __init__(self, failing: str) -> None:
        super().__init__()
        self.failing = failing

    def flush(self, name: str) -> None:
        super().flush(name)
        if self.failing == "flush":
            raise BlockDeviceError(f"cannot flush /dev/{name}: I/O error")

    def delete_scsi_device(self, name: str) -> None:
        super().delete_scsi_device(name)
        if self.failing == "delete":
            raise BlockDeviceError(f"cannot delete /dev/{name}: busy")


def test_gp_the_portal_a_record_names_comes_first_not_the_units_address() -> None:
    held = {"unit_address": "10.0.0.1", "portal_address": "192.168.7.1", "portal_port": "3261"}
    assert portals_of(held) == [("192.168.7.1", 3261)]
    assert portals_of({**held, "portal_address": None}) == [("10.0.0.1", 3261)]
    held_more = {**held, "portals": [("10.0.0.2", "3260"), ("192.168.7.1", 3261)]}
    assert portals_of(held_more) == [("192.168.7.1", 3261), ("10.0.0.2", 3260)]


def test_gp_release_logs_out_at_the_portal_the_record_names() -> None:
    iscsi = FakeIscsi()
    iscsi.login(T, "192.168.7.1", 3260)
    iscsi.calls.clear()
    held = {**HELD, "portal_address": "192.168.7.1"}
    assert detach(held, iscsi, FakeBlock()) == []
    assert iscsi.calls[0] == ("logout", T, "192.168.7.1", 3260)
    assert iscsi.sessions() == [] and iscsi.node_records() == []


def test_ep_in_use_names_every_device_and_every_user() -> None:
    iscsi = logged_in("10.0.0.1", "10.0.0.2")        # two sessions: sdb and sdc
    block = FakeBlock({"sdb": ["sdb1 is mounted at /mnt/a"], "sdc": ["sdc is held by dm-0"]})
    with pytest.raises(DeviceInUse) as e:
        detach(HELD, iscsi, block)
    assert str(e.value) == ("/dev/sdb, sdc is in use: sdb1 is mounted at /mnt/a; sdc is held by dm-0; "
                            "unmount or stop them first, or use --force")
    assert block.calls == [] and iscsi.calls == []


def test_gp_force_goes_past_usage_it_cannot_read_and_says_why() -> None:
    iscsi = logged_in("10.0.0.1")
    block = FakeBlock(fail=BlockDeviceError("cannot read /proc/self/mountinfo: Permission denied"))
    warnings = detach(HELD, iscsi, block, force=True)
    assert warnings == ["--force: going ahead although cannot read /proc/self/mountinfo: Permission denied"]
    assert block.calls == [("flush", "sdb"), ("delete", "sdb")]
    assert [s.target_iqn for s in iscsi.sessions()] == [OTHER]


@pytest.mark.parametrize("failing, step, why", [
    ("flush", "flush", "cannot flush /dev/sdb: I/O error"),
    ("delete", "delete SCSI device", "cannot delete /dev/sdb: busy"),
])
def test_ep_a_failed_flush_or_delete_stops_a_release_before_logout(failing: str, step: str, why: str) -> None:
    iscsi = logged_in("10.0.0.1")
    with pytest.raises(BlockDeviceError, match=why):
        detach(HELD, iscsi, FailingBlock(failing))
    assert iscsi.calls == [] and len(iscsi.sessions()) == 2


@pytest.mark.parametrize("failing, step, why", [
    ("flush", "flush", "cannot flush /dev/sdb: I/O error"),
    ("delete", "delete SCSI device", "cannot delete /dev/sdb: busy"),
])
def test_gp_force_goes_past_a_failed_flush_or_delete_and_says_which(
        failing: str, step: str, why: str, caplog: pytest.LogCaptureFixture) -> None:
    iscsi = logged_in("10.0.0.1")
    block = FailingBlock(failing)
    with caplog.at_level(logging.WARNING, logger="host_agent.detach"):
        warnings = detach(HELD, iscsi, block, force=True)
    assert warnings == [f"--force: {step} of sdb failed: {why}"]
    assert block.calls == [("flush", "sdb"), ("delete", "sdb")]     # the other step still ran
    assert [s.target_iqn for s in iscsi.sessions()] == [OTHER]
    assert [r.getMessage() for r in caplog.records] == [f"assignment 7: --force: {step} of sdb failed: {why}"]


def test_ep_left_behind_names_each_failed_step_and_no_force_hint_under_force() -> None:
    iscsi = logged_in("10.0.0.1")
    iscsi.stuck = {1}

    def refuse(session: object) -> None:       # even the forced removal fails
        raise IscsiadmError("cannot remove session 1: still reconnecting", 32)

    iscsi.remove_session = refuse  # type: ignore[method-assign,assignment]
    with pytest.raises(LeftBehind) as e:
        detach(HELD, iscsi, FakeBlock(), force=True)
    text = str(e.value)
    assert text.startswith(f"assignment 7: {T} is not gone from this host: session 1 at 10.0.0.1:3260, "
                           "block device /dev/sdb remain (")
    assert "logout failed with exit 32; cannot remove session 1: still reconnecting" in text
    assert text.endswith("still reconnecting)")           # no hint to use the --force already given


def test_ep_left_behind_with_no_failure_says_so_and_hints_at_force() -> None:
    iscsi = logged_in("10.0.0.1")
    iscsi.ignore_logout = True
    with pytest.raises(LeftBehind) as e:
        detach(HELD, iscsi, FakeBlock())
    assert str(e.value) == (
        f"assignment 7: {T} is not gone from this host: session 1 at 10.0.0.1:3260, block device /dev/sdb "
        "remain (no step reported a failure) (`release --force` removes a session stuck reconnecting to a "
        "dead unit)")
    assert isinstance(e.value, AdapterError)


def test_gp_without_force_a_session_is_logged_out_by_sid_never_removed() -> None:
    iscsi = logged_in("10.0.0.1", "10.0.0.2")
    held = {**HELD, "portal_address": "10.0.0.1"}
    iscsi.logout = lambda *a: iscsi.calls.append(("logout", *a))  # type: ignore[method-assign,assignment,func-returns-value]
    detach(held, iscsi, FakeBlock())
    assert ("logout_session", 1) in iscsi.calls and ("logout_session", 2) in iscsi.calls
    assert not [c for c in iscsi.calls if c[0] == "remove_session"]
    assert [s.target_iqn for s in iscsi.sessions()] == [OTHER]


def test_gp_harmless_failures_are_logged_when_nothing_is_left(caplog: pytest.LogCaptureFixture) -> None:
    iscsi = logged_in("10.0.0.1")

    def fail_delete(target: str, ip: str, port: int) -> None:
        iscsi.nodes = [n for n in iscsi.nodes if n.target_iqn != target]
        raise IscsiadmError(f"no records found for {target}", 21)

    iscsi.delete_node = fail_delete  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.INFO, logger="host_agent.detach"):
        assert detach(HELD, iscsi, FakeBlock()) == []
    assert [r.getMessage() for r in caplog.records] == [
        f"assignment 7: no records found for {T} (nothing is left, so this was harmless)"]


def test_gp_node_records_of_the_target_at_other_portals_are_deleted_too() -> None:
    iscsi = logged_in("10.0.0.1")
    iscsi.nodes.append(NodeRecord("10.0.0.9", 3262, 1, T))
    detach(HELD, iscsi, FakeBlock())
    assert ("delete_node", T, "10.0.0.9", 3262) in iscsi.calls
    assert [n.target_iqn for n in iscsi.node_records()] == [OTHER]


def test_ep_usage_that_cannot_be_read_is_refused_pointing_at_force() -> None:
    iscsi = logged_in("10.0.0.1")
    block = FakeBlock(fail=BlockDeviceError("cannot read /proc/self/mountinfo: Permission denied"))
    with pytest.raises(Conflict) as e:
        detach(HELD, iscsi, block)
    assert str(e.value) == ("refusing to take assignment 7 off this host: cannot read /proc/self/mountinfo: "
                            "Permission denied (--force to go ahead anyway)")


def test_gp_force_names_every_user_of_every_device() -> None:
    iscsi = logged_in("10.0.0.1", "10.0.0.2")        # sdb and sdc
    block = FakeBlock({"sdb": ["sdb1 is mounted at /mnt/a"], "sdc": ["sdc is held by dm-0"]})
    assert detach(HELD, iscsi, block, force=True) == ["--force: going ahead although sdb1 is mounted at /mnt/a",
                                                      "--force: going ahead although sdc is held by dm-0"]
