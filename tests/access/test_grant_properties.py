"""Property: any sequence of request / approve / deny / revoke / time passing / unassign / reassign /
team move keeps C5.

After every step, a read is allowed exactly when the requester holds a grant that names the recording,
was approved by a present manager of the requester's present team who is not the requester, is not
revoked or ended, has not expired, and the requester is assigned to the ticket now. Team moves come in
two kinds: with the bookkeeping (the grants end, as the staff service does) and without it (only the
directory changes), so the read check alone is shown to hold. The services run against a real SQLite
database migrated to head.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.access import service
from app.access.endings import end_grants_of
from app.access.grant_ender import AccessGrantEnder
from app.access.notify import Notifier
from app.access.policy import ConsentView, RecordingView, SawView, StaffView, decide_read
from app.access.service import Person
from app.audit.actions import Actor
from app.capture.models import Recording
from app.clock import ManualClock
from app.db import create_engine
from app.errors import AppError
from app.identity.principal import Principal, Role
from app.identity.staff.grant_endings import GrantEnding
from app.models import Consent, Resource, Ticket, TicketAssignment
from app.tickets.service import assign_engineer, tickets_assigned_to, unassign_engineer

RID = "ab" * 16
START = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
PEOPLE = {
    "eng": Person("eng", "team-a", True, frozenset({"engineer"})),
    "boss": Person("boss", "team-a", True, frozenset({"manager"})),
    "selfboss": Person("selfboss", "team-a", True, frozenset({"engineer", "manager"})),
    "stranger": Person("stranger", "team-b", True, frozenset({"manager"})),
}
MANAGERS = {"team-a": {"boss", "selfboss"}, "team-b": {"stranger"}}


class Directory:
    """The staff directory as it is now; team moves change `people`."""

    def __init__(self) -> None:
        self.people = dict(PEOPLE)

    async def person(self, session: AsyncSession, subject: str) -> Person | None:
        return self.people.get(subject)

    async def managers(self, session: AsyncSession, team_id: str) -> set[str]:
        return MANAGERS.get(team_id, set())

    async def teams_managed(self, session: AsyncSession, subject: str) -> list[str]:
        return [t for t, m in MANAGERS.items() if subject in m]


@dataclass
class ModelGrant:
    requester: str
    approved_by: str | None = None
    expires_at: datetime | None = None
    closed: bool = False  # denied or revoked


@dataclass
class Model:
    grants: dict[str, ModelGrant] = field(default_factory=dict)
    teams: dict[str, str] = field(default_factory=lambda: {"eng": "team-a", "selfboss": "team-a"})
    assigned: set[str] = field(default_factory=lambda: {"eng", "selfboss"})

    def allows(self, requester: str, now: datetime) -> bool:
        return requester in self.assigned and any(
            g.requester == requester and g.approved_by is not None and not g.closed
            and g.approved_by != requester and g.approved_by in MANAGERS[self.teams[requester]]
            and g.expires_at is not None and now < g.expires_at
            for g in self.grants.values())

    def end_grants_of(self, requester: str) -> None:
        for grant in self.grants.values():
            if grant.requester == requester and (grant.approved_by is None or grant.expires_at is not None):
                grant.closed = True


requesters = st.sampled_from(["eng", "selfboss"])
deciders = st.sampled_from(["boss", "selfboss", "stranger", "eng"])
steps = st.lists(st.one_of(
    st.tuples(st.just("request"), requesters, st.integers(5, 480)),
    st.tuples(st.just("approve"), deciders, st.integers(0, 9), st.one_of(st.none(), st.integers(1, 480))),
    st.tuples(st.just("deny"), deciders, st.integers(0, 9)),
    st.tuples(st.just("revoke"), st.sampled_from(["eng", "selfboss", "boss", "stranger"]), st.integers(0, 9)),
    st.tuples(st.just("wait"), st.integers(1, 600)),
    st.tuples(st.just("unassign"), requesters),
    st.tuples(st.just("assign"), requesters),
    st.tuples(st.sampled_from(["move", "move_quietly"]), requesters, st.sampled_from(["team-a", "team-b"])),
), max_size=25)
TICKETING = Principal("svc", frozenset({Role.TICKETING}))
# Access's grant ender, as `build_context` makes it; no team has a webhook here, so nothing is sent.
GRANTS = AccessGrantEnder(notifier=Notifier([], CollectorRegistry()))


async def run(plan: list[tuple[object, ...]], database: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    factory = async_sessionmaker(engine, expire_on_commit=False)
    clock = ManualClock(START)
    directory = Directory()
    model = Model()
    ids: list[str] = []
    async with factory() as session:
        session.add(Resource(id="res", name="res", region="eastus", upstream_endpoint="wss://x", owner_tenant="t",
                             created_at=START))
        session.add(Ticket(id="tic", resource_id="res", external_ref="INC-1", created_by="svc", created_at=START))
        for engineer in ("eng", "selfboss"):
            session.add(TicketAssignment(ticket_id="tic", engineer=engineer, assigned_by="svc", assigned_at=START))
        await session.flush()
        session.add(Consent(id="con", resource_id="res", ticket_id="tic", granted_by="cust", granted_at=START,
                            not_before=START, not_after=START + timedelta(days=30)))
        await session.flush()
        session.add(Recording(request_id=RID, resource_id="res", region="eastus", ticket_id="tic", consent_id="con",
                              started_at=START, bucket_start=START, blob_name="b"))
        await session.commit()
        for step in plan:
            kind = step[0]
            try:
                if kind == "request":
                    row = await service.create_access_request(
                        session=session, clock=clock, actor=directory.people[str(step[1])],
                        data=service.NewAccessRequest("tic", [RID], "need it for INC-1 now",
                                                      timedelta(minutes=int(str(step[2])))))
                    ids.append(row.id)
                    model.grants[row.id] = ModelGrant(requester=str(step[1]))
                elif kind == "wait":
                    clock.advance(timedelta(minutes=int(str(step[1]))))
                elif kind == "unassign":
                    await unassign_engineer(session=session, clock=clock, actor=TICKETING, ticket_id="tic",
                                            engineer=str(step[1]), grant_ender=GRANTS)
                    model.assigned.discard(str(step[1]))
                    model.end_grants_of(str(step[1]))
                elif kind == "assign":
                    await assign_engineer(session=session, clock=clock, actor=TICKETING, ticket_id="tic",
                                          engineer=str(step[1]))
                    model.assigned.add(str(step[1]))
                elif kind in ("move", "move_quietly"):
                    subject, team = str(step[1]), str(step[2])
                    directory.people[subject] = replace(directory.people[subject], team_id=team)
                    model.teams[subject] = team
                    if kind == "move":  # what the staff service does; "move_quietly" leaves it to the read check
                        await end_grants_of(session=session, clock=clock, actor=Actor.system("test"),
                                            engineer=subject, reason=GrantEnding.MOVED)
                        model.end_grants_of(subject)
                elif ids:
                    target = ids[int(str(step[2])) % len(ids)]
                    who = directory.people[str(step[1])]
                    if kind == "approve":
                        minutes = step[3]
                        row = await service.approve(session=session, clock=clock, directory=directory,
                                                    access_request_id=target, actor=who,
                                                    duration=timedelta(minutes=int(str(minutes))) if minutes else None)
                        model.grants[target].approved_by, model.grants[target].expires_at = who.subject, row.expires_at
                    elif kind == "deny":
                        await service.deny(session=session, clock=clock, directory=directory,
                                           access_request_id=target, actor=who, reason="no")
                        model.grants[target].closed = True
                    else:
                        await service.revoke(session=session, clock=clock, directory=directory,
                                             access_request_id=target, actor=who, reason="done")
                        model.grants[target].closed = True
                await session.commit()
            except AppError:
                await session.rollback()
            now = clock.now()
            for requester in ("eng", "selfboss"):
                grant = await service.grant_for_read(session=session, requester=requester, request_id=RID, now=now)
                team = directory.people[requester].team_id or ""
                who = StaffView(requester, True, True, team, team_managers=frozenset(MANAGERS[team]),
                                assigned_tickets=await tickets_assigned_to(session=session, engineer=requester))
                decision = decide_read(
                    now=now, actor=who, saw=SawView("s", requester, False),
                    grant=grant, recording=RecordingView(RID, "tic", now - timedelta(days=1), False),
                    consent=ConsentView("tic", ended=False, ticket_open=True), request_id=RID,
                    retention=timedelta(days=30))
                assert decision.allowed == model.allows(requester, now), (plan, requester, decision.reason)
    await engine.dispose()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=steps)
def test_any_sequence_of_decisions_keeps_c5(migrated_databases: dict[str, str], plan: list[tuple[object, ...]]
                                             ) -> None:
    template = Path(migrated_databases["sqlite"].removeprefix("sqlite+aiosqlite:///"))
    with tempfile.TemporaryDirectory() as scratch:
        database = Path(scratch) / "grants.db"
        shutil.copyfile(template, database)
        asyncio.run(run(plan, database))
