"""The domain model: partitions as sfdisk reports them and the exports a unit must hold."""

import dataclasses

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dvsan.errors import InvalidInput
from dvsan.model import VALID_BLOCK_SIZES, Export, Extent, Partition

# vda2 of a 10 GiB disk: sfdisk -J reports start 2048, size 20969472 sectors of 512 bytes.
GOOD = {
    "device": "vda2",
    "disk": "vda",
    "number": 2,
    "start_lba": 2048,
    "length_blocks": 20969472,
    "end_lba": 2048 + 20969472 - 1,
    "block_size": 512,
    "size_bytes": 20969472 * 512,
    "uid": "4f1c2a9e-0d3b-4c55-9e1a-2b7d5c3e8f10",
}
IQN = "iqn.2026-11.org.dvsan:unit-a:vda2"
HOST1 = "iqn.2026-11.org.dvsan.host:host-1"
HOST2 = "iqn.1994-05.com.redhat:abc123"


def test_gp_partition_round_trips_the_wire():
    p = Partition(**GOOD)
    assert p.to_wire() == GOOD
    assert Partition.from_wire(p.to_wire()) == p


@pytest.mark.parametrize("block_size", VALID_BLOCK_SIZES)
def test_gp_partition_block_sizes(block_size):
    p = Partition(
        **{**GOOD, "block_size": block_size, "size_bytes": GOOD["length_blocks"] * block_size}
    )
    assert p.size_bytes == p.length_blocks * block_size


def test_gp_one_block_partition():
    p = Partition(**{**GOOD, "start_lba": 0, "length_blocks": 1, "end_lba": 0, "size_bytes": 512})
    assert p.end_lba == p.start_lba


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"end_lba": GOOD["end_lba"] + 1}, "end LBA .* != start"),
        (
            {"end_lba": GOOD["start_lba"] + GOOD["length_blocks"]},
            "end LBA",
        ),  # exclusive end: off by one
        ({"size_bytes": GOOD["size_bytes"] - 1}, "size .* != .* blocks x 512"),
        ({"block_size": 4096}, "size .* != .* blocks x 4096"),  # size no longer length x bs
        (
            {"block_size": 520, "size_bytes": GOOD["length_blocks"] * 520},
            "block size 520 is not one of",
        ),
        ({"block_size": 0, "size_bytes": 0}, "block size 0"),
        ({"length_blocks": 0, "end_lba": GOOD["start_lba"] - 1, "size_bytes": 0}, "length is zero"),
        ({"start_lba": -1}, "start_lba must be a non-negative integer"),
        ({"number": -2}, "number must be a non-negative integer"),
        ({"number": "2"}, "number must be a non-negative integer"),
        ({"number": 2.0}, "number must be a non-negative integer"),
        ({"number": True}, "number must be a non-negative integer"),
        ({"size_bytes": None}, "size_bytes must be a non-negative integer"),
        ({"device": "/dev/vda2"}, "invalid block device name"),
        ({"device": "vda2\n"}, "invalid block device name"),
        ({"disk": "VDA"}, "invalid block device name"),
        ({"disk": None}, "invalid block device name"),
    ],
)
def test_ep_partition_refuses_inconsistent_or_mistyped_fields(change, message):
    with pytest.raises(InvalidInput, match=message):
        Partition(**{**GOOD, **change})
    with pytest.raises(InvalidInput, match=message):
        Partition.from_wire({**GOOD, **change})


@pytest.mark.parametrize("missing", sorted(set(GOOD) - {"uid"}))  # uid is optional
def test_ep_partition_from_wire_names_the_missing_field(missing):
    d = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(InvalidInput, match=f"missing field '{missing}'"):
        Partition.from_wire(d)


@pytest.mark.parametrize("wire", [None, [], "vda2", 3, [GOOD]])
def test_ep_partition_from_wire_needs_an_object(wire):
    with pytest.raises(InvalidInput, match="must be an object"):
        Partition.from_wire(wire)


