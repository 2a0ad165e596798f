"""Ready-made audit entries for tests: one valid example of every kind of action."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.actions import Actor, AuditAction, JSONValue, Subjects, detail_time, kek_bucket
from app.audit.service import AuditEntry, append_entry, integrate_pending
from app.clock import ManualClock


@dataclass(frozen=True)
class Step:
    actor: Actor
    action: AuditAction
    subjects: Subjects = field(default_factory=Subjects)
    detail: Mapping[str, JSONValue] = field(default_factory=dict)


def example_steps(n: int, now: datetime) -> list[Step]:
    """A valid step for each template, varied by `n`."""
    rid, grant, ticket = f"req-{n}", f"grant-{n % 7}", f"ticket-{n % 5}"
    return [
        Step(Actor.service("ticketing"), AuditAction.TICKET_CREATED, Subjects(ticket=ticket, resource="res-1"),
             {"external_ref": f"INC{n}"}),
        Step(Actor.customer_admin("admin@contoso"), AuditAction.CONSENT_GRANTED,
             Subjects(ticket=ticket, resource="res-1"),
             {"consent": f"consent-{n}", "not_before": detail_time(now),
              "not_after": detail_time(now + timedelta(days=1))}),
        Step(Actor.system(), AuditAction.RECORDING_STARTED, Subjects(request_id=rid, resource="res-1", ticket=ticket),
             {"region": "eastus", "started_at": detail_time(now), "kek_bucket": kek_bucket(now)}),
        Step(Actor.staff("alice"), AuditAction.ACCESS_REQUESTED, Subjects(grant=grant, ticket=ticket),
             {"request_ids": [rid], "justification": "caller heard silence at 00:41", "duration_s": 3600}),
        Step(Actor.staff("bob"), AuditAction.ACCESS_APPROVED, Subjects(grant=grant),
             {"requester": "alice", "expires_at": detail_time(now + timedelta(hours=1))}),
        Step(Actor.staff("alice"), AuditAction.RECORDING_READ, Subjects(request_id=rid, grant=grant, saw="saw-1"),
             {"bytes": 1000 + n, "part": "audio_inbound"}),
        Step(Actor.system(), AuditAction.RECORDING_PURGED, Subjects(request_id=rid),
             {"region": "eastus", "started_at": detail_time(now - timedelta(days=30)), "age_s": 30 * 86400,
              "reason": "retention"}),
        Step(Actor.staff("carol"), AuditAction.ADMIN_CHANGED, detail={"setting": f"s{n}", "change": "set"}),
    ]


async def append_step(session: AsyncSession, clock: ManualClock, step: Step) -> AuditEntry:
    return await append_entry(session=session, clock=clock, actor=step.actor, action=step.action,
                              subjects=step.subjects, detail=step.detail)


async def append_and_chain(session: AsyncSession, clock: ManualClock, steps: list[Step],
                           advance: Callable[[int], timedelta] = lambda _i: timedelta(seconds=1)) -> None:
    """Append `steps` in the session's transaction and chain them (PostgreSQL queues first)."""
    for index, step in enumerate(steps):
        await append_step(session, clock, step)
        clock.advance(advance(index))
    await integrate_pending(session, wait=True, limit=100_000)
