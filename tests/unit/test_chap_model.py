"""CHAP on an export (dvsan.model.Export): sealed on the wire, validated, never in a repr."""

import pytest

from dvsan import secretbox
from dvsan.errors import InvalidInput
from dvsan.model import Export
from dvsan.reconcile import CreateExport, DeleteExport, plan

KEY = secretbox.derive(b"a-cluster-key-of-some-length", secretbox.CHAP_WIRE)
T = "iqn.2026-11.org.dvsan:unit-a:vda1"
E = Export(device="vda1", target_iqn=T, initiators=("iqn.2026-11.org.dvsan.lab:host-b",),
           chap_user="dvsan-0123", chap_secret="s3cret-s3cret-s3cret")


def test_gp_chap_round_trips_sealed():
    wire = E.to_wire(KEY)
    assert wire["chap"]["user"] == "dvsan-0123" and "s3cret" not in str(wire)
    assert Export.from_wire(wire, KEY) == E
    assert "s3cret" not in repr(E)


def test_ep_chap_never_goes_out_in_plain_or_opens_without_its_key():
    with pytest.raises(ValueError, match="no key to seal"):
        E.to_wire()
    wire = E.to_wire(KEY)
    with pytest.raises(InvalidInput, match="no key to open"):
        Export.from_wire(wire)
    with pytest.raises(InvalidInput, match="does not open"):
        Export.from_wire(wire, secretbox.derive(b"another-cluster-key-0000", secretbox.CHAP_WIRE))
    with pytest.raises(InvalidInput, match="does not open"):
        Export.from_wire({**wire, "target_iqn": "iqn.2026-11.org.dvsan:unit-a:vda2"}, KEY)
    for chap in ("x", {"user": "u"}, {"user": 1, "secret": "x"}):
        with pytest.raises(InvalidInput):
            Export.from_wire({**wire, "chap": chap}, KEY)


@pytest.mark.parametrize(("user", "secret"), [("", "s3cret-s3cret"), ("bad user", "s3cret-s3cret"),
                                              ("u", "short"), ("u", "has a space in it"), ("u", "x" * 129)])
def test_ep_bad_credentials_are_refused(user, secret):
    with pytest.raises(InvalidInput):
        Export(device="vda1", target_iqn=T, chap_user=user, chap_secret=secret)


def test_gp_other_credentials_make_the_export_anew():
    other = Export(device="vda1", target_iqn=T, initiators=E.initiators, chap_user="dvsan-9999",
                   chap_secret="another-secret-0")
    assert plan([other], [E]) == [DeleteExport(E), CreateExport(other)]
    assert plan([E], [E]) == []
