"""The tamper-evident audit trail (C6): hash-chained entries, signed checkpoints, verifier, reports.

Every service records what it does with one call, in its own transaction:

    from app.audit.actions import Actor, AuditAction, Subjects, detail_time
    from app.audit.service import append_entry

    await append_entry(session=session, clock=clock, actor=Actor.staff(me.subject),
                       action=AuditAction.ACCESS_APPROVED, subjects=Subjects(grant=grant.id),
                       detail={"requester": grant.requester, "expires_at": detail_time(grant.expires_at)})

`audit` calls no other domain. docs/AUDIT.md has the detail schema of every action.
"""
