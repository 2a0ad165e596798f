"""C7 under time travel: 60 simulated days of sessions in 2 regions, the purge job run on every tick.

The clock is a ManualClock moved tick by tick; on each tick the purge job and the pending-blob job run as
the scheduler runs them. Sessions start at random instants (quiet hours, busy hours, some exactly on the
hour), some are erased by their customer, and one region's store refuses deletes for a while, twice.

Ticks: the 60-day run ticks twice per simulated hour with `purge_lead_s=0`: on the hour, and once at a
random instant within the hour (86,400 one-minute ticks take ~7 minutes on SQLite alone, each run costing
a few milliseconds even when nothing is due). That loses nothing: every bucket deadline is on an hour
boundary, so with no lead every instant a purge is due is an on-the-hour tick, and the random tick runs the
purge where nothing is due (a purge there would be early, which the age bounds catch), each hour at a
different minute and second. The default lead (60 s, due at hh:59) is run at one-minute ticks across the
deadlines of three hour buckets in `test_with_the_default_lead_...`.
"""

from __future__ import annotations

import heapq
import json
import random
from collections import Counter
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.audit.actions import Actor, AuditAction
from app.audit.reports.entries import Period
from app.audit.service import read_chain_head
from app.capture.models import Recording
from app.capture.shred import delete_pending_blobs, shred_recording
from app.capture.states import ShredReason
from app.retention.models import RetentionBucket
from app.retention.policy import recording_expired
from app.retention.report import build_retention_report
from app.storage.errors import StoreUnavailable
from app.storage.layout import RecordingKey
from app.storage.protocol import BlobStore
from app.storage.router import RegionRouter
from app.vault.keyring import KeyBucket
from tests.retention.world import LIFETIME, REGIONS, Copy, World

SIM_DAYS = 60
HOUR = timedelta(hours=1)
LEAD = timedelta(0)


class SwitchableDeletes:
    """A store whose deletes fail while `failing` is set (a region's storage account having a bad hour)."""

    def __init__(self, inner: BlobStore) -> None:
        self._inner = inner
        self.failing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def delete(self, key: RecordingKey) -> bool:
        if self.failing:
            raise StoreUnavailable("simulated outage")
        return await self._inner.delete(key)


def session_starts(start: datetime, rng: random.Random) -> list[tuple[datetime, str]]:
    """Random session starts over the first SIM_DAYS - 1 days: ~one an hour, a busy hour now and then,
    and some exactly on the hour (the recordings a late purge would keep past 30 days)."""
    starts: list[tuple[datetime, str]] = []
    for hour in range((SIM_DAYS - 1) * 24):
        base = start + timedelta(hours=hour)
        count = rng.choice((0, 0, 1, 1, 2)) + (12 if rng.random() < 0.02 else 0)
        for _ in range(count):
            offset = timedelta(seconds=0 if rng.random() < 0.05 else rng.uniform(0, 3599.999))
            starts.append((base + offset, rng.choice(REGIONS)))
    return sorted(starts)


