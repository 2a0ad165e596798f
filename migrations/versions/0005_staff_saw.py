"""staff, their roles, teams, team managers and secure access workstations

Revision ID: 0005_staff_saw
Revises: 0004_recordings
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_staff_saw"
down_revision = "0004_recordings"
branch_labels = None
depends_on = None

STAFF_ROLES = ("admin", "auditor", "engineer", "manager")


def upgrade() -> None:
    op.create_table(
        "teams",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_teams"),
        sa.UniqueConstraint("name", name="uq_teams_name"),
    )
    op.create_table(
        "staff",
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("display_name", sa.String(256), nullable=False),
        sa.Column("team_id", sa.String(36), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_staff_team_id_teams", ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("subject", name="pk_staff"),
    )
    op.create_index("ix_staff_team_id", "staff", ["team_id"])
    op.create_table(
        "staff_roles",
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.CheckConstraint("role IN ({})".format(", ".join(f"'{r}'" for r in STAFF_ROLES)),
                           name=op.f("ck_staff_roles_role")),
        sa.ForeignKeyConstraint(["subject"], ["staff.subject"], name="fk_staff_roles_subject_staff",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("subject", "role", name="pk_staff_roles"),
    )
    op.create_index("ix_staff_roles_role", "staff_roles", ["role"])
    op.create_table(
        "team_managers",
        sa.Column("team_id", sa.String(36), nullable=False),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("added_by", sa.String(128), nullable=False),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_team_managers_team_id_teams", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["subject"], ["staff.subject"], name="fk_team_managers_subject_staff",
                                ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("team_id", "subject", name="pk_team_managers"),
    )
    op.create_index("ix_team_managers_subject", "team_managers", ["subject"])
    op.create_table(
        "saws",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("cert_sha256", sa.String(64), nullable=False),
        sa.Column("owner_subject", sa.String(128), nullable=False),
        sa.Column("label", sa.String(128), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("registered_by", sa.String(128), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(128), nullable=True),
        sa.Column("revoke_reason", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(["owner_subject"], ["staff.subject"], name="fk_saws_owner_subject_staff",
                                ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name="pk_saws"),
        sa.UniqueConstraint("cert_sha256", name="uq_saws_cert_sha256"),
    )
    op.create_index("ix_saws_owner_subject", "saws", ["owner_subject"])


def downgrade() -> None:
    op.drop_index("ix_saws_owner_subject", table_name="saws")
    op.drop_table("saws")
    op.drop_index("ix_team_managers_subject", table_name="team_managers")
    op.drop_table("team_managers")
    op.drop_index("ix_staff_roles_role", table_name="staff_roles")
    op.drop_table("staff_roles")
    op.drop_index("ix_staff_team_id", table_name="staff")
    op.drop_table("staff")
    op.drop_table("teams")
