"""The tamper-evident audit trail (C6): hash-chained entries, signed checkpoints, verifier, reports.

Every service records what it does with one call, in its own transaction:

    from app.audit import Actor, AuditAction, Subjects, append_entry, detail_time

    await append_entry(session=session, clock=clock, actor=Actor.staff(me.subject),
                       action=AuditAction.ACCESS_APPROVED, subjects=Subjects(grant=grant.id),
                       detail={"requester": grant.requester, "expires_at": detail_time(grant.expires_at)})

`audit` calls no other domain. docs/AUDIT.md has the detail schema of every action.
"""

from app.audit.actions import (
    ACTION_SCHEMAS,
    Actor,
    ActorType,
    AuditAction,
    InvalidAuditEntry,
    JSONValue,
    Subjects,
    detail_time,
    kek_bucket,
)
from app.audit.service import AuditEntry, append_entry

__all__ = [
    "ACTION_SCHEMAS",
    "Actor",
    "ActorType",
    "AuditAction",
    "AuditEntry",
    "InvalidAuditEntry",
    "JSONValue",
    "Subjects",
    "append_entry",
    "detail_time",
    "kek_bucket",
]