def test_gp_partition_from_wire_ignores_unknown_fields():
    assert Partition.from_wire({**GOOD, "fs_type": "xfs"}) == Partition(**GOOD)


def test_gp_partition_is_immutable():
    p = Partition(**GOOD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.size_bytes = 1  # type: ignore[misc]


@given(st.integers(0, 2**40), st.integers(1, 2**36), st.sampled_from(VALID_BLOCK_SIZES))
def test_gp_any_consistent_geometry_is_accepted_and_round_trips(start, length, bs):
    wire = {
        "device": "sdb1",
        "disk": "sdb",
        "number": 1,
        "start_lba": start,
        "length_blocks": length,
        "end_lba": start + length - 1,
        "block_size": bs,
        "size_bytes": length * bs,
        "uid": "",
    }
    assert Partition.from_wire(wire).to_wire() == wire


@given(
    st.integers(0, 2**40),
    st.integers(1, 2**36),
    st.sampled_from(VALID_BLOCK_SIZES),
    st.integers(-3, 3).filter(bool),
    st.sampled_from(["end_lba", "size_bytes"]),
)
def test_ep_any_inconsistent_geometry_is_refused(start, length, bs, delta, field):
    wire = {
        "device": "sdb1",
        "disk": "sdb",
        "number": 1,
        "start_lba": start,
        "length_blocks": length,
        "end_lba": start + length - 1,
        "block_size": bs,
        "size_bytes": length * bs,
    }
    wire[field] += delta
    assume(wire[field] >= 0)
    with pytest.raises(InvalidInput):
        Partition.from_wire(wire)


# --- exports ------------------------------------------------------------------------------------


def test_gp_export_round_trips_the_wire_with_sorted_initiators():
    e = Export.from_wire(
        {"device": "vda2", "target_iqn": IQN, "initiators": [HOST2, HOST1], "lun": 0}
    )
    assert e.initiators == tuple(sorted([HOST1, HOST2]))
    assert Export.from_wire(e.to_wire()) == e
    assert e.to_wire() == {
        "device": "vda2",
        "target_iqn": IQN,
        "initiators": sorted([HOST1, HOST2]),
        "lun": 0,
        "wwn": "",
    }


def test_gp_export_defaults():
    e = Export.from_wire({"device": "vda2", "target_iqn": IQN, "initiators": []})
    assert e == Export("vda2", IQN)
    assert e.lun == 0 and e.initiators == ()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "/dev/vda2"}, "invalid block device name"),
        ({"target_iqn": "IQN.2026-11.org.dvsan:unit-a:vda2"}, "invalid iSCSI name"),
        ({"target_iqn": ""}, "invalid iSCSI name"),
        ({"initiators": ("not an iqn",)}, "invalid iSCSI name"),
        ({"initiators": (HOST1, "eui.123")}, "invalid iSCSI name"),
        ({"lun": -1}, "LUN must be a non-negative integer"),
        ({"lun": "0"}, "LUN must be a non-negative integer"),
        ({"lun": True}, "LUN must be a non-negative integer"),
        ({"lun": 0.5}, "LUN must be a non-negative integer"),
    ],
)
def test_ep_export_refuses_bad_fields(kwargs, message):
    base = {"device": "vda2", "target_iqn": IQN, "initiators": (HOST1,), "lun": 0}
    with pytest.raises(InvalidInput, match=message):
        Export(**{**base, **kwargs})
    wire = {**base, **kwargs}
    wire["initiators"] = list(wire["initiators"])
    with pytest.raises(InvalidInput, match=message):
        Export.from_wire(wire)


@pytest.mark.parametrize("missing", ["device", "target_iqn", "initiators"])
def test_ep_export_from_wire_names_the_missing_field(missing):
    d = {
        k: v
        for k, v in {"device": "vda2", "target_iqn": IQN, "initiators": []}.items()
        if k != missing
    }
    with pytest.raises(InvalidInput, match=f"missing field '{missing}'"):
        Export.from_wire(d)


