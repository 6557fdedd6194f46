"""Tasks: every change asked of the station, stored from queued to its end.

Revision ID: 0008_tasks
Revises: 0007_chap
"""
import sqlalchemy as sa
from alembic import op

revision = "0008_tasks"
down_revision = "0007_chap"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("object", sa.String(255), nullable=False),
        sa.Column("requested_by", sa.String(80), nullable=False),
        sa.Column("host_name", sa.String(63), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("total_steps", sa.BigInteger, nullable=False),
        sa.Column("message", sa.String(255), nullable=False),
        sa.Column("result", sa.String(2048), nullable=True),
        sa.Column("error", sa.String(1024), nullable=True),
        sa.Column("error_kind", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    for col in ("kind", "object", "host_name", "state"):
        op.create_index(f"ix_tasks_{col}", "tasks", [col])


def downgrade() -> None:
    op.drop_table("tasks")
