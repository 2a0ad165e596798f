"""The daily report job signs the finished days since the audit trail began, never the days before a fresh
install existed (issue 19: it used to sign `report_catch_up_days` empty days at a first start)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from app.retention.jobs import make_daily_reports
from app.retention.models import RetentionReport
from tests.retention.world import REGIONS, World


async def test_a_fresh_install_signs_the_days_since_its_trail_began_and_none_before(world: World) -> None:
    began = world.clock.now()
    await world.record(REGIONS[0])  # the trail's first entries: the install's first day
    context = world.scheduler().context
    assert await make_daily_reports(context) == 0  # no day since then has ended
    world.clock.advance(timedelta(days=2, hours=1))
    assert await make_daily_reports(context) == 2
    async with world.factory() as session:
        days = sorted((await session.execute(select(RetentionReport.day))).scalars())
    assert days == [began.date(), began.date() + timedelta(days=1)]
