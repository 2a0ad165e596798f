"""Console sessions, and used-once markers of sign-ins, shared by every replica (migration 0008).

The row is keyed by SHA-256 of the session id (the cookie value), never the id itself, and everything secret
(bearer token, flashes) is sealed under a key derived from that id (`app/console/sealing.py`): the database
alone can neither replay a cookie nor decrypt a row. A sign-in in progress has no row: its state travels
sealed in the login cookie; a marker row (nothing sealed) records that it came back, so it is used once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime


class ConsoleSessionRow(Base):
    __tablename__ = "console_sessions"
    # Expired rows are deleted and the oldest trimmed per kind on every create: both walk this index.
    __table_args__ = (Index("ix_console_sessions_kind_expires_at", "kind", "expires_at"),)

    id_sha256: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "session", or "login" (a sign-in that came back, used once)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())  # min(created + absolute, seen + idle)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
