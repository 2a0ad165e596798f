"""retention bookkeeping: KEK buckets taken by the purge, scheduled job runs, signed daily reports

Revision ID: 0007_retention
Revises: 0006_access
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_retention"
down_revision = "0006_access"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retention_buckets",
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("kek_destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("kek_provider", sa.String(32), nullable=True),
        sa.Column("kek_key_name", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("region", "bucket_start", name="pk_retention_buckets"),
    )
    op.create_index("ix_retention_buckets_open", "retention_buckets", ["kek_destroyed_at", "due_at"])
    op.create_table(
        "retention_job_runs",
        sa.Column("job", sa.String(64), nullable=False),
        sa.Column("last_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(128), nullable=True),
        sa.Column("last_duration_ms", sa.Integer(), nullable=False),
        sa.Column("last_items", sa.Integer(), nullable=False),
        sa.Column("runs", sa.BigInteger(), nullable=False),
        sa.Column("failures", sa.BigInteger(), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("job", name="pk_retention_job_runs"),
    )
    op.create_table(
        "retention_reports",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("generated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("head_seq", sa.BigInteger(), nullable=False),
        sa.Column("within_limit", sa.Boolean(), nullable=False),
        sa.Column("envelope", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("day", name="pk_retention_reports"),
    )
    op.create_index(
        "ix_recordings_retention_pending", "recordings", ["bucket_start"],
        postgresql_where=sa.text("blob_deleted_at IS NULL"), sqlite_where=sa.text("blob_deleted_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_recordings_retention_pending", table_name="recordings")
    op.drop_table("retention_reports")
    op.drop_table("retention_job_runs")
    op.drop_index("ix_retention_buckets_open", table_name="retention_buckets")
    op.drop_table("retention_buckets")