@pytest.mark.slow
async def test_sixty_days_every_recording_gone_at_30_days_never_before_29d23h_and_the_report_agrees(
    world: World,
) -> None:
    rng = random.Random(20310303)
    epoch = world.clock.now()
    flaky = {region: SwitchableDeletes(world.stores.store(region)) for region in REGIONS}
    stores = RegionRouter(flaky)  # type: ignore[arg-type]
    purger = world.purger(purge_lead_s=int(LEAD.total_seconds()))
    purger.stores = stores
    outages = [(epoch + timedelta(days=41, hours=5), epoch + timedelta(days=41, hours=7)),
               (epoch + timedelta(days=SIM_DAYS) - timedelta(hours=3), epoch + timedelta(days=SIM_DAYS + 1))]

    pending = session_starts(epoch, rng)
    deadlines: list[tuple[datetime, str]] = []  # (start + 30 days, request_id)
    copies: dict[str, Copy] = {}
    erasures: list[tuple[datetime, str]] = []
    ticks = 0
    while world.clock.now() < epoch + timedelta(days=SIM_DAYS):
        now = world.clock.now()
        flaky["westeurope"].failing = any(a <= now < b for a, b in outages)
        while pending and pending[0][0] <= now:
            started, region = pending.pop(0)
            recording = await world.record(region, started)
            copies[recording.request_id] = await world.copy_of(recording)
            heapq.heappush(deadlines, (started + LIFETIME, recording.request_id))
            if rng.random() < 0.03:
                erasures.append((now + timedelta(days=rng.uniform(0.5, 20)), recording.request_id))
                erasures.sort()
        while erasures and erasures[0][0] <= now:
            await erase(world, erasures.pop(0)[1])
        await purger.run()
        if ticks % 2 == 0:  # the pending-blob job: hourly is plenty for hour-long outages
            async with world.factory() as session:
                await delete_pending_blobs(session=session, clock=world.clock, stores=stores)
                await session.commit()
        due_now = []
        while deadlines and deadlines[0][0] <= now:
            due_now.append(heapq.heappop(deadlines)[1])
        if due_now:
            await assert_gone(world, due_now, copies, now)
        world.clock.advance(next_tick(now, epoch, rng) - now)
        ticks += 1
    assert ticks == SIM_DAYS * 24 * 2

    rows = await world.rows()
    assert len(rows) == len(copies) > 800
    ages = {r.request_id: r.shredded_at - r.started_at for r in rows if r.shredded_at and r.shred_reason == "retention"}
    assert len(ages) > 500
    assert max(ages.values()) <= LIFETIME  # no recording lived past 30 days
    assert min(ages.values()) >= LIFETIME - timedelta(hours=1) - LEAD  # none purged before 29 d 23 h
    assert min(ages.values()) < LIFETIME - timedelta(minutes=55)  # the bound is met, not just approached
    assert max(ages.values()) == LIFETIME  # sessions that began on the hour: exactly 30 days, not a second more
    await assert_keks_destroyed_on_time(world, rows, now)
    await assert_report_matches_database_and_listings(world, epoch, rows)


