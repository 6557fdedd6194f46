"""The audit log: who asked the station to change what, from where, and what came of it.

Every REST call that is not a plain read is recorded (writes, logins, and refusals of either: 401,
403, 404, 409, 422 too), with the caller (`user:NAME`, `host:NAME` or `anonymous`), the client's
address, the route, the path, the status answered and, where a route says it, what changed.
Secrets never reach it: `mask` replaces every value under a key that names one.
"""

import json
import logging
import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from station.db.tables import AuditRow, utcnow

log = logging.getLogger(__name__)
_SECRET_KEY = re.compile(r"pass|secret|token|key|chap", re.IGNORECASE)
MASK = "***"


def mask(value: Any) -> Any:
    """`value` with every entry under a secret-sounding key replaced by MASK (recursively)."""
    if isinstance(value, dict):
        return {k: (MASK if _SECRET_KEY.search(str(k)) else mask(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    return value


def record(s: Session, principal: str, source: str, action: str, obj: str, outcome: int,
           detail: dict[str, Any] | None = None) -> None:
    text = json.dumps(mask(detail), sort_keys=True, default=str)[:1024] if detail else None
    s.add(AuditRow(principal=principal[:80], source=source[:64], action=action[:96], object=obj[:255],
                   outcome=outcome, detail=text))


def query(s: Session, *, principal: str | None = None, action: str | None = None,
          since: datetime | None = None, outcome: int | None = None, limit: int = 100) -> list[AuditRow]:
    q = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
    if principal:
        q = q.where(AuditRow.principal == principal)
    if action:
        q = q.where(AuditRow.action == action)
    if since:
        q = q.where(AuditRow.at >= since)
    if outcome is not None:
        q = q.where(AuditRow.outcome == outcome)
    return list(s.scalars(q))


def sweep(s: Session, retention_days: int, now: datetime | None = None) -> int:
    """Remove rows older than the retention; returns how many went."""
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    n = s.execute(delete(AuditRow).where(AuditRow.at < cutoff)).rowcount  # type: ignore[attr-defined]
    if n:
        log.info("audit log: %d row(s) older than %d days removed", n, retention_days)
    return int(n or 0)
