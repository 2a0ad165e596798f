from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

ENGINEER_PATTERN = r"^[\x21-\x7e]{1,128}$"


class TicketCreate(BaseModel):
    resource: str = Field(description="Name of the customer resource the ticket is about.")
    external_ref: str = Field(pattern=r"^[A-Za-z0-9._:\-]{1,64}$",
                              description="The ticketing system's own ticket number, e.g. `INC-20431`.")
    engineers: list[str] = Field(default_factory=list, max_length=20,
                                 description="OIDC subjects of engineers to assign at once.")


class AssignmentCreate(BaseModel):
    engineer: str = Field(pattern=ENGINEER_PATTERN, description="The engineer's OIDC subject.")


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
    ticket_id: str = Field(description="The open support ticket this consent serves.")
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
