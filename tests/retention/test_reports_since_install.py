"""Daily retention reports are for days the service existed (issue 19): a fresh install's first start used to
sign reports for the seven days before it. The service began with its audit trail's first entry."""

from __future__ import annotations

from datetime import date, timedelta

from app.audit.actions import Actor, AuditAction, Subjects
from app.audit.service import append_entry
from app.retention.report import days_to_report
from tests.retention.world import World


def week_before(today: date) -> tuple[date, date]:
    """What the daily job asks for with the default catch-up of seven days: the seven days before today."""
    return today - timedelta(days=7), today - timedelta(days=1)


async def first_action(world: World) -> None:
    """What a first start writes: the demo resource (any entry does), queued or chained as the database does."""
    resource_id = next(iter(world.resources.values()))[0]
    async with world.factory() as session:
        await append_entry(session=session, clock=world.clock, actor=Actor.system("embedded-default"),
                           action=AuditAction.RESOURCE_CREATED, subjects=Subjects(resource=resource_id),
                           detail={"name": "demo", "region": "eastus", "tenant": "demo-tenant"})
        await session.commit()


async def test_a_fresh_install_has_no_day_to_report(world: World) -> None:
    first, last = week_before(world.clock.now().date())
    async with world.factory() as session:
        assert await days_to_report(session, first=first, last=last) == []


async def test_days_are_reported_from_the_first_entrys_day_on(world: World) -> None:
    installed = world.clock.now().date()
    await first_action(world)
    world.clock.advance(timedelta(days=3, hours=5))
    first, last = week_before(world.clock.now().date())
    async with world.factory() as session:
        days = await days_to_report(session, first=first, last=last)
    assert days == [installed, installed + timedelta(days=1), installed + timedelta(days=2)]

    await world.chain()  # chained or queued, the first entry counts the same
    async with world.factory() as session:
        assert await days_to_report(session, first=first, last=last) == days


async def test_a_service_older_than_the_catch_up_window_reports_the_whole_window(world: World) -> None:
    await first_action(world)
    world.clock.advance(timedelta(days=40))
    first, last = week_before(world.clock.now().date())
    async with world.factory() as session:
        days = await days_to_report(session, first=first, last=last)
    assert days == [first + timedelta(days=n) for n in range(7)]
