"""Logging in to one assignment's target: node record, CHAP, (mirror members) a short replacement
timeout, login, and the wait for its block device. Shared by `request` and `sync`."""

from __future__ import annotations

from typing import Any, Protocol

from host_agent.detach import IscsiPort

Record = dict[str, Any]


class MirrorIscsiPort(IscsiPort, Protocol):
    """open-iscsi as a mirror member needs it: the node record's replacement timeout as well."""

    def set_replacement_timeout(self, target_iqn: str, portal_ip: str, port: int, seconds: int) -> None: ...


def set_chap(iscsi: IscsiPort, a: Record, portal: str, port: int) -> None:
    """The assignment's CHAP on its node record, before any login (the unit requires it); mutual
    too when the assignment has it (the host then checks the unit's answer)."""
    if a.get("chap_user") and a.get("chap_secret"):
        if a.get("mutual_user") and a.get("mutual_secret"):
            iscsi.set_chap(a["target_iqn"], portal, port, a["chap_user"], a["chap_secret"],
                           mutual=(a["mutual_user"], a["mutual_secret"]))
        else:
            iscsi.set_chap(a["target_iqn"], portal, port, a["chap_user"], a["chap_secret"])


def log_in(iscsi: Any, a: Record, portal: str, device_timeout: float,
           replacement_timeout: int | None = None) -> str:
    """Discover, set CHAP (and the replacement timeout of a mirror member), log in; the /dev path
    of the assignment's LUN. The node record exists after discovery, so both settings land on it
    before the login reads them."""
    port = int(a["portal_port"])
    iscsi.discover(portal, port)
    set_chap(iscsi, a, portal, port)
    if replacement_timeout is not None:
        iscsi.set_replacement_timeout(a["target_iqn"], portal, port, replacement_timeout)
    iscsi.login(a["target_iqn"], portal, port)
    return str(iscsi.wait_for_device(a["target_iqn"], portal, a["lun"], timeout=device_timeout))
