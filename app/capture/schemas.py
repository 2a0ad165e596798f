from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class CustomerRecordingOut(BaseModel):
    """What a customer's admin sees of their own resource's recordings: ids and times, never content."""

    request_id: str
    started_at: datetime
    ended_at: datetime | None
    state: str = Field(description="`recording`, `complete`, `incomplete`, `erased` or `purged`.")
    incomplete_reason: str | None
    correlation_id: str | None = Field(description="The client's own `x-ms-client-request-id`, if it sent one.")
    ticket_id: str
    consent_id: str


class ErasureReceiptOut(BaseModel):
    consent_id: str
    erased_at: datetime
    recordings: int
    receipts: list[dict[str, object]] = Field(description="One receipt per recording: ids, bucket, key digest.")
    blobs_pending: list[str] = Field(description="Request IDs whose blob delete is retried in the background "
                                                 "(their data key is already destroyed: unreadable).")
    receipt_sha256: str = Field(description="SHA-256 of the canonical JSON of `receipts`, for the customer's "
                                            "records. The audit trail names the same request IDs.")
