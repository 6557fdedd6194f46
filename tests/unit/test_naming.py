"""Names: unit names, block devices, IQNs and the target naming scheme."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dvsan.errors import InvalidInput
from dvsan.naming import (
    BACKSTORE_PREFIX,
    IQN_PREFIX,
    backstore_name,
    check_device,
    check_iqn,
    check_unit_name,
    target_iqn,
    unit_target_prefix,
)

unit_names = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,62}", fullmatch=True)
devices = st.from_regex(r"[a-z][a-z0-9-]{0,31}", fullmatch=True)


@pytest.mark.parametrize("name", ["unit-a", "a", "0", "a" * 63, "unit.rack-1", "host01", "1-2.3"])
def test_gp_unit_name(name):
    assert check_unit_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Unit-a",
        "-a",
        ".a",
        "a" * 64,
        "a_b",
        "a b",
        "a/b",
        "ünit",
        "unit-a\n",
        "\nunit-a",
        "unit-a ",
        None,
        5,
        b"unit-a",
    ],
)
def test_ep_unit_name(name):
    with pytest.raises(InvalidInput, match="invalid name") as ei:
        check_unit_name(name)
    assert "1-63 lower-case letters" in str(ei.value)


@pytest.mark.parametrize("device", ["vda2", "sdb1", "nvme0n1p2", "dm-0", "a", "a" * 32])
def test_gp_device(device):
    assert check_device(device) == device


@pytest.mark.parametrize(
    "device",
    [
        "",
        "/dev/vda2",
        "2vda",
        "VDA",
        "vda2\n",
        "../x",
        "vda 2",
        "a" * 33,
        "vda.2",
        "md_0",  # rtslib refuses "_" in an IQN, and the device name is part of the target IQN
        None,
        2,
    ],
)
def test_ep_device(device):
    with pytest.raises(InvalidInput, match="invalid block device name"):
        check_device(device)


@pytest.mark.parametrize(
    "iqn",
    [
        "iqn.2026-11.org.dvsan:unit-a:vda2",
        "iqn.1994-05.com.redhat:abc123",
        "iqn.2026-11.org.dvsan",
        "iqn.2004-10.com.ubuntu:01:a1b2c3d4e5f6",
        "eui.0123456789abcdef",
        "iqn.2026-11.org.dvsan:" + "x" * (223 - len("iqn.2026-11.org.dvsan:")),
    ],
)
def test_gp_iqn(iqn):
    assert check_iqn(iqn) == iqn


@pytest.mark.parametrize(
    "iqn",
    [
        "",
        "IQN.2026-11.org.dvsan:x",
        "iqn.2026-11.ORG.dvsan",
        "iqn.26-11.org.dvsan",
        "iqn.2026-1.org.dvsan",
        "iqn.2026-11.",
        "iqn.2026-11.org.dvsan:has space",
        "iqn.2026-11.org.dvsan:",
        "eui.0123",
        "eui.0123456789ABCDEF",
        "eui.0123456789abcdef0",
        "naa.6001405abcdef012",
        "iqn.2026-11.org.dvsan:x\n",  # '$' alone would let the newline through
        "iqn.2026-11.org.dvsan:" + "x" * (224 - len("iqn.2026-11.org.dvsan:")),
        None,
        42,
    ],
)
def test_ep_iqn(iqn):
    with pytest.raises(InvalidInput, match="invalid iSCSI name") as ei:
        check_iqn(iqn)
    assert "iqn.YYYY-MM" in str(ei.value)


def test_gp_target_iqn_scheme():
    assert target_iqn("unit-a", "vda2") == "iqn.2026-11.org.dvsan:unit-a:vda2"
    assert unit_target_prefix("unit-a") == "iqn.2026-11.org.dvsan:unit-a:"
    assert backstore_name("vda2") == "dvsan_vda2"


@pytest.mark.parametrize(
    ("unit", "device"),
    [("Unit-A", "vda2"), ("unit-a", "/dev/vda2"), ("", "vda2"), ("unit-a", ""), ("unit:a", "vda2")],
)
def test_ep_target_iqn_refuses_bad_parts(unit, device):
    with pytest.raises(InvalidInput):
        target_iqn(unit, device)


@pytest.mark.parametrize("device", ["", "/dev/vda2", "VDA"])
def test_ep_backstore_name(device):
    with pytest.raises(InvalidInput):
        backstore_name(device)


@given(unit_names, devices)
def test_gp_every_target_iqn_is_a_valid_iqn_under_its_units_prefix(unit, device):
    iqn = target_iqn(unit, device)
    assert check_iqn(iqn) == iqn
    assert iqn.startswith(unit_target_prefix(unit))
    assert iqn.startswith(IQN_PREFIX + ":")
    # The device can be read back from the IQN: the unit name has no ':' in it.
    assert iqn[len(unit_target_prefix(unit)) :] == device
    assert backstore_name(device) == BACKSTORE_PREFIX + device


@given(unit_names, unit_names, devices)
def test_gp_a_unit_never_owns_another_units_targets(unit, other, device):
    """unit-a's prefix must not match unit-ab's targets, or unit-a's reconcile would delete them."""
    if unit != other:
        assert not target_iqn(other, device).startswith(unit_target_prefix(unit))
