"""The staff and team admin API's request and response shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.identity.principal import Role
from app.identity.staff.models import STAFF_ROLES
from app.input_text import SingleLine

# An OIDC `sub` (Entra: base64url), an e-mail-like UPN in dev: printable, no `/`, `?`, `#`, `%`, spaces.
SUBJECT_PATTERN = r"^[A-Za-z0-9._@+=:~-]{1,128}$"
TEAM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$"
StaffSubject = Annotated[str, Field(pattern=SUBJECT_PATTERN)]
DISPLAY_NAME_DOC = "How the console shows the person: one line, 1 to 256 characters, no control characters."
TEAM_REF_DOC = "Team id or name (one line, at most 64 characters)"


def _staff_roles(roles: list[Role]) -> list[Role]:
    unknown = sorted(r.value for r in roles if r not in STAFF_ROLES)
    if unknown:
        raise ValueError(f"not a staff role: {', '.join(unknown)} (use engineer, manager, auditor, admin)")
    return sorted(set(roles))


class TeamCreate(BaseModel):
    name: str = Field(pattern=TEAM_NAME_PATTERN, description="Unique team name, e.g. `voice-emea`.")
    managers: list[StaffSubject] = Field(default_factory=list, max_length=20,
                                         description="Subjects of active staff with the manager role.")


class ManagerAdd(BaseModel):
    subject: str = Field(pattern=SUBJECT_PATTERN, description="An active staff member with the manager role.")


class TeamOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    managers: list[str]
    created_at: datetime


class StaffCreate(BaseModel):
    subject: str = Field(pattern=SUBJECT_PATTERN, description="The person's OIDC subject (`sub`).")
    display_name: SingleLine = Field(min_length=1, max_length=256, description=DISPLAY_NAME_DOC)
    team: SingleLine | None = Field(default=None, max_length=64,
                                    description=f"{TEAM_REF_DOC}; unset: no team.")
    roles: list[Role] = Field(default_factory=list, description="Any of engineer, manager, auditor, admin.")

    _roles = field_validator("roles")(_staff_roles)


class StaffUpdate(BaseModel):
    """Fields left out are left alone; `"team": null` takes the person out of their team."""

    display_name: SingleLine | None = Field(default=None, min_length=1, max_length=256, description=DISPLAY_NAME_DOC)
    team: SingleLine | None = Field(default=None, max_length=64,
                                    description=f"{TEAM_REF_DOC}; null: no team.")


class RolesSet(BaseModel):
    roles: list[Role] = Field(description="The complete new set of roles (may be empty).")

    _roles = field_validator("roles")(_staff_roles)


class StaffOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    subject: str
    display_name: str
    team_id: str | None
    roles: list[Role]
    active: bool
    created_at: datetime
    updated_at: datetime

    @field_validator("roles", mode="before")
    @classmethod
    def _sorted(cls, value: object) -> object:
        return sorted(value) if isinstance(value, frozenset | set) else value
