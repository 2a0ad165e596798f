"""The purge per KEK bucket (C7): keys, then blobs, then the bucket's KEK; idempotent and resumable."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.access.policy import RecordingView
from app.audit.actions import Actor, AuditAction, kek_bucket
from app.capture.models import Recording
from app.capture.shred import shred_recording
from app.capture.states import ShredReason
from app.retention.policy import recording_expired
from app.retention.purge import Purger
from app.storage.errors import StoreUnavailable
from app.storage.layout import RecordingKey
from app.storage.protocol import BlobStore
from app.storage.router import RegionRouter
from app.vault.keyring import KeyBucket
from tests.retention.world import LIFETIME, REGIONS, World


class SimulatedCrash(BaseException):
    """The process dies here: nothing after this line runs, nothing is cleaned up by the code under test."""


class FailingDeletes:
    """A region's store whose deletes fail (`StoreUnavailable`) or kill the process (`SimulatedCrash`)."""

    def __init__(self, inner: BlobStore, error: BaseException) -> None:
        self._inner = inner
        self._error = error
        self.attempts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def delete(self, key: RecordingKey) -> bool:
        self.attempts += 1
        raise self._error


def with_failing_deletes(world: World, error: BaseException) -> RegionRouter:
    return RegionRouter({r: FailingDeletes(world.stores.store(r), error) for r in REGIONS})  # type: ignore[misc]


async def audit_count(world: World) -> int:
    return len(await world.entries(AuditAction.RECORDING_PURGED)) + len(await world.entries(AuditAction.KEY_DESTROYED))


def purger_on(world: World, stores: RegionRouter, **settings: Any) -> Purger:
    purger = world.purger(**settings)
    purger.stores = stores
    return purger


async def test_a_bucket_is_purged_at_its_30_days_and_not_a_minute_before(world: World) -> None:
    start = world.clock.now() + timedelta(minutes=10)
    world.clock.advance(timedelta(minutes=10))
    recordings = [await world.record("eastus") for _ in range(3)]
    world.clock.advance(timedelta(minutes=60))
    other_hour = await world.record("eastus")
    copies = [await world.copy_of(r) for r in recordings]
    bucket = KeyBucket.of("eastus", start)
    purger = world.purger(purge_lead_s=60)

    world.clock.advance(bucket.hour + LIFETIME - timedelta(minutes=2) - world.clock.now())
    assert (await purger.run()).recordings_purged == 0
    assert all([await world.opens(c) for c in copies])

    world.clock.advance(timedelta(minutes=1))  # the tick at deadline - lead
    result = await purger.run()
    assert (result.recordings_purged, result.buckets_finished) == (3, 1)
    for recording, copy in zip(recordings, copies, strict=True):
        row = await world.row(recording.request_id)
        assert (row.state, row.shred_reason, row.wrapped_dek) == ("purged", "retention", None)
        assert row.shredded_at == row.blob_deleted_at == world.clock.now()
        assert json.loads(row.receipt or "{}")["kek_bucket"] == kek_bucket(start)
        assert not await world.blob_exists(row)
        assert not await world.opens(copy)  # the backup's wrapped key and the blob snapshot: unreadable
    assert bucket not in await world.keyrings.live_buckets(started_before=world.clock.now())
    assert (await world.row(other_hour.request_id)).wrapped_dek is not None  # the next hour's bucket waits
    purged = await world.entries(AuditAction.RECORDING_PURGED)
    assert sorted(rid for rid, _ in purged) == sorted(r.request_id for r in recordings)
    keys = [json.loads(d) for _, d in await world.entries(AuditAction.KEY_DESTROYED)]
    assert sorted(k["key_kind"] for k in keys) == ["dek", "dek", "dek", "kek"]
    assert [k["bucket"] for k in keys if k["key_kind"] == "kek"] == [kek_bucket(start)]


async def test_running_again_changes_nothing_and_audits_nothing(world: World) -> None:
    for _ in range(2):
        await world.record("westeurope")
    world.clock.advance(LIFETIME + timedelta(hours=1))
    purger = world.purger()
    first = await purger.run()
    entries = await audit_count(world)
    again = await world.purger().run()  # a fresh process too: it sweeps the keyring again
    assert (first.recordings_purged, first.buckets_finished) == (2, 1)
    assert (again.recordings_purged, again.buckets_finished, again.blobs_deleted) == (0, 0, 0)
    assert await audit_count(world) == entries == 2 + 2 + 1


