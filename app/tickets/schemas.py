from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.input_text import IDENTIFIER_RULE, Identifier, SingleLine

TICKET_REF_PATTERN = r"^[A-Za-z0-9._:\-]{1,64}$"


class TicketCreate(BaseModel):
    resource: SingleLine = Field(min_length=1, max_length=64,
                                 description="Name of the customer resource the ticket is about.")
    external_ref: str = Field(pattern=TICKET_REF_PATTERN,
                              description="The ticketing system's own ticket number, e.g. `INC-20431`.")
    engineers: list[Identifier] = Field(default_factory=list, max_length=20,
                                        description=f"OIDC subjects of engineers to assign at once: "
                                                    f"each {IDENTIFIER_RULE}.")


class AssignmentCreate(BaseModel):
    engineer: Identifier = Field(description=f"The engineer's OIDC subject: {IDENTIFIER_RULE}.")


class TicketOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    resource: str
    external_ref: str
    state: str = Field(description="`open` or `closed`.")
    engineers: list[str]
    created_at: datetime
    closed_at: datetime | None


class ConsentCreate(BaseModel):
    """Name the ticket by its reference (`CS-1001`, what support tells the customer) or by its ID: one of them."""

    ticket_ref: str | None = Field(
        default=None, pattern=TICKET_REF_PATTERN,
        description="The ticket's external reference, as support gave it (e.g. `CS-1001`); unique per resource. "
        "Give this or `ticket_id`.")
    ticket_id: Identifier | None = Field(
        default=None, description="The open support ticket's ID (`id` of the ticket). Give this or `ticket_ref`.")
    days: int = Field(default=7, ge=1, le=30, description="How long recording stays on (default 7, at most 30).")
    require_customer_approval: bool = Field(
        default=False, description="Each engineer's access grant also needs this customer's approval."
    )

    @model_validator(mode="after")
    def _one_ticket(self) -> ConsentCreate:
        if (self.ticket_ref is None) == (self.ticket_id is None):
            raise ValueError("name the ticket by `ticket_ref` or by `ticket_id`, not both and not neither")
        return self

    @classmethod
    def naming(cls, ticket: str, **values: Any) -> ConsentCreate:
        """The console's one field: a ticket ID (a UUID) or else its reference."""
        try:
            uuid.UUID(ticket)
        except ValueError:
            return cls(ticket_ref=ticket, **values)
        return cls(ticket_id=ticket, **values)


class ConsentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    resource: str
    ticket_id: str
    ticket_ref: str
    state: str = Field(description="`active`, `scheduled`, `expired`, `withdrawn` or `ticket_closed`.")
    not_before: datetime
    not_after: datetime
    granted_by: str
    granted_at: datetime
    ended_at: datetime | None
    require_customer_approval: bool
    recording_from: datetime | None = Field(
        description="When new sessions of this resource are recorded from on every replica: the replica that "
        "accepted the opt-in records at once (from `not_before`), the others within `VOICELOG_CONSENT_REFRESH_S` "
        "plus one reload (docs/CONSOLE.md). Null once the consent has ended.")
