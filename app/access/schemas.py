"""The JIT access API's request and response shapes. Free text is checked here, at the edge (app/input_text.py)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.input_text import Identifier, Prose, SingleLine

JUSTIFICATION_DOC = ("Why you need these recordings; must name the ticket's reference. 20 to 2000 characters; "
                     "line breaks and tabs allowed, no other control characters. Stored as written; the audit "
                     "entry holds it on one line (line breaks and tabs as spaces), cut to 1000 characters.")


class AccessRequestCreate(BaseModel):
    ticket_id: Identifier = Field(description="The ticket you are assigned to.")
    request_ids: list[Identifier] = Field(min_length=1, max_length=20,
                                          description="Request IDs the customer named (32 hex digits each).")
    justification: Prose = Field(min_length=20, max_length=2000, description=JUSTIFICATION_DOC)
    duration_minutes: int = Field(default=240, ge=5, le=480, description="Default 4 h, at most 8 h.")


class Decision(BaseModel):
    duration_minutes: int | None = Field(default=None, ge=1, le=480, description="Approve for less time.")
    reason: SingleLine = Field(default="", max_length=200,
                               description="Why (needed to deny): one line, at most 200 characters, no control "
                                           "characters; the audit entry keeps its first 64.")


class Extension(BaseModel):
    justification: Prose = Field(min_length=20, max_length=2000, description=JUSTIFICATION_DOC)
    duration_minutes: int = Field(default=240, ge=5, le=480, description="Default 4 h, at most 8 h.")


class AccessRequestOut(BaseModel):
    id: str
    requester: str
    ticket_id: str
    request_ids: list[str]
    justification: str
    state: str
    requested_minutes: int
    created_at: str
    decided_by: str | None
    decided_at: str | None
    expires_at: str | None
    extends_id: str | None
    needs_customer_approval: bool
    customer_approved: bool | None
