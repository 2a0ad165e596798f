"""recordings: one row per recorded session, holding its wrapped data key

Revision ID: 0004_recordings
Revises: 0003_tickets
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_recordings"
down_revision = "0003_tickets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recordings",
        sa.Column("request_id", sa.String(32), nullable=False),
        sa.Column("resource_id", sa.String(36), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("ticket_id", sa.String(36), nullable=False),
        sa.Column("consent_id", sa.String(36), nullable=False),
        sa.Column("correlation_id", sa.String(128), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary(), nullable=True),
        sa.Column("blob_name", sa.String(160), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("incomplete_reason", sa.String(64), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("segments", sa.Integer(), nullable=False),
        sa.Column("bytes_committed", sa.Integer(), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=False),
        sa.Column("dropped_frames", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("shredded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("blob_deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("shred_reason", sa.String(16), nullable=True),
        sa.Column("receipt", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["resource_id"], ["resources.id"], name="fk_recordings_resource_id_resources",
                                ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name="fk_recordings_ticket_id_tickets",
                                ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["consent_id"], ["consents.id"], name="fk_recordings_consent_id_consents",
                                ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("request_id", name="pk_recordings"),
    )
    op.create_index("ix_recordings_resource_started", "recordings", ["resource_id", "started_at"])
    op.create_index("ix_recordings_state_heartbeat", "recordings", ["state", "heartbeat_at"])
    op.create_index("ix_recordings_bucket", "recordings", ["region", "bucket_start"])
    op.create_index("ix_recordings_ticket_id", "recordings", ["ticket_id"])
    op.create_index("ix_recordings_consent_id", "recordings", ["consent_id"])
    op.create_index("ix_recordings_correlation_id", "recordings", ["correlation_id"])


def downgrade() -> None:
    for index in ("ix_recordings_correlation_id", "ix_recordings_consent_id", "ix_recordings_ticket_id",
                  "ix_recordings_bucket", "ix_recordings_state_heartbeat", "ix_recordings_resource_started"):
        op.drop_index(index, table_name="recordings")
    op.drop_table("recordings")
