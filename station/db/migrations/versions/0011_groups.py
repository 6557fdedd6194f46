"""Groups of users, and grants given to a group (or to one user, as before).

Revision ID: 0011_groups
Revises: 0010_mutual_chap
"""
import sqlalchemy as sa
from alembic import op

revision = "0011_groups"
down_revision = "0010_mutual_chap"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "groups",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("created_by", sa.String(80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "group_members",
        sa.Column("group_name", sa.String(63), sa.ForeignKey("groups.name", ondelete="CASCADE"), primary_key=True),
        sa.Column("user_name", sa.String(63), sa.ForeignKey("users.name", ondelete="CASCADE"), primary_key=True),
    )
    op.create_index("ix_group_members_user_name", "group_members", ["user_name"])
    # NOTE: SQLite cannot alter a column in place: batch mode copies the table.
    with op.batch_alter_table("grants", recreate="always") as b:
        b.alter_column("user_name", existing_type=sa.String(63), nullable=True)
        b.add_column(sa.Column("group_name", sa.String(63), nullable=True))
        b.create_foreign_key("fk_grants_group_name", "groups", ["group_name"], ["name"], ondelete="CASCADE")
        b.create_unique_constraint("uq_grants_group_role_object", ["group_name", "role", "object"])
        b.create_check_constraint("ck_grants_user_or_group", "(user_name IS NULL) != (group_name IS NULL)")
        b.create_index("ix_grants_group_name", ["group_name"])


def downgrade() -> None:
    op.execute("DELETE FROM grants WHERE user_name IS NULL")
    with op.batch_alter_table("grants", recreate="always") as b:
        b.drop_index("ix_grants_group_name")
        b.drop_constraint("ck_grants_user_or_group", type_="check")
        b.drop_constraint("uq_grants_group_role_object", type_="unique")
        b.drop_constraint("fk_grants_group_name", type_="foreignkey")
        b.drop_column("group_name")
        b.alter_column("user_name", existing_type=sa.String(63), nullable=False)
    op.drop_table("group_members")
    op.drop_table("groups")