def next_tick(now: datetime, epoch: datetime, rng: random.Random) -> datetime:
    """On the hour, the next tick is a random instant within that hour; from there, the next hour."""
    hour_start = epoch + HOUR * ((now - epoch) // HOUR)
    if now == hour_start:
        return now + timedelta(seconds=rng.uniform(1, 3599))
    return hour_start + HOUR


async def erase(world: World, request_id: str) -> None:
    async with world.factory() as session:
        row = await session.get(Recording, request_id)
        assert row is not None
        if row.shredded_at is None:
            await shred_recording(session=session, clock=world.clock, keyrings=world.keyrings, recording=row,
                                  reason=ShredReason.ERASURE, actor=Actor.customer_admin("customer"))
        await session.commit()


async def assert_gone(world: World, request_ids: list[str], copies: dict[str, Copy], now: datetime) -> None:
    """Past start + 30 days: the row holds no key, reads refuse it, and no copy taken earlier opens."""
    async with world.factory() as session:
        rows = (await session.execute(select(Recording).where(Recording.request_id.in_(request_ids)))).scalars()
        for row in rows:
            assert row.wrapped_dek is None, row.request_id
            assert row.shredded_at is not None
            assert row.shredded_at <= row.started_at + LIFETIME
            assert recording_expired(row, now, LIFETIME)
            assert not await world.opens(copies[row.request_id])
            if row.blob_deleted_at is not None:
                assert not await world.blob_exists(row)


async def assert_keks_destroyed_on_time(world: World, rows: list[Recording], now: datetime) -> None:
    """`now`: the last tick the purge ran at."""
    async with world.factory() as session:
        destroyed = {(b.region, b.bucket_start): b.kek_destroyed_at
                     for b in (await session.execute(select(RetentionBucket))).scalars()}
    buckets = {(r.region, r.bucket_start) for r in rows}
    due = {b for b in buckets if b[1] + LIFETIME <= now}
    assert len(due) > 500
    for region, hour in due:
        at = destroyed.get((region, hour))
        assert at is not None, (region, hour)
        assert hour + LIFETIME - LEAD <= at <= hour + LIFETIME
    live = await world.keyrings.live_buckets(started_before=now)
    assert not [b for b in live if b.expired(now, LIFETIME)]
    assert {(b.region, b.hour) for b in live} == {b for b in buckets if b not in due}


async def assert_report_matches_database_and_listings(world: World, epoch: datetime, rows: list[Recording]) -> None:
    """The signed report's figures, recounted from the rows, the bucket table and the stores' listings."""
    await world.chain()
    period = Period(epoch.date(), (epoch + timedelta(days=SIM_DAYS - 1)).date())
    async with world.factory() as session:
        head = await read_chain_head(session)
        report = await build_retention_report(session=session, period=period, head=head, retention_days=30,
                                              as_of=world.clock.now())
        kek_days = Counter((b.region, day(b.kek_destroyed_at)) for b in (await session.execute(
            select(RetentionBucket).where(RetentionBucket.kek_destroyed_at.is_not(None)))).scalars())
    listed = await world.listed_names()
    started = Counter((r.region, day(r.started_at)) for r in rows)
    purged = Counter((r.region, day(r.shredded_at)) for r in rows if r.shredded_at)
    erased = Counter((r.region, day(r.shredded_at)) for r in rows if r.shred_reason == "erasure")
    still_stored = Counter((r.region, day(r.shredded_at)) for r in rows
                           if r.shredded_at and r.request_id in listed[r.region])
    assert sum(still_stored.values()) > 0  # the last outage left blobs pending
    for r in rows:  # every stored blob is a live recording or a pending one, nothing else
        assert (r.request_id in listed[r.region]) == (r.shredded_at is None or r.blob_deleted_at is None)
    totals = report["totals"]
    assert isinstance(totals, dict)
    assert totals["overdue_recordings"] == totals["overdue_kek_buckets"] == totals["purged_over_age"] == 0
    assert totals["within_limit"] is True
    assert totals["max_age_at_purge_s"] == max(int((r.shredded_at - r.started_at).total_seconds())
                                               for r in rows if r.shredded_at)
    assert totals["blobs_pending"] == sum(still_stored.values())
    assert isinstance(report["days"], list)
    assert len(report["days"]) == len(REGIONS) * SIM_DAYS
    for item in report["days"]:
        assert isinstance(item, dict)
        key = (str(item["region"]), str(item["day"]))
        assert item["recordings_started"] == started[key], key
        assert item["recordings_purged"] == purged[key], key
        assert item["purged_for_erasure"] == erased[key], key
        assert item["kek_buckets_destroyed"] == kek_days[key], key
        assert item["blobs_pending"] == still_stored[key], key
        assert item["overdue_recordings"] == item["overdue_kek_buckets"] == 0
    assert sum(json.loads(d)["key_kind"] == "kek" for _, d in await world.entries(AuditAction.KEY_DESTROYED)) \
        == sum(kek_days.values())


async def test_with_the_default_lead_buckets_go_at_hh59_minute_by_minute(world: World) -> None:
    """Default settings, one-minute ticks across three buckets' deadlines: gone by 30 days, none before
    29 days 23 hours less the 60-second lead, each KEK destroyed on the tick it became due."""
    purger = world.purger()  # the defaults: lead 60 s
    lead = timedelta(seconds=purger.settings.purge_lead_s)
    epoch = world.clock.now()
    rng = random.Random(3)
    made = []
    for hour in range(3):
        for offset in (0.0, rng.uniform(1, 3598), 3599.999):
            made.append(await world.record(REGIONS[hour % 2], epoch + timedelta(hours=hour, seconds=offset)))
    copies = {r.request_id: await world.copy_of(r) for r in made}
    world.clock.advance(LIFETIME - timedelta(hours=1))
    while world.clock.now() < epoch + LIFETIME + timedelta(hours=4):
        await purger.run()
        now = world.clock.now()
        for recording in made:
            row = await world.row(recording.request_id)
            gone = row.shredded_at is not None
            assert gone == (now >= row.bucket_start + LIFETIME - lead), (now, row.started_at)
            if now >= row.started_at + LIFETIME:
                assert not await world.opens(copies[row.request_id])
        world.clock.advance(timedelta(minutes=1))
    rows = await world.rows()
    ages = [r.shredded_at - r.started_at for r in rows if r.shredded_at]
    assert len(ages) == 9
    assert max(ages) == LIFETIME - lead
    assert min(ages) > LIFETIME - timedelta(hours=1) - lead
    async with world.factory() as session:
        for bucket in (await session.execute(select(RetentionBucket))).scalars():
            assert bucket.kek_destroyed_at == bucket.bucket_start + LIFETIME - lead


def day(moment: datetime | None) -> str:
    assert moment is not None
    return date.isoformat(moment.date())


def bucket_of(recording: Recording) -> KeyBucket:
    return KeyBucket.of(recording.region, recording.started_at)
