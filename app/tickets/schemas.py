from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.input_text import IDENTIFIER_RULE, Identifier, SingleLine


class TicketCreate(BaseModel):
    resource: SingleLine = Field(min_length=1, max_length=64,
                                 description="Name of the customer resource the ticket is about.")
    external_ref: str = Field(pattern=r"^[A-Za-z0-9._:\-]{1,64}$",
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
    ticket_id: Identifier = Field(description="The open support ticket this consent serves.")
    days: int = Field(default=7, ge=1, le=30, description="How long recording stays on (default 7, at most 30).")
    require_customer_approval: bool = Field(
        default=False, description="Each engineer's access grant also needs this customer's approval."
    )


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
