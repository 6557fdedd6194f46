"""station.services.audit on a real migrated SQLite database: masking, filters, retention."""

from datetime import timedelta
from pathlib import Path

from station.db.tables import AuditRow, utcnow
from station.services import audit
from tests.unit.test_allocation_stateful import migrated_db


def test_gp_mask_hides_every_secret_sounding_key_at_any_depth():
    got = audit.mask({"name": "bob", "password": "pw", "token": {"token": "t", "id": 3},
                      "hosts": [{"chap_secret": "c", "iqn": "i"}], "api_key": "k"})
    assert got == {"name": "bob", "password": "***", "token": "***", "hosts": [{"chap_secret": "***", "iqn": "i"}],
                   "api_key": "***"}


def test_gp_query_filters_and_sweep_keeps_the_retention(tmp_path: Path):
    db = migrated_db(tmp_path)
    now = utcnow()
    with db.session() as s:
        audit.record(s, "user:a", "127.0.0.1", "POST /x", "/x", 201, {"password": "pw"})
        audit.record(s, "host:h", "127.0.0.1", "DELETE /y", "/y", 403)
        s.add(AuditRow(at=now - timedelta(days=400), principal="user:old", source="", action="POST /z",
                       object="/z", outcome=200))
    with db.session() as s:
        assert [r.principal for r in audit.query(s)] == ["user:old", "host:h", "user:a"]
        assert [r.action for r in audit.query(s, principal="host:h")] == ["DELETE /y"]
        assert [r.principal for r in audit.query(s, outcome=201)] == ["user:a"]
        assert audit.query(s, principal="user:a")[0].detail == '{"password": "***"}'
        assert audit.sweep(s, 365, now) == 1
    with db.session() as s:
        assert {r.principal for r in audit.query(s)} == {"user:a", "host:h"}
    db.dispose()