async def test_a_crash_between_dek_delete_and_blob_delete_is_finished_by_the_next_run(world: World) -> None:
    recordings = [await world.record("eastus") for _ in range(4)]
    copies = [await world.copy_of(r) for r in recordings]
    world.clock.advance(LIFETIME)
    with pytest.raises(SimulatedCrash):
        await purger_on(world, with_failing_deletes(world, SimulatedCrash())).run()
    for recording, copy in zip(recordings, copies, strict=True):
        row = await world.row(recording.request_id)
        assert (row.state, row.wrapped_dek, row.blob_deleted_at) == ("purged", None, None)
        assert await world.blob_exists(row)  # the blob is still there...
        assert not await world.opens(copy)  # ...and a copy of it taken before does not open
    assert len(await world.entries(AuditAction.RECORDING_PURGED)) == 4

    world.clock.advance(timedelta(minutes=1))
    scheduler = world.scheduler()
    outcomes = {o.job: o for o in await scheduler.run_all()}  # the next run of every job
    assert outcomes["retention.purge"].outcome == outcomes["retention.pending_blobs"].outcome == "ok"
    for recording in recordings:
        row = await world.row(recording.request_id)
        assert row.blob_deleted_at is not None
        assert not await world.blob_exists(row)
    assert KeyBucket.of("eastus", recordings[0].started_at) not in await world.keyrings.live_buckets(
        started_before=world.clock.now())
    assert len(await world.entries(AuditAction.RECORDING_PURGED)) == 4  # one purge per recording, still
    assert sum(json.loads(d)["key_kind"] == "kek" for _, d in await world.entries(AuditAction.KEY_DESTROYED)) == 1


async def test_a_failing_store_leaves_blob_pending_yet_the_key_and_kek_are_gone(world: World) -> None:
    recordings = [await world.record("westeurope") for _ in range(3)]
    copies = [await world.copy_of(r) for r in recordings]
    world.clock.advance(LIFETIME)
    result = await purger_on(world, with_failing_deletes(world, StoreUnavailable("down"))).run()
    assert (result.recordings_purged, result.blobs_pending, result.buckets_finished) == (3, 3, 1)
    assert await world.count(Recording.shredded_at.is_not(None), Recording.blob_deleted_at.is_(None)) == 3
    assert not any([await world.opens(c) for c in copies])
    scheduler = world.scheduler()
    assert (await scheduler.run_job("retention.pending_blobs")).items == 3
    assert await world.count(Recording.blob_deleted_at.is_(None)) == 0
    assert not any([await world.blob_exists(r) for r in recordings])


async def test_an_expired_kek_no_row_points_to_is_destroyed_and_audited(world: World) -> None:
    start = world.clock.now() + timedelta(hours=3)
    lonely = KeyBucket.of("westeurope", start)
    world.clock.advance(timedelta(hours=3))
    await world.keyrings.get_or_create(lonely)  # e.g. a key made for a session whose row never committed
    purger = world.purger(purge_lead_s=60)
    world.clock.advance(lonely.hour + LIFETIME - timedelta(seconds=61) - world.clock.now())
    await purger.run()
    assert lonely in await world.keyrings.live_buckets(started_before=world.clock.now())
    world.clock.advance(timedelta(seconds=1))
    result = await purger.run()
    assert (result.keks_without_rows, result.buckets_finished) == (1, 1)
    assert lonely not in await world.keyrings.live_buckets(started_before=world.clock.now())
    keks = [json.loads(d) for _, d in await world.entries(AuditAction.KEY_DESTROYED)]
    assert keks == [{"bucket": kek_bucket(start), "key_kind": "kek", "key_ref": "keks/westeurope/"
                     f"{lonely.label}.kek", "region": "westeurope"}]


async def test_erased_recordings_are_not_purged_twice_and_their_bucket_kek_still_goes(world: World) -> None:
    erased, kept = await world.record("eastus"), await world.record("eastus")
    async with world.factory() as session:
        row = await session.get(Recording, erased.request_id)
        assert row is not None
        await shred_recording(session=session, clock=world.clock, keyrings=world.keyrings, recording=row,
                              reason=ShredReason.ERASURE, actor=Actor.customer_admin("admin"))
        await session.commit()
    world.clock.advance(LIFETIME)
    result = await world.purger().run()
    assert (result.recordings_purged, result.buckets_finished) == (1, 1)
    reasons = sorted(json.loads(d)["reason"] for _, d in await world.entries(AuditAction.RECORDING_PURGED))
    assert reasons == ["erasure", "retention"]
    assert (await world.row(kept.request_id)).state == "purged"
    assert (await world.row(erased.request_id)).state == "erased"


def test_reads_refuse_a_recording_once_its_bucket_is_past_30_days_even_if_not_purged() -> None:
    started = datetime(2031, 1, 1, 10, 59, 59, tzinfo=UTC)
    recording = Recording(started_at=started, bucket_start=started.replace(minute=0, second=0))
    end = datetime(2031, 1, 31, 10, 0, tzinfo=UTC)
    assert not recording_expired(recording, end - timedelta(microseconds=1), LIFETIME)
    assert recording_expired(recording, end, LIFETIME)
    # A row whose bucket was stored wrong still dies with the hour it started in.
    wrong = Recording(started_at=started, bucket_start=started + timedelta(hours=5))
    assert recording_expired(wrong, end, LIFETIME)
    # The read policy's own view of a recording (no bucket column) gets the same answer.
    view = RecordingView(request_id="r" * 32, ticket_id="t", started_at=started, shredded=False)
    assert not recording_expired(view, end - timedelta(microseconds=1), LIFETIME)
    assert recording_expired(view, end, LIFETIME)
