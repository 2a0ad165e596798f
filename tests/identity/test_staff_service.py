"""Staff and teams in the service layer: every change audited, managers_of, separation of duties."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.grant_ender import AccessGrantEnder
from app.access.notify import Notifier
from app.audit.actions import Actor
from app.clock import ManualClock
from app.identity.principal import MissingRole, Principal, Role
from app.identity.staff import service
from app.identity.staff.schemas import StaffCreate, StaffUpdate, TeamCreate
from tests.fixtures.saw import audit_records

ADMIN = Actor.service("admin-token")
# Access's grant ender, as `build_context` makes it; no team has a webhook here, so nothing is sent.
GRANTS = AccessGrantEnder(notifier=Notifier([], CollectorRegistry()))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2030, 5, 6, 9, 0, tzinfo=UTC))


def tag() -> str:
    return uuid4().hex[:8]


async def add_person(session: AsyncSession, clock: ManualClock, subject: str, *roles: Role,
                     team: str | None = None) -> None:
    await service.create_staff(session=session, clock=clock, actor=ADMIN,
                               data=StaffCreate(subject=subject, display_name=subject, team=team, roles=list(roles)))


async def test_adding_a_person_audits_the_record_and_each_role(db_session: AsyncSession, clock: ManualClock) -> None:
    t = tag()
    team = await service.create_team(session=db_session, clock=clock, actor=ADMIN, data=TeamCreate(name=f"voice-{t}"))
    staff = await service.create_staff(session=db_session, clock=clock, actor=ADMIN, data=StaffCreate(
        subject=f"alice-{t}", display_name="Alice", team=f"voice-{t}", roles=[Role.MANAGER, Role.ENGINEER]))

    assert staff.roles == {Role.ENGINEER, Role.MANAGER}
    assert (staff.team_id, staff.active, staff.created_at) == (team.id, True, clock.now())
    mine = [r for r in await audit_records(db_session)
            if r.detail.get("staff") == f"alice-{t}" or r.detail.get("setting") == f"team:{team.id}"]
    assert [(r.action, r.detail) for r in mine] == [
        ("admin.changed", {"setting": f"team:{team.id}", "change": "team_created"}),
        ("staff.changed", {"staff": f"alice-{t}", "change": "created", "team": team.id}),
        ("staff.changed", {"staff": f"alice-{t}", "change": "role_added", "role": "engineer"}),
        ("staff.changed", {"staff": f"alice-{t}", "change": "role_added", "role": "manager"}),
    ]
    assert {r.actor for r in mine} == {"service:admin-token"}


async def test_set_roles_audits_each_difference_and_nothing_when_unchanged(
    db_session: AsyncSession, clock: ManualClock
) -> None:
    subject = f"bob-{tag()}"
    await add_person(db_session, clock, subject, Role.ENGINEER, Role.AUDITOR)

    staff = await service.set_roles(session=db_session, clock=clock, actor=ADMIN, subject=subject,
                                    roles=[Role.ENGINEER, Role.MANAGER], grant_ender=GRANTS)
    before = len(await audit_records(db_session))
    await service.set_roles(session=db_session, clock=clock, actor=ADMIN, subject=subject,
                            roles=[Role.MANAGER, Role.ENGINEER], grant_ender=GRANTS)

    assert staff.roles == {Role.ENGINEER, Role.MANAGER}
    records = await audit_records(db_session)
    assert len(records) == before
    changes = [(r.detail["change"], r.detail.get("role")) for r in records if r.detail.get("staff") == subject]
    assert changes[-2:] == [("role_added", "manager"), ("role_removed", "auditor")]


async def test_staff_records_hold_only_staff_roles(db_session: AsyncSession, clock: ManualClock) -> None:
    subject = f"carl-{tag()}"
    await add_person(db_session, clock, subject, Role.ENGINEER)
    for role in (Role.CUSTOMER_ADMIN, Role.TICKETING, "root"):
        with pytest.raises(service.NotAStaffRole):
            await service.set_roles(session=db_session, clock=clock, actor=ADMIN,
                                    subject=subject, roles=[role], grant_ender=GRANTS)


async def test_managers_of_counts_only_active_people_who_hold_the_manager_role(
    db_session: AsyncSession, clock: ManualClock
) -> None:
    t = tag()
    team = await service.create_team(session=db_session, clock=clock, actor=ADMIN, data=TeamCreate(name=f"t-{t}"))
    for name in ("mia", "max", "mo"):
        await add_person(db_session, clock, f"{name}-{t}", Role.MANAGER)
        await service.add_manager(session=db_session, clock=clock, actor=ADMIN, team_id=team.id,
                                  subject=f"{name}-{t}")
    assert await service.managers_of(session=db_session, team_id=team.id) == {f"mia-{t}", f"max-{t}", f"mo-{t}"}

    await service.set_active(session=db_session, clock=clock, actor=ADMIN,
                             subject=f"max-{t}", active=False, grant_ender=GRANTS)
    await service.set_roles(session=db_session, clock=clock, actor=ADMIN,
                            subject=f"mo-{t}", roles=[Role.ENGINEER], grant_ender=GRANTS)

    assert await service.managers_of(session=db_session, team_id=team.id) == {f"mia-{t}"}
    assert await service.managers_of(session=db_session, team_id=str(uuid4())) == set()
    managed = {name: await service.teams_managed_by(session=db_session, subject=f"{name}-{t}")
               for name in ("mia", "max", "mo")}
    assert managed == {"mia": [team.id], "max": [], "mo": []}


async def test_only_an_active_manager_can_be_made_a_team_manager(db_session: AsyncSession, clock: ManualClock) -> None:
    t = tag()
    team = await service.create_team(session=db_session, clock=clock, actor=ADMIN, data=TeamCreate(name=f"t-{t}"))
    await add_person(db_session, clock, f"eng-{t}", Role.ENGINEER)
    await add_person(db_session, clock, f"gone-{t}", Role.MANAGER)
    await service.set_active(session=db_session, clock=clock, actor=ADMIN,
                             subject=f"gone-{t}", active=False, grant_ender=GRANTS)

    for subject in (f"eng-{t}", f"gone-{t}", f"nobody-{t}"):
        with pytest.raises(service.NotAManager):
            await service.add_manager(session=db_session, clock=clock, actor=ADMIN, team_id=team.id, subject=subject)


async def test_manager_added_and_removed_are_audited_and_adding_twice_is_a_no_op(
    db_session: AsyncSession, clock: ManualClock
) -> None:
    t = tag()
    team = await service.create_team(session=db_session, clock=clock, actor=ADMIN, data=TeamCreate(name=f"t-{t}"))
    await add_person(db_session, clock, f"mgr-{t}", Role.MANAGER)
    for _ in range(2):
        await service.add_manager(session=db_session, clock=clock, actor=ADMIN, team_id=f"t-{t}", subject=f"mgr-{t}")
    updated = await service.remove_manager(session=db_session, clock=clock, actor=ADMIN, team_id=team.id,
                                           subject=f"mgr-{t}")

    assert updated.managers == []
    changes = [r.detail for r in await audit_records(db_session) if r.detail.get("staff") == f"mgr-{t}"]
    assert changes[-2:] == [{"staff": f"mgr-{t}", "change": "manager_added", "team": team.id},
                            {"staff": f"mgr-{t}", "change": "manager_removed", "team": team.id}]
    with pytest.raises(service.NotTeamManager):
        await service.remove_manager(session=db_session, clock=clock, actor=ADMIN, team_id=team.id,
                                     subject=f"mgr-{t}")


async def test_team_change_and_rename_are_audited(db_session: AsyncSession, clock: ManualClock) -> None:
    t = tag()
    team = await service.create_team(session=db_session, clock=clock, actor=ADMIN, data=TeamCreate(name=f"t-{t}"))
    await add_person(db_session, clock, f"dan-{t}", Role.ENGINEER)
    await service.update_staff(session=db_session, clock=clock, actor=ADMIN, subject=f"dan-{t}",
                               data=StaffUpdate(team=team.name, display_name="Dan D."), grant_ender=GRANTS)
    cleared = await service.update_staff(session=db_session, clock=clock, actor=ADMIN, subject=f"dan-{t}",
                                         data=StaffUpdate(team=None), grant_ender=GRANTS)

    assert cleared.team_id is None
    assert cleared.display_name == "Dan D."
    changes = [(r.detail["change"], r.detail.get("team")) for r in await audit_records(db_session)
               if r.detail.get("staff") == f"dan-{t}"]
    assert changes[-3:] == [("renamed", None), ("team_changed", team.id), ("team_cleared", None)]


async def test_duplicates_are_409(db_session: AsyncSession, clock: ManualClock) -> None:
    t = tag()
    await service.create_team(session=db_session, clock=clock, actor=ADMIN, data=TeamCreate(name=f"t-{t}"))
    await add_person(db_session, clock, f"eve-{t}")
    with pytest.raises(service.TeamExists):
        await service.create_team(session=db_session, clock=clock, actor=ADMIN, data=TeamCreate(name=f"t-{t}"))
    with pytest.raises(service.StaffExists):
        await add_person(db_session, clock, f"eve-{t}")
    with pytest.raises(service.TeamNotFound):
        await add_person(db_session, clock, f"fay-{t}", team="no-such-team")


async def test_an_admin_never_changes_their_own_record(db_session: AsyncSession, clock: ManualClock) -> None:
    t = tag()
    me = f"root-{t}"
    await add_person(db_session, clock, me, Role.ADMIN, Role.MANAGER)
    team = await service.create_team(session=db_session, clock=clock, actor=ADMIN, data=TeamCreate(name=f"t-{t}"))
    myself = Actor.staff(me)

    attempts = [
        service.set_roles(session=db_session, clock=clock, actor=myself,
                          subject=me, roles=[Role.ENGINEER], grant_ender=GRANTS),
        service.set_active(session=db_session, clock=clock, actor=myself, subject=me, active=False, grant_ender=GRANTS),
        service.update_staff(session=db_session, clock=clock, actor=myself,
                             subject=me, data=StaffUpdate(team=None), grant_ender=GRANTS),
        service.add_manager(session=db_session, clock=clock, actor=myself, team_id=team.id, subject=me),
    ]
    for attempt in attempts:
        with pytest.raises(service.SelfAdministration):
            await attempt
    assert (await service.require_staff_record(session=db_session, subject=me)).roles == {Role.ADMIN, Role.MANAGER}


async def test_authorize_staff_needs_the_role_in_the_token_and_in_the_active_record(
    db_session: AsyncSession, clock: ManualClock
) -> None:
    t = tag()
    await add_person(db_session, clock, f"ann-{t}", Role.ENGINEER, Role.AUDITOR)

    def token(*roles: Role) -> Principal:
        return Principal(subject=f"ann-{t}", roles=frozenset(roles))

    ok = await service.authorize_staff(session=db_session, principal=token(Role.ENGINEER, Role.MANAGER),
                                       roles=[Role.ENGINEER])
    assert ok.roles == {Role.ENGINEER}  # manager is in the token only, auditor in the record only
    assert ok.subject == f"ann-{t}"
    with pytest.raises(MissingRole):  # the token lacks it
        await service.authorize_staff(session=db_session, principal=token(Role.MANAGER), roles=[Role.ENGINEER])
    with pytest.raises(MissingRole):  # the record lacks it
        await service.authorize_staff(session=db_session, principal=token(Role.MANAGER), roles=[Role.MANAGER])
    with pytest.raises(service.UnknownStaff):
        await service.authorize_staff(session=db_session, principal=Principal(f"x-{t}", frozenset({Role.ENGINEER})),
                                      roles=[Role.ENGINEER])
    await service.set_active(session=db_session, clock=clock, actor=ADMIN,
                             subject=f"ann-{t}", active=False, grant_ender=GRANTS)
    with pytest.raises(service.StaffInactive):
        await service.authorize_staff(session=db_session, principal=token(Role.ENGINEER), roles=[Role.ENGINEER])
