"""Extending a grant follows the present too (issue 15, "every decision (approve, deny, extend)"): an engineer
taken off the ticket, moved to another team or deactivated cannot ask for more time on a grant, whether the
change went through the services (which end the grant) or behind their back (the grant row still says
approved). The world, the people and the quiet changes are those of test_access_follows_present.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from app.access import service as access
from app.access.models import AccessRequest
from app.errors import AppError
from app.identity.staff import service as staff
from app.identity.staff.models import Staff
from app.identity.staff.schemas import StaffUpdate
from app.tickets import service as tickets
from app.tickets.models import TicketAssignment
from tests.access.test_access_follows_present import ADMIN, DIRECTORY, GRANTS, TICKETING, World, world

__all__ = ["world"]  # the fixture, reused


async def extend(world: World, grant: AccessRequest, name: str) -> AccessRequest:
    """Ask for more time as `name` is now in the staff directory (the route builds the person the same way)."""
    person = await DIRECTORY.person(world.session, world.who(name))
    assert person is not None
    return await access.extend(session=world.session, clock=world.clock, access_request_id=grant.id,
                               actor=person, duration=timedelta(hours=1),
                               justification=f"Still checking the clipped audio of {world.ticket_ref}")


async def refused_extension(world: World, grant: AccessRequest, name: str) -> str:
    """The refusal's code; fails if the extension was accepted (and no new request may exist then)."""
    with pytest.raises(AppError) as refused:
        await extend(world, grant, name)
    return refused.value.code


async def test_an_active_grant_can_be_extended(world: World) -> None:
    """The control case: the same extension is accepted while nothing has changed."""
    grant = await world.approve(await world.ask("alice"), "mona")
    extension = await extend(world, grant, "alice")
    assert (extension.state, extension.extends_id) == ("pending", grant.id)


async def test_extending_is_refused_after_the_engineer_is_unassigned(world: World) -> None:
    grant = await world.approve(await world.ask("alice"), "mona")
    await tickets.unassign_engineer(session=world.session, clock=world.clock, actor=TICKETING,
                                    ticket_id=world.ticket_id, engineer=world.who("alice"), grant_ender=GRANTS)
    assert await refused_extension(world, grant, "alice") == "grant_not_active"


async def test_extending_is_refused_after_the_engineer_is_quietly_unassigned(world: World) -> None:
    grant = await world.approve(await world.ask("alice"), "mona")
    await world.session.execute(update(TicketAssignment).where(TicketAssignment.engineer == world.who("alice"))
                                .values(unassigned_at=world.clock.now()))
    assert grant.state == "approved"  # nobody ended it
    assert await refused_extension(world, grant, "alice") == "not_assigned_to_ticket"


async def test_extending_is_refused_after_a_team_move(world: World) -> None:
    grant = await world.approve(await world.ask("gina"), "max")
    await staff.update_staff(session=world.session, clock=world.clock, actor=ADMIN, subject=world.who("gina"),
                             data=StaffUpdate(team=world.team("a")), grant_ender=GRANTS)
    assert await refused_extension(world, grant, "gina") == "grant_not_active"


async def test_extending_is_refused_after_a_quiet_team_move(world: World) -> None:
    """The grant was approved by team B's manager; gina is now in team A, so it no longer reads (the read check
    says approver_not_present_manager). Extending it must be refused as well: the grant it extends is no
    longer backed by a present manager of her present team."""
    grant = await world.approve(await world.ask("gina"), "max")
    await world.move_quietly("gina", "a")
    assert not await world.reads("gina")
    assert grant.state == "approved"  # nobody ended it
    assert await refused_extension(world, grant, "gina") == "grant_not_active"


async def test_extending_is_refused_after_deactivation(world: World) -> None:
    grant = await world.approve(await world.ask("alice"), "mona")
    await staff.set_active(session=world.session, clock=world.clock, actor=ADMIN, subject=world.who("alice"),
                           active=False, grant_ender=GRANTS)
    assert await refused_extension(world, grant, "alice") == "grant_not_active"


async def test_extending_is_refused_after_a_quiet_deactivation(world: World) -> None:
    grant = await world.approve(await world.ask("alice"), "mona")
    await world.session.execute(update(Staff).where(Staff.subject == world.who("alice")).values(active=False))
    assert grant.state == "approved"  # nobody ended it
    assert await refused_extension(world, grant, "alice") == "not_staff"
