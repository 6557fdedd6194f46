"""Reconcile plans: table-driven cases; a property: applying a plan yields the desired state."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dvsan.model import Export
from dvsan.reconcile import CreateExport, DeleteExport, SetInitiators, plan

P = "iqn.2026-11.org.dvsan:unit-a:"
H1, H2, H3 = (f"iqn.2026-11.org.dvsan.host:host-{i}" for i in (1, 2, 3))


def ex(device, initiators=(), lun=0, iqn=None):
    return Export(device, iqn or P + device, tuple(initiators), lun)


@pytest.mark.parametrize(
    ("desired", "actual", "expected"),
    [
        ([], [], []),
        # create a missing export
        ([ex("vda2", [H1])], [], [CreateExport(ex("vda2", [H1]))]),
        # delete one the station no longer wants
        ([], [ex("vda2", [H1])], [DeleteExport(ex("vda2", [H1]))]),
        # ACL change in place: add one initiator, remove another, LUN untouched
        (
            [ex("vda2", [H1, H3])],
            [ex("vda2", [H1, H2])],
            [SetInitiators(ex("vda2", [H1, H3]), add=(H3,), remove=(H2,))],
        ),
        # ACLs emptied (host released the volume) is still an in-place change, not a delete
        (
            [ex("vda2", [])],
            [ex("vda2", [H1])],
            [SetInitiators(ex("vda2", []), add=(), remove=(H1,))],
        ),
        # only initiator order differs: nothing to do
        ([ex("vda2", [H2, H1])], [ex("vda2", [H1, H2])], []),
        # same target name, different device: delete then re-create
        (
            [ex("vda3", [H1], iqn=P + "vol")],
            [ex("vda2", [H1], iqn=P + "vol")],
            [
                DeleteExport(ex("vda2", [H1], iqn=P + "vol")),
                CreateExport(ex("vda3", [H1], iqn=P + "vol")),
            ],
        ),
        # different LUN: delete then re-create
        (
            [ex("vda2", [H1], lun=1)],
            [ex("vda2", [H1], lun=0)],
            [DeleteExport(ex("vda2", [H1], lun=0)), CreateExport(ex("vda2", [H1], lun=1))],
        ),
        # mixed: deletions first, then ACL changes, then creations, each sorted by target name
        (
            [ex("vdb1"), ex("vda2", [H1]), ex("vdc1", [H2])],
            [ex("vdz9"), ex("vda2"), ex("vdy8")],
            [
                DeleteExport(ex("vdy8")),
                DeleteExport(ex("vdz9")),
                SetInitiators(ex("vda2", [H1]), add=(H1,), remove=()),
                CreateExport(ex("vdb1")),
                CreateExport(ex("vdc1", [H2])),
            ],
        ),
    ],
)
def test_gp_plan(desired, actual, expected):
    assert plan(desired, actual) == expected


@pytest.mark.parametrize(
    "exports",
    [
        [],
        [ex("vda2")],
        [ex("vda2", [H1, H2]), ex("vdb1", [H3], lun=3)],
    ],
)
def test_gp_plan_of_the_desired_state_against_itself_is_empty(exports):
    assert plan(exports, exports) == []
    assert plan(exports, list(reversed(exports))) == []


# --- the property: applying the plan to `actual` yields `desired` ---------------------------


def state(exports):
    return {e.target_iqn: (e.device, e.lun, frozenset(e.initiators)) for e in exports}


def apply(actions, actual):
    """Carry out a plan on a dict the way a unit would on LIO, refusing impossible steps."""
    s = state(actual)
    for a in actions:
        e = a.export
        if isinstance(a, DeleteExport):
            assert s.get(e.target_iqn) == (e.device, e.lun, frozenset(e.initiators)), (
                "deletes what is not there"
            )
            del s[e.target_iqn]
        elif isinstance(a, CreateExport):
            assert e.target_iqn not in s, "creates over an existing target"
            s[e.target_iqn] = (e.device, e.lun, frozenset(e.initiators))
        else:
            assert isinstance(a, SetInitiators)
            device, lun, inits = s[e.target_iqn]
            assert (device, lun) == (e.device, e.lun), (
                "ACL change on a target whose LUN is different"
            )
            assert set(a.add).isdisjoint(inits) and set(a.remove) <= inits, (
                "ACL change not against actual"
            )
            assert a.add or a.remove, "empty ACL change"
            s[e.target_iqn] = (device, lun, (inits - set(a.remove)) | set(a.add))
    return s


names = st.sampled_from([P + n for n in ("v1", "v2", "v3", "v4", "v5")])
exports = st.dictionaries(
    names,
    st.tuples(
        st.sampled_from(["vda2", "vda3", "vdb1"]),
        st.sampled_from([0, 1]),
        st.lists(st.sampled_from([H1, H2, H3]), max_size=3),
    ),
    max_size=5,
).map(lambda d: [Export(dev, iqn, tuple(inits), lun) for iqn, (dev, lun, inits) in d.items()])


@given(exports, exports)
def test_gp_applying_the_plan_yields_the_desired_state(desired, actual):
    actions = plan(desired, actual)
    assert apply(actions, actual) == state(desired)


@given(exports, exports)
def test_gp_plan_touches_only_what_differs_and_in_order(desired, actual):
    actions = plan(desired, actual)
    same = state(desired).keys() & state(actual).keys()
    untouched = {iqn for iqn in same if state(desired)[iqn] == state(actual)[iqn]}
    assert not any(a.export.target_iqn in untouched for a in actions)
    # an export whose device and LUN stay is never deleted: logged-in hosts keep their session
    keep = {iqn for iqn in same if state(desired)[iqn][:2] == state(actual)[iqn][:2]}
    assert not any(isinstance(a, DeleteExport) and a.export.target_iqn in keep for a in actions)
    order = [{DeleteExport: 0, SetInitiators: 1, CreateExport: 2}[type(a)] for a in actions]
    assert order == sorted(order)


@given(exports)
def test_gp_plan_is_idempotent(desired):
    assert plan(desired, desired) == []
