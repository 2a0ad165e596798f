"""tickets, engineer assignments and customer consents

Revision ID: 0003_tickets
Revises: 0002_audit
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_tickets"
down_revision = "0002_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tickets",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("resource_id", sa.String(36), nullable=False),
        sa.Column("external_ref", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["resource_id"], ["resources.id"], name="fk_tickets_resource_id_resources",
                                ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name="pk_tickets"),
        sa.UniqueConstraint("external_ref", name="uq_tickets_external_ref"),
    )
    op.create_index("ix_tickets_resource_id", "tickets", ["resource_id"])
    op.create_table(
        "ticket_assignments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ticket_id", sa.String(36), nullable=False),
        sa.Column("engineer", sa.String(128), nullable=False),
        sa.Column("assigned_by", sa.String(128), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("unassigned_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name="fk_ticket_assignments_ticket_id_tickets",
                                ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name="pk_ticket_assignments"),
    )
    op.create_index("ix_ticket_assignments_ticket_id", "ticket_assignments", ["ticket_id"])
    op.create_index("ix_ticket_assignments_engineer", "ticket_assignments", ["engineer"])
    op.create_table(
        "consents",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("resource_id", sa.String(36), nullable=False),
        sa.Column("ticket_id", sa.String(36), nullable=False),
        sa.Column("granted_by", sa.String(128), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("require_customer_approval", sa.Boolean(), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_by", sa.String(128), nullable=True),
        sa.Column("end_reason", sa.String(32), nullable=True),
        sa.ForeignKeyConstraint(["resource_id"], ["resources.id"], name="fk_consents_resource_id_resources",
                                ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name="fk_consents_ticket_id_tickets",
                                ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name="pk_consents"),
        sa.UniqueConstraint("id", "ticket_id", name="uq_consents_id_ticket"),
    )
    op.create_index("ix_consents_resource_id", "consents", ["resource_id"])
    op.create_index("ix_consents_ticket_id", "consents", ["ticket_id"])
    op.create_index("ix_consents_not_after", "consents", ["not_after"])


def downgrade() -> None:
    op.drop_index("ix_consents_not_after", table_name="consents")
    op.drop_index("ix_consents_ticket_id", table_name="consents")
    op.drop_index("ix_consents_resource_id", table_name="consents")
    op.drop_table("consents")
    op.drop_index("ix_ticket_assignments_engineer", table_name="ticket_assignments")
    op.drop_index("ix_ticket_assignments_ticket_id", table_name="ticket_assignments")
    op.drop_table("ticket_assignments")
    op.drop_index("ix_tickets_resource_id", table_name="tickets")
    op.drop_table("tickets")
