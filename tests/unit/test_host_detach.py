"""host_agent.detach: release refuses while the device is in use and changes nothing; otherwise flush,
delete the SCSI device, log out everywhere, delete node records, and verify nothing is left."""

from __future__ import annotations

from typing import Any

import pytest

from dvsan.errors import Conflict
from host_agent.blockdev import BlockDeviceError, DeviceInUse
from host_agent.detach import LeftBehind, detach, portals_of
from host_agent.iscsiadm import ISCSI_ERR_SESSION_NOT_CONNECTED, IscsiadmError, NodeRecord, Session

T = "iqn.2026-11.org.dvsan:unit-a:vda2"
OTHER = "iqn.2026-11.org.dvsan:unit-a:vda3"
HELD: dict[str, Any] = {"id": 7, "target_iqn": T, "unit_address": "10.0.0.1", "portal_address": "10.0.0.1",
                        "portal_port": 3260, "lun": 0}


class FakeIscsi:
    """open-iscsi as a little world: sessions, node records and devices that logout/delete change."""

    def __init__(self, sessions: list[Session] | None = None, nodes: list[NodeRecord] | None = None,
                 devices: dict[str, list[str]] | None = None, stuck: set[int] | None = None,
                 ignore_logout: bool = False) -> None:
        self._sessions = list(sessions or [])
        self.nodes = list(nodes or [])
        self.devices = dict(devices or {})
        self.stuck = set(stuck or ())            # sids that refuse a plain logout with exit 32
        self.ignore_logout = ignore_logout       # logout "succeeds" (exit 21) but leaves the session
        self.calls: list[tuple[Any, ...]] = []

    def discover(self, portal_ip: str, port: int) -> list[Any]:
        self.calls.append(("discover", portal_ip, port))
        return []

    def set_chap(self, target_iqn: str, portal_ip: str, port: int, username: str, password: str,
                 mutual: tuple[str, str] | None = None) -> None:
        self.calls.append(("chap", target_iqn, portal_ip, port, username))
        self.chap = getattr(self, "chap", {})
        self.chap[(target_iqn, portal_ip, port)] = (username, password)

    def login(self, target_iqn: str, portal_ip: str, port: int) -> None:
        self.calls.append(("login", target_iqn, portal_ip, port))
        if not any(n == NodeRecord(portal_ip, port, 1, target_iqn) for n in self.nodes):
            self.nodes.append(NodeRecord(portal_ip, port, 1, target_iqn))
        if not any(s.target_iqn == target_iqn and s.portal_ip == portal_ip for s in self._sessions):
            sid = max((s.sid for s in self._sessions), default=0) + 1
            self._sessions.append(Session("tcp", sid, portal_ip, port, 1, target_iqn))
            self.devices.setdefault(target_iqn, []).append(f"sd{chr(ord('a') + sid)}")

    def wait_for_device(self, target_iqn: str, portal_ip: str, lun: int, timeout: float) -> str:
        return f"/dev/{self.devices[target_iqn][0]}"

    def _drop(self, s: Session) -> None:
        self._sessions.remove(s)
        if not any(x.target_iqn == s.target_iqn for x in self._sessions):
            self.devices.pop(s.target_iqn, None)

    def logout(self, target_iqn: str, portal_ip: str, port: int) -> None:
        self.calls.append(("logout", target_iqn, portal_ip, port))
        for s in [s for s in self._sessions if (s.target_iqn, s.portal_ip, s.port) == (target_iqn, portal_ip, port)]:
            if s.sid in self.stuck:
                raise IscsiadmError("logout failed with exit 32", ISCSI_ERR_SESSION_NOT_CONNECTED)
            if not self.ignore_logout:
                self._drop(s)

    def logout_session(self, sid: int) -> None:
        self.calls.append(("logout_session", sid))
        for s in [s for s in self._sessions if s.sid == sid]:
            if sid in self.stuck:
                raise IscsiadmError("logout failed with exit 32", ISCSI_ERR_SESSION_NOT_CONNECTED)
            if not self.ignore_logout:
                self._drop(s)

    def remove_session(self, session: Session) -> None:
        self.calls.append(("remove_session", session.sid))
        self.stuck.discard(session.sid)   # what the real retry loop achieves between reconnects
        self.logout_session(session.sid)

    def delete_node(self, target_iqn: str, portal_ip: str, port: int) -> None:
        self.calls.append(("delete_node", target_iqn, portal_ip, port))
        self.nodes = [n for n in self.nodes if (n.target_iqn, n.portal_ip, n.port) != (target_iqn, portal_ip, port)]

    def node_records(self) -> list[NodeRecord]:
        return list(self.nodes)

    def sessions(self) -> list[Session]:
        return list(self._sessions)

    def session_devices(self, target_iqn: str) -> list[str]:
        return list(self.devices.get(target_iqn, []))


class FakeBlock:
    """The block layer: `users` per device name; records flush and delete."""

    def __init__(self, users: dict[str, list[str]] | None = None, fail: Exception | None = None) -> None:
        self._users = users or {}
        self.fail = fail
        self.calls: list[tuple[str, str]] = []

    def users(self, name: str) -> list[str]:
        if self.fail:
            raise self.fail
        return list(self._users.get(name, []))

    def flush(self, name: str) -> None:
        self.calls.append(("flush", name))

    def delete_scsi_device(self, name: str) -> None:
        self.calls.append(("delete", name))


