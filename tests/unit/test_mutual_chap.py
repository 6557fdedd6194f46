"""Mutual CHAP in the core: an export's mutual credentials are checked, sealed on the wire bound to
their target and role, and a change of them re-creates the export; the host agent sets them."""

from typing import Any

import pytest

from dvsan import secretbox
from dvsan.errors import InvalidInput
from dvsan.model import Export
from dvsan.reconcile import CreateExport, DeleteExport, plan

KEY = secretbox.derive(b"k" * 32, secretbox.CHAP_WIRE)
T = "iqn.2026-11.org.dvsan:unit-a:vda1"
WWN = "0123456789abcdef0123"


def export(**kw: Any) -> Export:
    base: dict[str, Any] = {"chap_user": "dvsan-h", "chap_secret": "host-secret-123", "mutual_user": "dvsan-t-1",
            "mutual_secret": "target-secret-45"}
    return Export(device="vda1", target_iqn=T, initiators=("iqn.2026-11.org.dvsan.lab:host-b",), wwn=WWN,
                  **{**base, **kw})


def test_gp_mutual_credentials_travel_sealed_and_come_back_whole() -> None:
    e = export()
    wire = e.to_wire(KEY)
    text = str(wire)
    assert "target-secret-45" not in text and "host-secret-123" not in text
    assert wire["chap"]["mutual_user"] == "dvsan-t-1"
    back = Export.from_wire(wire, KEY)
    assert (back.mutual_user, back.mutual_secret, back.chap_secret) == ("dvsan-t-1", "target-secret-45", "host-secret-123")
    assert "target-secret-45" not in repr(back)
    one_way = export(mutual_user="", mutual_secret="").to_wire(KEY)
    assert "mutual_user" not in one_way["chap"]


def test_ep_mutual_secrets_cannot_be_swapped_or_half_given() -> None:
    wire = export().to_wire(KEY)
    swapped = {**wire, "chap": {**wire["chap"], "secret": wire["chap"]["mutual_secret"],
                                "mutual_secret": wire["chap"]["secret"]}}
    with pytest.raises(InvalidInput):
        Export.from_wire(swapped, KEY)
    half = {**wire, "chap": {k: v for k, v in wire["chap"].items() if k != "mutual_secret"}}
    with pytest.raises(InvalidInput, match="go together"):
        Export.from_wire(half, KEY)
    with pytest.raises(InvalidInput, match="needs one-way CHAP"):
        export(chap_user="", chap_secret="")
    with pytest.raises(InvalidInput, match="must differ"):
        export(mutual_secret="host-secret-123")
    with pytest.raises(InvalidInput, match="CHAP secret must be"):
        export(mutual_secret="short")
    with pytest.raises(InvalidInput, match="CHAP user must be"):
        export(mutual_user="bad user")


def test_gp_a_change_of_mutual_credentials_recreates_the_export() -> None:
    have, want = export(), export(mutual_secret="another-secret-9")
    acts = plan([want], [have])
    assert [type(a) for a in acts] == [DeleteExport, CreateExport]
    assert plan([have], [have]) == []
    assert [type(a) for a in plan([export(mutual_user="", mutual_secret="")], [have])] == [DeleteExport, CreateExport]


def test_gp_the_host_agent_sets_mutual_chap_on_the_node_record() -> None:
    from host_agent.iscsiadm import Iscsiadm

    calls: list[list[str]] = []

    class Recording(Iscsiadm):
        def _run(self, args, ok=(0,), timeout=None):  # type: ignore[no-untyped-def, override]
            calls.append(list(args))

    Recording().set_chap(T, "10.0.0.1", 3260, "dvsan-h", "host-secret-123", mutual=("dvsan-t-1", "target-secret-45"))
    names = {c[c.index("-n") + 1]: c[c.index("-v") + 1] for c in calls}
    assert names == {"node.session.auth.authmethod": "CHAP", "node.session.auth.username": "dvsan-h",
                     "node.session.auth.password": "host-secret-123",
                     "node.session.auth.username_in": "dvsan-t-1", "node.session.auth.password_in": "target-secret-45"}
    calls.clear()
    Recording().set_chap(T, "10.0.0.1", 3260, "dvsan-h", "host-secret-123")
    assert not any("username_in" in " ".join(c) for c in calls)
