"""Reconcile plans: the pure diff between the exports a unit must hold and those it holds."""

from dataclasses import dataclass

from dvsan.model import Export


@dataclass(frozen=True, slots=True)
class CreateExport:
    export: Export


@dataclass(frozen=True, slots=True)
class DeleteExport:
    export: Export


@dataclass(frozen=True, slots=True)
class SetInitiators:
    """Change the ACLs of an existing export (add and remove initiators) without touching its LUN."""

    export: Export
    add: tuple[str, ...]
    remove: tuple[str, ...]


Action = CreateExport | DeleteExport | SetInitiators


def plan(desired: list[Export], actual: list[Export]) -> list[Action]:
    """Actions that turn `actual` into `desired`: deletions first, then ACL changes, then creations.

    An export whose device, LUN, unit serial (the volume's identity) or CHAP credentials differ is
    deleted and re-created; one whose only difference is its initiators gets its ACLs changed in place so
    that logged-in hosts stay.
    """
    want = {e.target_iqn: e for e in desired}
    have = {e.target_iqn: e for e in actual}
    deletes: list[Action] = []
    changes: list[Action] = []
    creates: list[Action] = []
    for iqn, h in sorted(have.items()):
        w = want.get(iqn)
        if w is None or w.device != h.device or w.lun != h.lun or (w.wwn and w.wwn != h.wwn) \
                or (w.chap_user, w.chap_secret, w.mutual_user, w.mutual_secret) \
                != (h.chap_user, h.chap_secret, h.mutual_user, h.mutual_secret):
            # NOTE: CHAP is made once per assignment and never changes under it: a difference
            # means another assignment (or an export from before CHAP), so it is made anew.
            deletes.append(DeleteExport(h))
            if w is not None:
                creates.append(CreateExport(w))
        elif set(w.initiators) != set(h.initiators):
            changes.append(SetInitiators(
                w,
                add=tuple(sorted(set(w.initiators) - set(h.initiators))),
                remove=tuple(sorted(set(h.initiators) - set(w.initiators))),
            ))
    for iqn, w in sorted(want.items()):
        if iqn not in have:
            creates.append(CreateExport(w))
    return deletes + changes + creates
