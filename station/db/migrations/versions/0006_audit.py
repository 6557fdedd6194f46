"""Audit log: every write, login and refusal at the REST API, append-only.

Revision ID: 0006_audit
Revises: 0005_auth
"""
import sqlalchemy as sa
from alembic import op

revision = "0006_audit"
down_revision = "0005_auth"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("principal", sa.String(80), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("action", sa.String(96), nullable=False),
        sa.Column("object", sa.String(255), nullable=False),
        sa.Column("outcome", sa.Integer, nullable=False),
        sa.Column("detail", sa.String(1024), nullable=True),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_principal", "audit_log", ["principal"])
    op.create_index("ix_audit_log_action", "audit_log", ["action"])


def downgrade() -> None:
    op.drop_table("audit_log")
