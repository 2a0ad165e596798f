"""Staff, their roles, teams and team managers. Staff rows are never deleted: deactivating keeps history."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, UTCDateTime
from app.identity.principal import Role

STAFF_ROLES = frozenset({Role.ENGINEER, Role.MANAGER, Role.AUDITOR, Role.ADMIN})
"""The roles a staff record can hold (a token may carry others: `customer_admin`, `ticketing`)."""

_ROLE_CHECK = "role IN ({})".format(", ".join(f"'{r.value}'" for r in sorted(STAFF_ROLES)))


def new_id() -> str:
    return str(uuid.uuid4())


class Team(Base):
    """A support team. Its managers approve its engineers' access requests."""

    __tablename__ = "teams"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    manager_rows: Mapped[list[TeamManager]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="TeamManager.subject"
    )

    @property
    def managers(self) -> list[str]:
        return [row.subject for row in self.manager_rows]


class Staff(Base):
    """A person who signs in with the OIDC issuer; `subject` is the token's `sub`."""

    __tablename__ = "staff"

    subject: Mapped[str] = mapped_column(String(128), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(256))
    team_id: Mapped[str | None] = mapped_column(ForeignKey("teams.id", ondelete="RESTRICT"), index=True,
                                                default=None)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    role_rows: Mapped[list[StaffRole]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="StaffRole.role"
    )

    @property
    def roles(self) -> frozenset[Role]:
        return frozenset(Role(row.role) for row in self.role_rows)

    def holds(self, role: Role) -> bool:
        """The record grants `role`: it is active and lists the role."""
        return self.active and role in self.roles


class StaffRole(Base):
    """One role of one staff member (a row per role keeps "who are the managers" a plain query)."""

    __tablename__ = "staff_roles"
    __table_args__ = (CheckConstraint(_ROLE_CHECK, name="role"),)

    subject: Mapped[str] = mapped_column(ForeignKey("staff.subject", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), primary_key=True, index=True)


class TeamManager(Base):
    """A manager of a team (a team may have several; a manager may manage several teams)."""

    __tablename__ = "team_managers"

    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True)
    subject: Mapped[str] = mapped_column(ForeignKey("staff.subject", ondelete="RESTRICT"), primary_key=True,
                                         index=True)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime())
    added_by: Mapped[str] = mapped_column(String(128))
