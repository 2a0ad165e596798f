from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.access.states import AccessRequestState
from app.db import Base, StrEnumText, UTCDateTime
from app.request_id import RequestId


class AccessRequest(Base):
    """A just-in-time request to read named recordings; once approved it is the grant (C5).

    Rows are never deleted: the history is what access reviews are made of.
    """

    __tablename__ = "access_requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    requester: Mapped[str] = mapped_column(String(128), index=True)
    requester_team_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id", ondelete="RESTRICT"), index=True)
    justification: Mapped[str] = mapped_column(Text)
    requested_duration_s: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[AccessRequestState] = mapped_column(StrEnumText(AccessRequestState, 16),
                                                     default=AccessRequestState.PENDING, index=True)
    decided_by: Mapped[str | None] = mapped_column(String(128), default=None)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    decision_reason: Mapped[str | None] = mapped_column(String(200), default=None)
    approver_was_manager: Mapped[bool] = mapped_column(Boolean, default=False)
    granted_duration_s: Mapped[int | None] = mapped_column(Integer, default=None)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    revoked_by: Mapped[str | None] = mapped_column(String(128), default=None)
    revoke_reason: Mapped[str | None] = mapped_column(String(200), default=None)
    extends_id: Mapped[str | None] = mapped_column(ForeignKey("access_requests.id", ondelete="RESTRICT"),
                                                   default=None)
    needs_customer_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    customer_decided_by: Mapped[str | None] = mapped_column(String(128), default=None)
    customer_decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    customer_approved: Mapped[bool | None] = mapped_column(Boolean, default=None)
    expiry_warned_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class AccessRequestItem(Base):
    """One request ID named by an access request (1 to 20 per request)."""

    __tablename__ = "access_request_items"

    access_request_id: Mapped[str] = mapped_column(ForeignKey("access_requests.id", ondelete="RESTRICT"),
                                                   primary_key=True)
    request_id: Mapped[RequestId] = mapped_column(String(32), primary_key=True, index=True)
