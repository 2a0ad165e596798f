"""Console sessions and pending sign-ins, shared by every replica (migration 0008_console_sessions).

The row is keyed by SHA-256 of the session id (the cookie value), never the id itself, and everything secret
(bearer token, PKCE verifier, nonce, state, flashes) is sealed under a key derived from that id
(`app/console/sealing.py`): the database alone can neither replay a cookie nor decrypt a row.
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
    kind: Mapped[str] = mapped_column(String(16))  # "session" or "login" (a pending OIDC sign-in)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())  # min(created + absolute, seen + idle)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
