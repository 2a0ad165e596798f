from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime


def new_id() -> str:
    return str(uuid.uuid4())


class Saw(Base):
    """A SAW: the SHA-256 of its client certificate (DER), bound to one person. Revoked rows are kept.

    A fingerprint is registered once, ever: a revoked device's certificate can never be registered again.
    """

    __tablename__ = "saws"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    cert_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    owner_subject: Mapped[str] = mapped_column(ForeignKey("staff.subject", ondelete="RESTRICT"), index=True)
    label: Mapped[str] = mapped_column(String(128))
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime())
    registered_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    revoked_by: Mapped[str | None] = mapped_column(String(128), default=None)
    revoke_reason: Mapped[str | None] = mapped_column(String(64), default=None)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None
