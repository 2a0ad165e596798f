"""Retention bookkeeping (migration 0007_retention). No session content, only ids, times and counts (C2).

- `retention_buckets`: one row per (region, UTC hour) KEK bucket the purge has taken up: the row replicas
  claim (`FOR UPDATE SKIP LOCKED`) and the once-only record that its KEK was destroyed (`claimed_by`: the
  replica that recorded it).
- `retention_job_runs`: per scheduled job, its last start, success and failure (catch-up after an outage,
  one run per period across replicas).
- `retention_reports`: the signed daily retention report, one per UTC day.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Boolean, Date, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.capture.models import Recording
from app.db import Base, UTCDateTime


class RetentionBucket(Base):
    __tablename__ = "retention_buckets"
    __table_args__ = (Index("ix_retention_buckets_open", "kek_destroyed_at", "due_at"),)

    region: Mapped[str] = mapped_column(String(32), primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    claimed_by: Mapped[str | None] = mapped_column(String(64), default=None)
    kek_destroyed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    kek_provider: Mapped[str | None] = mapped_column(String(32), default=None)
    kek_key_name: Mapped[str | None] = mapped_column(String(255), default=None)


class RetentionJobRun(Base):
    __tablename__ = "retention_job_runs"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_failure_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_error: Mapped[str | None] = mapped_column(String(128), default=None)
    last_duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    last_items: Mapped[int] = mapped_column(Integer, default=0)
    runs: Mapped[int] = mapped_column(BigInteger, default=0)
    failures: Mapped[int] = mapped_column(BigInteger, default=0)
    owner: Mapped[str | None] = mapped_column(String(64), default=None)


class RetentionReport(Base):
    __tablename__ = "retention_reports"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    generated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    head_seq: Mapped[int] = mapped_column(BigInteger)
    within_limit: Mapped[bool] = mapped_column(Boolean)
    envelope: Mapped[str] = mapped_column(Text)  # canonical JSON of the signed envelope
    signature: Mapped[str] = mapped_column(Text)  # JSON: key_id, algorithm, value
    content: Mapped[str] = mapped_column(Text)  # canonical JSON of the report (the signed bytes)


# Recordings not yet fully purged (wrapped DEK or blob still there), by bucket: what the purge scans every
# minute, and what "blob pending" counts. Small at any time, whatever the size of the table.
RECORDINGS_PENDING_INDEX = Index(
    "ix_recordings_retention_pending",
    Recording.__table__.c.bucket_start,
    postgresql_where=Recording.__table__.c.blob_deleted_at.is_(None),
    sqlite_where=Recording.__table__.c.blob_deleted_at.is_(None),
)
