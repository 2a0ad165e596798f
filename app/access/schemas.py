"""The JIT access API's request and response shapes. Free text is checked here, at the edge (app/input_text.py)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.access.grant_status import GrantStatus
from app.input_text import Identifier, Prose, SingleLine
from app.request_id import RequestId

JUSTIFICATION_DOC = ("Why you need these recordings; must name the ticket's reference. 20 to 2000 characters; "
                     "line breaks and tabs allowed, no other control characters. Stored as written; the audit "
                     "entry holds it on one line (line breaks and tabs as spaces), cut to 1000 characters.")


class AccessRequestCreate(BaseModel):
    ticket_id: Identifier = Field(description="The ticket you are assigned to.")
    # As asked: any identifier here; `create_access_request` checks each is a request ID (one error for all).
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


STATUS_DOC = (
    "What the request is now, derived by one function (`app/access/grant_status.py`) from the row, the "
    "customer's verdict (Lockbox), the named recordings and their consents: `waiting_for_manager`; "
    "`waiting_for_customer` (the manager approved, the customer has not yet: no read is allowed, and the grant's "
    "time runs); `approved` (until `expires_at`); `expired`; `revoked`; `denied` (by the manager or by the "
    "customer); `lapsed` (never decided within 24 h); `consent_ended` (no named recording is under a consent of "
    "the ticket any more: withdrawn, the ticket closed, or made under another ticket's consent); "
    "`recording_erased` (every named recording is erased or past its 30 days). `state` is the stored value: it "
    "stays `approved` while a grant waits for the customer or after the customer refused it.")


class AccessRequestOut(BaseModel):
    id: str
    requester: str
    ticket_id: str
    request_ids: list[RequestId]
    justification: str
    state: str = Field(description="The stored state (pending, approved, denied, revoked, expired, lapsed); "
                                   "read `status` for what the request is now.")
    status: GrantStatus = Field(description=STATUS_DOC)
    readable_request_ids: list[RequestId] = Field(
        description="The named request IDs a read could be allowed for now as far as the grant goes (empty unless "
                    "`status` is `approved`); each read still checks the SAW, the assignment, the team and its "
                    "manager at that moment (C5).")
    requested_minutes: int
    granted_minutes: int | None = Field(description="The duration the manager approved (at most the one asked); "
                                                    "null until approved.")
    created_at: str
    decided_by: str | None
    decided_at: str | None
    expires_at: str | None
    extends_id: str | None
    needs_customer_approval: bool
    customer_approved: bool | None
