"""The station's database: the single source of truth (tables, sessions, migrations)."""

from station.db.database import Database

__all__ = ["Database"]
