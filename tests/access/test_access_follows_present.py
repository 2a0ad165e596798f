"""Access follows the present, not the past (issue 15, findings 1, 2, 5, 8a), on SQLite and PostgreSQL.

The people, teams, ticket and grants are made with the real services; a read goes through the real
`authorize_read` (the staff directory, the ticket assignments and the read policy), with a stand-in
only for the SAW (its mutual-TLS check has its own tests in tests/access/saw/).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.access import service as access
from app.access.endings import take_ended_grants
from app.access.grant_ender import AccessGrantEnder
from app.access.metrics import AccessMetrics
from app.access.models import AccessRequest, AccessRequestItem
from app.access.notify import Notifier
from app.access.people import StaffRecords
from app.access.playback.service import authorize_read
from app.access.policy import SawView
from app.access.ratelimit import ReadLimiter
from app.access.transparency import access_log
from app.audit.actions import Actor
from app.capture.models import Recording
from app.clock import ManualClock
from app.errors import AppError
from app.identity.principal import Principal, Role
from app.identity.staff import service as staff
from app.identity.staff.models import Staff
from app.identity.staff.schemas import StaffCreate, StaffUpdate, TeamCreate
from app.models import Resource
from app.tickets import service as tickets
from app.tickets.consent_cache import ConsentCache
from app.tickets.models import TicketAssignment
from app.tickets.schemas import ConsentCreate, TicketCreate
from tests.fixtures.saw import audit_records

ADMIN = Actor.service("admin-token")
TICKETING = Principal("svc-ticketing", frozenset({Role.TICKETING}))
DIRECTORY = StaffRecords()
# Access's grant ender, as `build_context` makes it; no team has a webhook here, so nothing is sent.
GRANTS = AccessGrantEnder(notifier=Notifier([], CollectorRegistry()))


class SawOf:
    """Every reader is on their own registered SAW (the SAW condition is not what these tests are about)."""

    async def saw_for(self, session: AsyncSession, fingerprint: str | None, owner_subject: str) -> SawView | None:
        return SawView(id=f"saw-{owner_subject}", owner_subject=owner_subject, revoked=False)


@dataclass
class World:
    session: AsyncSession
    clock: ManualClock
    tag: str
    ticket_id: str
    ticket_ref: str
    resource: Resource
    request_id: str  # a recording of the ticket's resource
    other_request_id: str  # a recording of another tenant's resource

    def who(self, name: str) -> str:
        return f"{name}-{self.tag}"

    def team(self, name: str) -> str:
        return f"team-{name}-{self.tag}"

    async def person(self, name: str) -> access.Person:
        found = await DIRECTORY.person(self.session, self.who(name))
        assert found is not None
        return found

    async def ask(self, name: str, request_ids: list[str] | None = None) -> AccessRequest:
        return await access.create_access_request(
            session=self.session, clock=self.clock, actor=await self.person(name),
            data=access.NewAccessRequest(self.ticket_id, request_ids or [self.request_id],
                                         f"Caller heard clipped audio, see {self.ticket_ref}", timedelta(hours=1)))

    async def approve(self, row: AccessRequest, manager: str) -> AccessRequest:
        return await access.approve(session=self.session, clock=self.clock, directory=DIRECTORY,
                                    access_request_id=row.id, actor=await self.person(manager))

    async def reads(self, name: str, request_id: str | None = None) -> bool:
        allowed = await authorize_read(
            session=self.session, clock=self.clock, directory=DIRECTORY, saws=SawOf(), limiter=ReadLimiter(),
            metrics=AccessMetrics(CollectorRegistry()), saw_fingerprint=None,
            actor=Principal(self.who(name), frozenset({Role.ENGINEER})), request_id=request_id or self.request_id,
            part="transcripts", retention=timedelta(days=30))
        return allowed is not None

    async def move_quietly(self, name: str, team: str) -> None:
        """Change the staff row's team behind the staff service's back: no grant is ended."""
        row = await self.session.get(Staff, self.who(name))
        assert row is not None
        row.team_id = (await staff.resolve_team(session=self.session, ref=self.team(team))).id
        await self.session.flush()

    async def last_denial(self) -> str:
        denials = [r for r in await audit_records(self.session) if r.action == "recording.read_denied"]
        return str(denials[-1].detail["reason"])

    async def revocations(self) -> list[tuple[str, str]]:
        return [(r.actor, str(r.detail.get("reason"))) for r in await audit_records(self.session)
                if r.action == "access.revoked"]


async def add_resource(session: AsyncSession, clock: ManualClock, name: str) -> Resource:
    resource = Resource(id=str(uuid4()), name=name, region="eastus", upstream_endpoint="wss://up.example",
                        owner_tenant=f"tenant-{name}", created_at=clock.now())
    session.add(resource)
    await session.flush()
    return resource


async def add_recording(session: AsyncSession, clock: ManualClock, resource: Resource, ticket_id: str,
                        consent_id: str) -> str:
    request_id = uuid4().hex
    started = clock.now() - timedelta(hours=1)
    session.add(Recording(request_id=request_id, resource_id=resource.id, region="eastus", ticket_id=ticket_id,
                          consent_id=consent_id, started_at=started,
                          bucket_start=started.replace(minute=0, second=0, microsecond=0),
                          blob_name=f"b/{request_id}", wrapped_dek=b"k" * 40, state="complete"))
    await session.flush()
    return request_id


async def add_ticket_with_recording(session: AsyncSession, clock: ManualClock, resource: Resource,
                                    engineers: list[str]) -> tuple[str, str, str]:
    ref = f"INC-{uuid4().hex[:10]}"
    ticket = await tickets.create_ticket(session=session, clock=clock, actor=TICKETING,
                                         data=TicketCreate(resource=resource.name, external_ref=ref,
                                                           engineers=engineers))
    customer = Principal(f"admin@{resource.owner_tenant}", frozenset({Role.CUSTOMER_ADMIN}),
                         tenant=resource.owner_tenant)
    consent = await tickets.grant_consent(session=session, clock=clock, actor=customer, resource=resource,
                                          data=ConsentCreate(ticket_id=ticket.id), consents=ConsentCache(clock=clock))
    return ticket.id, ref, await add_recording(session, clock, resource, ticket.id, consent.id)


@pytest.fixture
async def world(db_session: AsyncSession) -> World:
    """Team A: alice (engineer), mona (manager). Team B: gina (engineer), max (manager). Both engineers are on
    a ticket about acme's resource, which has one recording; another tenant's resource has one too."""
    clock = ManualClock(datetime(2030, 5, 6, 9, 0, tzinfo=UTC))
    t = uuid4().hex[:8]
    for team in ("a", "b"):
        await staff.create_team(session=db_session, clock=clock, actor=ADMIN, data=TeamCreate(name=f"team-{team}-{t}"))
    for name, team, roles in (("alice", "a", [Role.ENGINEER]), ("mona", "a", [Role.MANAGER]),
                              ("gina", "b", [Role.ENGINEER]), ("max", "b", [Role.MANAGER])):
        await staff.create_staff(session=db_session, clock=clock, actor=ADMIN, data=StaffCreate(
            subject=f"{name}-{t}", display_name=name, team=f"team-{team}-{t}", roles=roles))
    for name, team in (("mona", "a"), ("max", "b")):
        await staff.add_manager(session=db_session, clock=clock, actor=ADMIN, team_id=f"team-{team}-{t}",
                                subject=f"{name}-{t}")
    acme = await add_resource(db_session, clock, f"acme-{t}")
    ticket_id, ref, request_id = await add_ticket_with_recording(db_session, clock, acme,
                                                                 [f"alice-{t}", f"gina-{t}"])
    other = await add_resource(db_session, clock, f"globex-{t}")
    _, _, other_request_id = await add_ticket_with_recording(db_session, clock, other, [])
    return World(db_session, clock, t, ticket_id, ref, acme, request_id, other_request_id)


# --- finding 1: assignment is checked at the moment of the read -------------------------------------------


async def test_engineer_unassigned_from_ticket_can_no_longer_read(world: World) -> None:
    grant = await world.approve(await world.ask("alice"), "mona")
    assert await world.reads("alice")

    await tickets.unassign_engineer(session=world.session, clock=world.clock, actor=TICKETING,
                                    ticket_id=world.ticket_id, engineer=world.who("alice"), grant_ender=GRANTS)

    assert not await world.reads("alice")
    assert (grant.state, grant.revoke_reason) == ("revoked", "engineer_unassigned")
    assert await world.revocations() == [("service:svc-ticketing", "engineer_unassigned")]
    assert take_ended_grants(world.session) == [grant]  # the route tells the team, as for a revocation


async def test_an_unassigned_engineer_is_refused_by_the_read_check_itself(world: World) -> None:
    """Even if the grant were not ended (a row changed behind the service's back), the read is refused."""
    await world.approve(await world.ask("alice"), "mona")
    await world.session.execute(update(TicketAssignment).where(TicketAssignment.engineer == world.who("alice"))
                                .values(unassigned_at=world.clock.now()))

    assert not await world.reads("alice")
    assert await world.last_denial() == "requester_not_assigned"


async def test_unassigning_one_engineer_leaves_the_others_grants_alone(world: World) -> None:
    await world.approve(await world.ask("gina"), "max")
    await world.ask("alice")
    await tickets.unassign_engineer(session=world.session, clock=world.clock, actor=TICKETING,
                                    ticket_id=world.ticket_id, engineer=world.who("alice"), grant_ender=GRANTS)
    assert await world.reads("gina")


async def test_a_request_of_an_engineer_no_longer_on_the_ticket_cannot_be_approved(world: World) -> None:
    pending = await world.ask("alice")
    await world.session.execute(update(TicketAssignment).where(TicketAssignment.engineer == world.who("alice"))
                                .values(unassigned_at=world.clock.now()))
    with pytest.raises(access.RequesterNotEligible):
        await world.approve(pending, "mona")


# --- finding 2: decisions and reads follow the present team -----------------------------------------------


async def test_old_teams_manager_cannot_approve_after_the_requester_moves(world: World) -> None:
    pending = await world.ask("gina")
    await staff.update_staff(session=world.session, clock=world.clock, actor=ADMIN, subject=world.who("gina"),
                             data=StaffUpdate(team=world.team("a")), grant_ender=GRANTS)

    with pytest.raises(access.NotTheirManager):
        await world.approve(pending, "max")
    assert (pending.state, pending.revoke_reason) == ("revoked", "engineer_moved")
    assert not await world.reads("gina")


async def test_old_teams_manager_cannot_decide_even_if_the_request_was_not_ended(world: World) -> None:
    """The decision itself reads the present team: the team captured at request time does not count."""
    pending = await world.ask("gina")
    await world.move_quietly("gina", "a")
    with pytest.raises(access.NotTheirManager):
        await world.approve(pending, "max")
    with pytest.raises(access.NotTheirManager):
        await access.deny(session=world.session, clock=world.clock, directory=DIRECTORY,
                          access_request_id=pending.id, actor=await world.person("max"), reason="no")
    assert (await world.approve(pending, "mona")).state == "approved"  # the present team's manager decides
    assert await world.reads("gina")


async def test_grant_approved_before_a_team_move_stops_reading(world: World) -> None:
    grant = await world.approve(await world.ask("gina"), "max")
    assert await world.reads("gina")

    await staff.update_staff(session=world.session, clock=world.clock, actor=ADMIN, subject=world.who("gina"),
                             data=StaffUpdate(team=world.team("a")), grant_ender=GRANTS)

    assert not await world.reads("gina")
    assert (grant.state, grant.revoke_reason) == ("revoked", "engineer_moved")
    assert await world.revocations() == [("service:admin-token", "engineer_moved")]


async def test_a_team_move_stops_reads_by_the_read_check_itself(world: World) -> None:
    await world.approve(await world.ask("gina"), "max")
    await world.move_quietly("gina", "a")

    assert not await world.reads("gina")
    assert await world.last_denial() == "approver_not_present_manager"


async def test_a_grant_stops_reading_when_its_approver_stops_managing_the_team(world: World) -> None:
    await world.approve(await world.ask("alice"), "mona")
    await staff.remove_manager(session=world.session, clock=world.clock, actor=ADMIN, team_id=world.team("a"),
                               subject=world.who("mona"))
    assert not await world.reads("alice")
    assert await world.last_denial() == "approver_not_present_manager"


async def test_a_deactivated_approver_no_longer_backs_a_grant(world: World) -> None:
    await world.approve(await world.ask("alice"), "mona")
    await staff.set_active(session=world.session, clock=world.clock, actor=ADMIN, subject=world.who("mona"),
                           active=False, grant_ender=GRANTS)
    assert not await world.reads("alice")


# --- the grant ends when its engineer is deactivated or loses the role -----------------------------------


async def test_deactivating_an_engineer_ends_her_grants_and_requests(world: World) -> None:
    grant = await world.approve(await world.ask("alice"), "mona")
    pending = await world.ask("alice")
    await staff.set_active(session=world.session, clock=world.clock, actor=ADMIN, subject=world.who("alice"),
                           active=False, grant_ender=GRANTS)
    assert [(r.state, r.revoke_reason) for r in (grant, pending)] == [("revoked", "engineer_deactivated")] * 2
    assert await world.revocations() == [("service:admin-token", "engineer_deactivated")] * 2
    assert not await world.reads("alice")


async def test_losing_the_engineer_role_ends_her_grants(world: World) -> None:
    grant = await world.approve(await world.ask("alice"), "mona")
    await staff.set_roles(session=world.session, clock=world.clock, actor=ADMIN, subject=world.who("alice"),
                          roles=[Role.AUDITOR], grant_ender=GRANTS)
    assert (grant.state, grant.revoke_reason) == ("revoked", "engineer_role_removed")
    assert not await world.reads("alice")


async def test_a_rename_or_another_role_leaves_grants_alone(world: World) -> None:
    grant = await world.approve(await world.ask("alice"), "mona")
    await staff.update_staff(session=world.session, clock=world.clock, actor=ADMIN, subject=world.who("alice"),
                             data=StaffUpdate(display_name="Alice L."), grant_ender=GRANTS)
    await staff.set_roles(session=world.session, clock=world.clock, actor=ADMIN, subject=world.who("alice"),
                          roles=[Role.ENGINEER, Role.AUDITOR], grant_ender=GRANTS)
    assert grant.state == "approved"
    assert await world.reads("alice")


async def test_expired_denied_and_revoked_grants_are_not_ended_twice(world: World) -> None:
    revoked = await world.approve(await world.ask("alice"), "mona")
    await access.revoke(session=world.session, clock=world.clock, directory=DIRECTORY,
                        access_request_id=revoked.id, actor=await world.person("alice"), reason="done")
    await staff.set_active(session=world.session, clock=world.clock, actor=ADMIN, subject=world.who("alice"),
                           active=False, grant_ender=GRANTS)
    assert revoked.revoke_reason == "done"
    assert [reason for _, reason in await world.revocations()] == ["done"]


# --- finding 5 and 8a: request IDs are checked, and stay within their tenant ------------------------------


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\x00"])
async def test_a_request_id_with_a_trailing_newline_is_refused(world: World, suffix: str) -> None:
    with pytest.raises(AppError) as refused:
        await world.ask("alice", [world.request_id + suffix])
    assert refused.value.code == "invalid_input"
    assert not await world.reads("alice", world.request_id + suffix)


async def test_unknown_and_other_tenants_request_ids_get_one_answer(world: World) -> None:
    answers = []
    for request_id in (uuid4().hex, world.other_request_id):
        with pytest.raises(AppError) as refused:
            await world.ask("alice", [world.request_id, request_id])
        answers.append((refused.value.status, refused.value.code, str(refused.value)))
    assert answers[0] == answers[1]
    assert answers[0][:2] == (422, "unknown_request_ids")
    count = await world.session.scalar(select(AccessRequestItem.request_id)
                                       .where(AccessRequestItem.request_id == world.other_request_id))
    assert count is None


async def test_customer_access_log_never_shows_another_tenants_request_id(world: World) -> None:
    """An ID of another tenant written under this customer's ticket (a row from before this check) is not shown."""
    grant = await world.ask("alice")
    world.session.add(AccessRequestItem(access_request_id=grant.id, request_id=world.other_request_id))
    await world.session.flush()

    log = await access_log(session=world.session, resource=world.resource, now=world.clock.now(),
                           retention=timedelta(days=30))

    (entry,) = log["access_requests"]
    assert entry["request_ids"] == [world.request_id]
    assert world.other_request_id not in str(log)
