"""Boot safety of a unit: no saved LIO configuration may come back with stale ACLs.

rtslib-fb's `targetctl restore` (Debian's rtslib-fb-targetctl.service, Fedora's target.service)
re-creates every target, LUN and ACL from /etc/target/saveconfig.json at boot, before the unit
agent hears from the station: a host released last week would get its old volume back. The
station's database is the only record of what a unit exports, so the agent moves any such file
aside at start (and the unit's setup masks those services: deploy/unit/, docs/operations.md).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from dvsan.errors import AdapterError

log = logging.getLogger(__name__)

AUTOSAVE_FILES = ("saveconfig.json",)
AUTOSAVE_BACKUPS = "backup"


def disable_autosave(root: Path = Path("/")) -> list[Path]:
    """Move every LIO auto-save file under `root`/etc/target aside; returns where each went.

    Raises AdapterError if one cannot be moved: the agent must not run beside a file that the
    next boot would restore.
    """
    etc = root / "etc" / "target"
    found = [etc / n for n in AUTOSAVE_FILES if (etc / n).is_file()]
    backups = etc / AUTOSAVE_BACKUPS
    if backups.is_dir():
        found += sorted(p for p in backups.iterdir() if p.is_file() and p.suffix == ".json")
    moved = []
    if found:
        aside = etc / "disabled-by-dvsan"
        stamp = time.strftime("%Y%m%dT%H%M%S")
        try:
            aside.mkdir(mode=0o700, exist_ok=True)
            for f in found:
                dest = aside / f"{f.name}.{stamp}"
                os.replace(f, dest)
                moved.append(dest)
                log.warning("moved LIO auto-save %s to %s: a unit never restores saved exports "
                            "(the station's database is their record)", f, dest)
        except OSError as e:
            raise AdapterError(f"cannot move the LIO auto-save file aside ({e}); remove it and "
                               "mask rtslib-fb-targetctl.service and target.service") from e
    return moved
