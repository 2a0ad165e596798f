from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.capture.states import IncompleteReason, ShredReason
from app.db import Base, StrEnumText, UTCDateTime
from app.request_id import RequestId


class RecordingState(StrEnum):
    """A recording row's state, stored as its value (the API shows the same string)."""

    RECORDING = "recording"  # a replica is writing it (heartbeats `heartbeat_at`)
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"  # ended early; `incomplete_reason` says why (C8)
    ERASED = "erased"  # data key destroyed on the customer's request
    PURGED = "purged"  # data key destroyed at the end of retention (C7)


class Recording(Base):
    """One recorded session (only ever created under an active consent, C1).

    The wrapped data key lives here; deleting it (erasure, purge) makes the blob unreadable. No session
    content is ever stored in this table (C2).
    """

    __tablename__ = "recordings"
    __table_args__ = (
        Index("ix_recordings_resource_started", "resource_id", "started_at"),
        Index("ix_recordings_state_heartbeat", "state", "heartbeat_at"),
        Index("ix_recordings_bucket", "region", "bucket_start"),
    )

    # A NewType needs its column type spelled out (SQLAlchemy resolves no Core type for it); the column is unchanged.
    request_id: Mapped[RequestId] = mapped_column(String(32), primary_key=True)
    resource_id: Mapped[str] = mapped_column(ForeignKey("resources.id", ondelete="RESTRICT"))
    region: Mapped[str] = mapped_column(String(32))
    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id", ondelete="RESTRICT"), index=True)
    consent_id: Mapped[str] = mapped_column(ForeignKey("consents.id", ondelete="RESTRICT"), index=True)
    correlation_id: Mapped[str | None] = mapped_column(String(128), default=None, index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    bucket_start: Mapped[datetime] = mapped_column(UTCDateTime())
    wrapped_dek: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    blob_name: Mapped[str] = mapped_column(String(160))
    state: Mapped[RecordingState] = mapped_column(StrEnumText(RecordingState, 16),
                                                 default=RecordingState.RECORDING)
    incomplete_reason: Mapped[IncompleteReason | None] = mapped_column(StrEnumText(IncompleteReason, 64), default=None)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    segments: Mapped[int] = mapped_column(Integer, default=0)
    bytes_committed: Mapped[int] = mapped_column(Integer, default=0)
    frames: Mapped[int] = mapped_column(Integer, default=0)
    dropped_frames: Mapped[int] = mapped_column(Integer, default=0)
    owner: Mapped[str | None] = mapped_column(String(64), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    shredded_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    blob_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    shred_reason: Mapped[ShredReason | None] = mapped_column(StrEnumText(ShredReason, 16), default=None)
    receipt: Mapped[str | None] = mapped_column(Text, default=None)
