"""Grants: a role given to a user on one object (and what is under it).

Revision ID: 0009_grants
Revises: 0008_tasks
"""
import sqlalchemy as sa
from alembic import op

revision = "0009_grants"
down_revision = "0008_tasks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "grants",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user_name", sa.String(63), sa.ForeignKey("users.name", ondelete="CASCADE"), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("object", sa.String(255), nullable=False),
        sa.Column("propagate", sa.Boolean, nullable=False),
        sa.Column("created_by", sa.String(80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("user_name", "role", "object", name="uq_grants_user_role_object"),
    )
    op.create_index("ix_grants_user_name", "grants", ["user_name"])


def downgrade() -> None:
    op.drop_table("grants")
