"""Response and request shapes of the audit routes (the public API's form)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class PublicKeyOut(BaseModel):
    key_id: str = Field(description="`ed25519:` + 16 hex digits of SHA-256(public key).")
    algorithm: str = Field(description="Always `Ed25519`.")
    public_key: str = Field(description="Raw 32-byte public key, standard base64.")
    not_before: str = Field(description="Start of the validity window (UTC).")
    not_after: str | None = Field(description="End of the validity window (UTC, exclusive); null while current.")


class PublicKeysOut(BaseModel):
    algorithm: str
    keys: list[PublicKeyOut]


class DamageOut(BaseModel):
    kind: str = Field(
        description="edited, deleted, inserted, reordered, tail_truncated, bad_signature or forged.")
    seq: int = Field(description="The first bad position in the chain.")
    checkpoint: int | None = Field(description="The checkpoint involved, if any.")
    message: str


class VerificationOut(BaseModel):
    ok: bool
    damage: DamageOut | None
    from_seq: int
    entries_checked: int
    head_seq: int = Field(description="The last entry checked.")
    head_hash: str
    checkpoints_checked: int
    sealed_through: int = Field(description="The highest entry a verified checkpoint covers.")
    pending: int = Field(description="Entries committed but not chained yet.")
    oldest_pending_age_s: float | None
    stalled: bool = Field(description="Queued entries older than `pending_alarm_s`: the sequencer is not running.")
    checked_at: str
    duration_s: float
    anchored_through: int = Field(description="The highest entry an exported (anchored) checkpoint covers.")
    unanchored_entries: int = Field(description="Entries (chained or queued) past it: not anchored yet.")
    unanchored_s: float | None = Field(description="Age in seconds of the oldest unanchored entry; null if none.")
    macs: str = Field(description="`checked` (entry MAC keys given) or `not_checked` (public keys only).")
    forged_entries: int = Field(description="Entries without a valid MAC (0 when MACs are not checked).")
    notes: list[str]


class CheckpointOut(BaseModel):
    v: int
    number: int
    head_seq: int
    head_hash: str
    signed_at: str
    key_id: str
    prev_signature: str
    signature: str


class SignedReportIn(BaseModel):
    envelope: dict[str, Any]
    signature: dict[str, Any]
    report: dict[str, Any]


class ReportVerificationOut(BaseModel):
    ok: bool
    signature: str
    chain: str
    recomputed: str
    head_seq: int | None
    unverified: list[str] = Field(
        default_factory=list,
        description="Figures that cannot be recomputed later (state that has changed since), each with what "
        "was checked of it instead; `ok` holds when everything checkable matches.")


class EntryActorOut(BaseModel):
    type: str = Field(description="`staff`, `customer_admin`, `service` or `system`.")
    id: str = Field(description="The staff member's OIDC subject, the customer admin's subject, or a component.")


class EntrySubjectsOut(BaseModel):
    ticket: str | None = Field(description="The ticket's id, if the entry is about one.")
    request_id: str | None = Field(description="The session's request ID, if the entry is about a recording.")
    grant: str | None = Field(description="The access request (grant) id, if any.")
    saw: str | None = Field(description="The SAW's id, if any.")
    resource: str | None = Field(description="The customer resource's id, if any.")


class AuditEntryOut(BaseModel):
    seq: int = Field(description="Position in the hash chain, dense from 1.")
    recorded_at: str = Field(description="When it happened (UTC, `YYYY-MM-DDTHH:MM:SS.ffffffZ`).")
    action: str = Field(description="What happened, one of the actions in docs/AUDIT.md (e.g. `access.approved`).")
    actor: EntryActorOut
    subjects: EntrySubjectsOut
    detail: dict[str, Any] = Field(
        description="The action's detail: ids, counts, codes and times only (its schema is in docs/AUDIT.md).")
    past_last_checkpoint: bool = Field(
        description="True while no signed checkpoint covers the entry yet (seq above `sealed_through`).")


class AuditEntriesOut(BaseModel):
    entries: list[AuditEntryOut] = Field(description="Matching entries, oldest first.")
    head_seq: int = Field(description="The newest chained entry.")
    sealed_through: int = Field(description="The newest entry the last signed checkpoint covers (0: none yet).")
    pending: int = Field(description="Entries committed but not chained yet; listed once chained.")
    next_after: int | None = Field(
        description="Pass as `after` for the next, newer page; null when no newer page can follow.")
    prev_before: int | None = Field(
        description="Pass as `before` for the previous, older page; null when none can precede.")