def logged_in(*portals: str) -> FakeIscsi:
    iscsi = FakeIscsi()
    for p in portals:
        iscsi.login(T, p, 3260)
    iscsi.login(OTHER, "10.0.0.1", 3260)   # another volume of this host: never touched
    iscsi.calls.clear()
    return iscsi


def test_gp_release_flushes_deletes_the_device_logs_out_and_verifies() -> None:
    iscsi, block = logged_in("10.0.0.1"), FakeBlock()
    assert detach(HELD, iscsi, block) == []
    assert block.calls == [("flush", "sdb"), ("delete", "sdb")]
    assert iscsi.calls[0] == ("logout", T, "10.0.0.1", 3260)
    assert ("delete_node", T, "10.0.0.1", 3260) in iscsi.calls
    assert [s.target_iqn for s in iscsi.sessions()] == [OTHER]
    assert [n.target_iqn for n in iscsi.node_records()] == [OTHER]


def test_gp_release_logs_out_of_every_portal_and_record_of_the_target() -> None:
    iscsi = logged_in("10.0.0.1", "10.0.0.2")   # sync added a second portal the record knows not
    detach(HELD, iscsi, FakeBlock())
    assert [s.target_iqn for s in iscsi.sessions()] == [OTHER]
    assert ("logout_session", 2) in iscsi.calls and ("delete_node", T, "10.0.0.2", 3260) in iscsi.calls


def test_ep_release_of_a_mounted_device_is_refused_naming_the_mount_and_changes_nothing() -> None:
    iscsi = logged_in("10.0.0.1")
    block = FakeBlock({"sdb": ["sdb1 is mounted at /mnt/data"]})
    with pytest.raises(DeviceInUse, match="sdb1 is mounted at /mnt/data.*or use --force"):
        detach(HELD, iscsi, block)
    assert block.calls == [] and iscsi.calls == []
    assert len(iscsi.sessions()) == 2


def test_ep_release_when_usage_cannot_be_read_is_refused() -> None:
    iscsi = logged_in("10.0.0.1")
    block = FakeBlock(fail=BlockDeviceError("cannot read /proc/self/mountinfo: Permission denied"))
    with pytest.raises(Conflict, match="refusing to take assignment 7 off.*mountinfo"):
        detach(HELD, iscsi, block)
    assert iscsi.calls == [] and block.calls == []


def test_gp_force_goes_past_a_mount_and_says_so() -> None:
    iscsi = logged_in("10.0.0.1")
    block = FakeBlock({"sdb": ["sdb1 is mounted at /mnt/data"]})
    warnings = detach(HELD, iscsi, block, force=True)
    assert warnings == ["--force: going ahead although sdb1 is mounted at /mnt/data"]
    assert [s.target_iqn for s in iscsi.sessions()] == [OTHER]


def test_ep_no_matching_session_is_not_success_until_verified() -> None:
    """iscsiadm's exit 21 said 'no session' but one is still there: release must fail."""
    iscsi = logged_in("10.0.0.1")
    iscsi.ignore_logout = True
    with pytest.raises(LeftBehind, match=r"session 1 at 10.0.0.1:3260.*block device /dev/sdb"):
        detach(HELD, iscsi, FakeBlock())


def test_ep_stuck_session_without_force_is_an_error_pointing_at_force() -> None:
    iscsi = logged_in("10.0.0.1")
    iscsi.stuck = {1}
    with pytest.raises(LeftBehind, match=r"exit 32.*release --force"):
        detach(HELD, iscsi, FakeBlock())


def test_gp_force_removes_a_session_stuck_reconnecting() -> None:
    iscsi = logged_in("10.0.0.1")
    iscsi.stuck = {1}
    detach(HELD, iscsi, FakeBlock(), force=True)
    assert ("remove_session", 1) in iscsi.calls
    assert [s.target_iqn for s in iscsi.sessions()] == [OTHER]


def test_ep_node_record_left_behind_is_an_error() -> None:
    iscsi = logged_in("10.0.0.1")
    iscsi.nodes.append(NodeRecord("10.0.0.9", 3260, 1, T))

    def keep_9(target: str, ip: str, port: int) -> None:   # a delete that silently does nothing
        iscsi.calls.append(("delete_node", target, ip, port))
        iscsi.nodes = [n for n in iscsi.nodes if n.portal_ip == "10.0.0.9" or n.target_iqn != target
                       or n.portal_ip != ip]

    iscsi.delete_node = keep_9  # type: ignore[method-assign,assignment]
    with pytest.raises(LeftBehind, match="node record at 10.0.0.9:3260"):
        detach(HELD, iscsi, FakeBlock())


def test_gp_portals_of_old_and_new_records() -> None:
    assert portals_of({"unit_address": "10.0.0.1", "portal_port": 3260}) == [("10.0.0.1", 3260)]
    assert portals_of({**HELD, "portals": [["10.0.0.1", 3260], ["10.0.0.2", 3261]]}) == \
        [("10.0.0.1", 3260), ("10.0.0.2", 3261)]
