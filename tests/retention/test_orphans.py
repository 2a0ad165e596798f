"""The orphan sweep, on the local store and on Azurite: orphans found (and deleted once their audit action
exists, or at once past their bucket's 30 days), pending blobs finished, rows whose blob is missing flagged;
nothing young or live touched."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import update

from app.audit.actions import Actor, AuditAction
from app.audit.reports.entries import Period
from app.audit.service import read_chain_head
from app.capture.models import Recording
from app.capture.shred import shred_recording
from app.capture.states import ShredReason
from app.clock import ManualClock, SystemClock
from app.regions import RegionSettings
from app.retention import orphans
from app.retention.metrics import RetentionMetrics
from app.retention.orphans import NO_ROW, ROW_PURGED, OrphanSweep, orphan_audit_action
from app.retention.report import build_retention_report
from app.storage.layout import RecordingKey
from tests.retention.conftest import built_world, local_regions
from tests.retention.world import World


@pytest.fixture(params=["local", "azurite"])
async def sweep_world(request: pytest.FixtureRequest, db_kind: str, retention_db_url: str, tmp_path: Path
                      ) -> AsyncIterator[World]:
    """Clock at the real time: Azurite stamps blobs with its own clock."""
    regions: list[RegionSettings] = (local_regions(tmp_path) if request.param == "local"
                                     else request.getfixturevalue("azurite_region_settings"))
    clock = ManualClock(SystemClock().now())
    async with built_world(db_kind, retention_db_url, tmp_path, clock, regions) as built:
        yield built


async def stray_blob(world: World, region: str, started_at: datetime) -> RecordingKey:
    """A blob that no row knows: a crash after create, a restore of an old backup."""
    key = RecordingKey(secrets.token_hex(16), started_at)
    store = world.stores.store(region)
    await store.create(key)
    await store.append(key, secrets.token_bytes(200), offset=0)
    return key


def sweep(world: World, registry: CollectorRegistry) -> OrphanSweep:
    return OrphanSweep(session_factory=world.factory, clock=world.clock, stores=world.stores,
                       min_age=timedelta(hours=1), lifetime=timedelta(days=30), metrics=RetentionMetrics(registry))


async def purge_now(world: World, recording: Recording, *, blob_deleted: bool) -> None:
    async with world.factory() as session:
        row = await session.get(Recording, recording.request_id)
        assert row is not None
        await shred_recording(session=session, clock=world.clock, keyrings=world.keyrings, recording=row,
                              reason=ShredReason.ERASURE, actor=Actor.customer_admin("c"))
        if blob_deleted:
            row.blob_deleted_at = world.clock.now()
        await session.commit()


async def test_live_and_young_blobs_stay_orphans_are_found_and_rows_without_blobs_flagged(sweep_world: World) -> None:
    world = sweep_world
    live = await world.record("eastus")
    no_blob = await world.record("westeurope", blob=False)
    pending = await world.record("eastus")
    await purge_now(world, pending, blob_deleted=False)  # step 1 done, its blob delete pending
    stray = await stray_blob(world, "westeurope", world.clock.now())
    registry = CollectorRegistry()
    sweeper = sweep(world, registry)

    young = await sweeper.run()  # all of it just made: too young to judge, except the pending one
    assert (young.orphans_kept, young.orphans_deleted, young.pending_deleted, young.rows_missing_blob) == (0, 0, 1, 0)
    assert await world.stores.store("westeurope").exists(stray)

    world.clock.advance(timedelta(hours=1, minutes=1))
    result = await sweeper.run()

    assert orphan_audit_action() is None  # not in app.audit yet: found, counted, kept
    assert (result.orphans_kept, result.orphans_deleted, result.pending_deleted, result.rows_missing_blob) == (
        1, 0, 0, 1)
    assert await world.blob_exists(live)
    assert await world.stores.store("westeurope").exists(stray)
    assert not await world.blob_exists(pending)
    assert (await world.row(pending.request_id)).blob_deleted_at is not None
    sample = registry.get_sample_value
    assert sample("voicelog_retention_orphan_blobs_kept", {"region": "westeurope"}) == 1
    assert sample("voicelog_retention_rows_missing_blob", {"region": "westeurope"}) == 1
    assert sample("voicelog_retention_rows_missing_blob", {"region": "eastus"}) == 0
    assert no_blob.request_id  # flagged by id in the log, never by content


async def test_with_its_audit_action_an_orphan_is_deleted_with_its_entry(
    sweep_world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = sweep_world
    audited: list[dict[str, Any]] = []

    async def audit(**kwargs: Any) -> bool:  # stands for app.audit gaining `storage.orphan_deleted`
        audited.append({"request_id": kwargs["orphan"].request_id, "reason": kwargs["reason"],
                        "region": kwargs["region"], "parts": kwargs["orphan"].parts})
        return True

    monkeypatch.setattr(orphans, "audit_orphan_deletion", audit)
    stray = await stray_blob(world, "eastus", world.clock.now())
    purged = await world.record("westeurope")
    await purge_now(world, purged, blob_deleted=True)
    # The purged recording's blob is back (restored from soft delete, or a writer that outlived it).
    async with world.factory() as session:
        await session.execute(update(Recording).where(Recording.request_id == purged.request_id)
                              .values(blob_deleted_at=world.clock.now()))
        await session.commit()
    world.clock.advance(timedelta(hours=1, minutes=1))

    result = await sweep(world, CollectorRegistry()).run()

    assert result.orphans_deleted == 2
    assert sorted((a["request_id"], a["reason"]) for a in audited) == sorted(
        [(stray.request_id, NO_ROW), (purged.request_id, ROW_PURGED)])
    assert not await world.stores.store("eastus").exists(stray)
    assert not await world.blob_exists(purged)
    again = await sweep(world, CollectorRegistry()).run()
    assert (again.orphans_deleted, again.orphans_kept, len(audited)) == (0, 0, 2)


async def test_orphans_past_their_buckets_thirty_days_are_deleted_audited_and_reported(sweep_world: World) -> None:
    world = sweep_world
    now = world.clock.now()
    old = [await stray_blob(world, "westeurope", now - timedelta(days=31)),
           await stray_blob(world, "eastus", now - timedelta(days=30, hours=2))]
    younger = await stray_blob(world, "westeurope", now - timedelta(days=29))  # within its 30 days
    world.clock.advance(timedelta(hours=1, minutes=1))  # every blob is past the 1 h minimum age
    now = world.clock.now()
    registry = CollectorRegistry()

    result = await sweep(world, registry).run()

    assert (result.orphans_deleted, result.orphans_kept) == (2, 1)
    assert not await world.stores.store("westeurope").exists(old[0])
    assert not await world.stores.store("eastus").exists(old[1])
    assert await world.stores.store("westeurope").exists(younger)  # the documented rule: kept, no audit action
    purged = {rid: json.loads(detail) for rid, detail in await world.entries(AuditAction.RECORDING_PURGED)}
    assert set(purged) == {old[0].request_id, old[1].request_id}
    assert {(d["region"], d["reason"], d["kek_bucket"]) for d in purged.values()} == {
        ("westeurope", "retention", old[0].hour.strftime("%Y-%m-%dT%H")),
        ("eastus", "retention", old[1].hour.strftime("%Y-%m-%dT%H"))}
    sample = registry.get_sample_value
    assert sample("voicelog_retention_orphan_blobs_deleted_total",
                  {"region": "eastus", "reason": "expired_no_row"}) == 1
    await world.chain()
    async with world.factory() as session:
        report = await build_retention_report(session=session, period=Period(now.date(), now.date()),
                                              head=await read_chain_head(session), retention_days=30, as_of=now)
    days = report["days"]
    assert isinstance(days, list)
    counted = {(d["region"], d["recordings_purged"], d["purged_for_retention"]) for d in days
               if isinstance(d, dict) and d["day"] == now.date().isoformat()}
    assert counted == {("westeurope", 1, 1), ("eastus", 1, 1)}  # the report counts them
    again = await sweep(world, CollectorRegistry()).run()
    assert (again.orphans_deleted, again.orphans_kept) == (0, 1)
