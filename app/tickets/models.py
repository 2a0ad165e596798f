from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, StrEnumText, UTCDateTime
from app.tickets.states import ConsentEnding


def new_id() -> str:
    return str(uuid.uuid4())


class Ticket(Base):
    """A support ticket about one customer resource, filed by the ticketing system."""

    __tablename__ = "tickets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    resource_id: Mapped[str] = mapped_column(ForeignKey("resources.id", ondelete="RESTRICT"), index=True)
    external_ref: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    @property
    def is_open(self) -> bool:
        return self.closed_at is None


class TicketAssignment(Base):
    """An engineer on a ticket. Unassigning ends the row; history is kept for access reviews."""

    __tablename__ = "ticket_assignments"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id", ondelete="RESTRICT"), index=True)
    engineer: Mapped[str] = mapped_column(String(128), index=True)
    assigned_by: Mapped[str] = mapped_column(String(128))
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime())
    unassigned_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class Consent(Base):
    """A customer admin's opt-in: record resource R's sessions for ticket T within [not_before, not_after)."""

    __tablename__ = "consents"
    __table_args__ = (UniqueConstraint("id", "ticket_id", name="uq_consents_id_ticket"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    resource_id: Mapped[str] = mapped_column(ForeignKey("resources.id", ondelete="RESTRICT"), index=True)
    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id", ondelete="RESTRICT"), index=True)
    granted_by: Mapped[str] = mapped_column(String(128))
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    not_before: Mapped[datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    require_customer_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    ended_by: Mapped[str | None] = mapped_column(String(128), default=None)
    end_reason: Mapped[ConsentEnding | None] = mapped_column(StrEnumText(ConsentEnding, 32), default=None)

    def active_at(self, moment: datetime) -> bool:
        return self.ended_at is None and self.not_before <= moment < self.not_after

    def covers(self, session_start: datetime) -> bool:
        """Was a session starting then allowed to be recorded? Never once its recordings were erased."""
        if self.end_reason == ConsentEnding.ERASED:
            return False
        in_window = self.not_before <= session_start < self.not_after
        return in_window and (self.ended_at is None or session_start < self.ended_at)
