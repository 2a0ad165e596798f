"""access requests and grants (just-in-time access to named recordings)

Revision ID: 0006_access
Revises: 0005_staff_saw
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_access"
down_revision = "0005_staff_saw"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "access_requests",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("requester", sa.String(128), nullable=False),
        sa.Column("requester_team_id", sa.String(64), nullable=True),
        sa.Column("ticket_id", sa.String(36), nullable=False),
        sa.Column("justification", sa.Text(), nullable=False),
        sa.Column("requested_duration_s", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(128), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision_reason", sa.String(200), nullable=True),
        sa.Column("approver_was_manager", sa.Boolean(), nullable=False),
        sa.Column("granted_duration_s", sa.Integer(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(128), nullable=True),
        sa.Column("revoke_reason", sa.String(200), nullable=True),
        sa.Column("extends_id", sa.String(36), nullable=True),
        sa.Column("needs_customer_approval", sa.Boolean(), nullable=False),
        sa.Column("customer_decided_by", sa.String(128), nullable=True),
        sa.Column("customer_decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("customer_approved", sa.Boolean(), nullable=True),
        sa.Column("expiry_warned_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name="fk_access_requests_ticket_id_tickets",
                                ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["extends_id"], ["access_requests.id"],
                                name="fk_access_requests_extends_id_access_requests", ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name="pk_access_requests"),
    )
    op.create_index("ix_access_requests_requester", "access_requests", ["requester"])
    op.create_index("ix_access_requests_requester_team_id", "access_requests", ["requester_team_id"])
    op.create_index("ix_access_requests_ticket_id", "access_requests", ["ticket_id"])
    op.create_index("ix_access_requests_state", "access_requests", ["state"])
    op.create_table(
        "access_request_items",
        sa.Column("access_request_id", sa.String(36), nullable=False),
        sa.Column("request_id", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(["access_request_id"], ["access_requests.id"],
                                name="fk_access_request_items_access_request_id_access_requests",
                                ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("access_request_id", "request_id", name="pk_access_request_items"),
    )
    op.create_index("ix_access_request_items_request_id", "access_request_items", ["request_id"])


def downgrade() -> None:
    op.drop_index("ix_access_request_items_request_id", table_name="access_request_items")
    op.drop_table("access_request_items")
    for index in ("ix_access_requests_state", "ix_access_requests_ticket_id",
                  "ix_access_requests_requester_team_id", "ix_access_requests_requester"):
        op.drop_index(index, table_name="access_requests")
    op.drop_table("access_requests")