@pytest.mark.parametrize(
    "initiators", [HOST1, None, {HOST1: 1}, [HOST1, 1], [1, HOST1], [[HOST1]], [None]]
)
def test_ep_export_initiators_must_be_a_list_of_names(initiators):
    # A peer sending [1, "iqn..."] used to escape as TypeError from sorted().
    with pytest.raises(InvalidInput, match="initiators must be a list"):
        Export.from_wire({"device": "vda2", "target_iqn": IQN, "initiators": initiators})


@pytest.mark.parametrize("lun", ["x", None, [], {}, 1.9])
def test_ep_export_from_wire_bad_lun_is_invalid_input_not_a_crash(lun):
    # int(d["lun"]) used to raise ValueError/TypeError, or turn 1.9 into LUN 1 without a word.
    with pytest.raises(InvalidInput, match="LUN"):
        Export.from_wire({"device": "vda2", "target_iqn": IQN, "initiators": [], "lun": lun})


@pytest.mark.parametrize("wire", [None, [], "x", 0])
def test_ep_export_from_wire_needs_an_object(wire):
    with pytest.raises(InvalidInput, match="must be an object"):
        Export.from_wire(wire)


# ---- extents and identity: what a unit checks an export against ----------------------------

EXTENT = Extent(2048, 20969472, 512, GOOD["uid"])


def test_gp_partition_extent_is_its_geometry_and_identity():
    assert Partition(**GOOD).extent == EXTENT
    assert EXTENT.mismatch(Partition(**GOOD).extent) is None


@pytest.mark.parametrize("other, words", [
    (Extent(4096, 20969472, 512, GOOD["uid"]), "start 4096"),
    (Extent(2048, 20969471, 512, GOOD["uid"]), "length 20969471"),
    (Extent(2048, 20969472, 4096, GOOD["uid"]), "x 4096 B"),
    (Extent(2048, 20969472, 512, "0000-1111"), "identity changed"),
    (Extent(2048, 20969472, 512, ""), "now has none"),
])
def test_ep_any_other_extent_or_identity_is_a_mismatch_that_says_what(other, words):
    why = EXTENT.mismatch(other)
    assert why is not None and words in why


def test_gp_an_extent_without_identity_matches_on_geometry_alone():
    assert Extent(2048, 20969472, 512).mismatch(EXTENT) is None


def test_gp_export_with_extent_and_serial_round_trips():
    e = Export("vda2", IQN, (HOST1,), 0, wwn="6a1c5f0e-2b7d-4f7e-9d3a-8e0f5c1d2b40", extent=EXTENT)
    assert Export.from_wire(e.to_wire()) == e
    assert e.to_wire()["extent"] == {"start_lba": 2048, "length_blocks": 20969472, "block_size": 512,
                                     "uid": GOOD["uid"]}


@pytest.mark.parametrize("bad", [
    {"extent": {"start_lba": -1, "length_blocks": 1, "block_size": 512}},
    {"extent": {"start_lba": 0, "length_blocks": 1, "block_size": 513}},
    {"extent": {"start_lba": 0, "block_size": 512}},
    {"extent": "0-100"},
    {"extent": {"start_lba": 0, "length_blocks": 1, "block_size": 512, "uid": "a b"}},
    {"wwn": "NOT A SERIAL"},
])
def test_ep_bad_extent_or_serial_on_the_wire_is_refused(bad):
    wire = {"device": "vda2", "target_iqn": IQN, "initiators": [HOST1], "lun": 0, **bad}
    with pytest.raises(InvalidInput):
        Export.from_wire(wire)


def test_ep_bad_partition_identity_is_refused():
    with pytest.raises(InvalidInput, match="partition identity"):
        Partition(**{**GOOD, "uid": "x" * 65})
