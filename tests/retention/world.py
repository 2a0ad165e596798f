"""A retention test world: a private database, a ManualClock, the local keyring and real regional stores.

Recordings are made the way the recorder makes them (data key from the vault, row and `recording.started`
entry in one transaction, then the blob: header and a sealed final segment), at any simulated time.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.audit.actions import Actor, AuditAction, Subjects, detail_time, kek_bucket
from app.audit.runtime import AuditRuntime
from app.audit.service import append_entry, integrate_pending
from app.audit.settings import AuditSettings
from app.capture.models import Recording
from app.clock import ManualClock
from app.resources.models import Resource
from app.retention.jobs import JobContext
from app.retention.metrics import RetentionMetrics
from app.retention.purge import Purger
from app.retention.scheduler import RetentionScheduler, build_scheduler
from app.retention.settings import RetentionSettings
from app.storage.layout import RecordingKey
from app.storage.router import RegionRouter
from app.tickets.models import Consent, Ticket
from app.vault.envelope import create_data_key, unwrap_data_key
from app.vault.keyring import RegionKeyrings
from app.vault.local import LocalKeyring
from app.vault.segments import SegmentWriter, open_stream
from tests.fixtures.audit import audit_rows

REGIONS = ("eastus", "westeurope")
LIFETIME = timedelta(days=30)
RECORDER = Actor.system("recorder")


def marker_plaintext(request_id: str) -> bytes:
    return f"retention test frames of {request_id}".encode() * 4


@dataclass
class Copy:
    """What an attacker with a backup and a blob snapshot would hold: the wrapped key and the blob bytes."""

    request_id: str
    region: str
    started_at: datetime
    wrapped: bytes
    blob: bytes


@dataclass
class World:
    kind: str
    url: str
    engine: AsyncEngine
    factory: async_sessionmaker[AsyncSession]
    clock: ManualClock
    keyrings: RegionKeyrings
    stores: RegionRouter
    data_dir: Path
    resources: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # region -> resource, ticket, consent
    audit_settings: AuditSettings = field(default_factory=AuditSettings)

    # --- setup ----------------------------------------------------------------------------------------

    async def seed(self) -> None:
        """One resource, ticket and long consent per region."""
        async with self.factory() as session:
            for region in REGIONS:
                tag = secrets.token_hex(4)
                resource = Resource(name=f"res-{region}-{tag}", region=region, upstream_endpoint="ws://127.0.0.1:1",
                                    owner_tenant=f"tenant-{tag}", created_at=self.clock.now())
                session.add(resource)
                await session.flush()
                ticket = Ticket(resource_id=resource.id, external_ref=f"INC-{tag}", created_by="svc",
                                created_at=self.clock.now())
                session.add(ticket)
                await session.flush()
                consent = Consent(resource_id=resource.id, ticket_id=ticket.id, granted_by="admin",
                                  granted_at=self.clock.now(), not_before=self.clock.now() - timedelta(days=1),
                                  not_after=self.clock.now() + timedelta(days=400))
                session.add(consent)
                await session.flush()
                self.resources[region] = (resource.id, ticket.id, consent.id)
            await session.commit()

    def settings(self, **overrides: Any) -> RetentionSettings:
        return RetentionSettings(**overrides)

    def purger(self, **overrides: Any) -> Purger:
        return Purger(session_factory=self.factory, clock=self.clock, keyrings=self.keyrings, stores=self.stores,
                      settings=self.settings(**overrides), lifetime=LIFETIME,
                      metrics=RetentionMetrics(CollectorRegistry()), owner="test")

    def audit_runtime(self) -> AuditRuntime:
        settings = AuditSettings(signing_key_dir=self.data_dir / "audit-keys",
                                 checkpoint_export_path=self.data_dir / "audit-checkpoints.jsonl")
        return AuditRuntime.from_settings(settings, self.data_dir)

    def scheduler(self, audit: AuditRuntime | None = None, registry: CollectorRegistry | None = None,
                  **overrides: Any) -> RetentionScheduler:
        return build_scheduler(settings=self.settings(**overrides), lifetime=LIFETIME, session_factory=self.factory,
                               clock=self.clock, keyrings=self.keyrings, stores=self.stores,
                               audit=audit or self.audit_runtime(), registry=registry or CollectorRegistry(),
                               owner="test")

    def context(self, scheduler: RetentionScheduler) -> JobContext:
        return scheduler.context

    # --- recordings -------------------------------------------------------------------------------------

    async def record(self, region: str, started_at: datetime | None = None, *, blob: bool = True,
                     plaintext: bytes | None = None) -> Recording:
        """A finished recording started at `started_at` (default: now), with its encrypted blob."""
        started_at = started_at or self.clock.now()
        request_id = secrets.token_hex(16)
        resource_id, ticket_id, consent_id = self.resources[region]
        key = RecordingKey(request_id, started_at)
        dek, wrapped = await create_data_key(self.keyrings.for_region(region), region=region, request_id=request_id,
                                             started_at=started_at)
        async with self.factory() as session:
            recording = Recording(
                request_id=request_id, resource_id=resource_id, region=region, ticket_id=ticket_id,
                consent_id=consent_id, started_at=started_at, bucket_start=key.hour, wrapped_dek=wrapped.to_bytes(),
                blob_name=key.name, state="complete", ended_at=started_at + timedelta(seconds=30), segments=1,
                heartbeat_at=started_at,
            )
            session.add(recording)
            await append_entry(
                session=session, clock=self.clock, actor=RECORDER, action=AuditAction.RECORDING_STARTED,
                subjects=Subjects(request_id=request_id, resource=resource_id, ticket=ticket_id),
                detail={"region": region, "started_at": detail_time(started_at), "kek_bucket": kek_bucket(started_at),
                        "consent": consent_id},
            )
            await session.commit()
        if blob:
            with dek:
                writer = SegmentWriter(dek, region=region, request_id=request_id)
                store = self.stores.store(region)
                await store.create(key)
                offset = await store.append(key, writer.header, offset=0)
                sealed = writer.seal(plaintext or marker_plaintext(request_id), final=True)
                await store.append(key, bytes(sealed), offset=offset)
        else:
            dek.destroy()
        return recording

    async def copy_of(self, recording: Recording) -> Copy:
        """Take a backup of the row's wrapped key and a snapshot of the blob, as they are now."""
        assert recording.wrapped_dek is not None
        store = self.stores.store(recording.region)
        blob = b"".join([c async for c in store.stream(RecordingKey(recording.request_id, recording.started_at))])
        return Copy(recording.request_id, recording.region, recording.started_at, recording.wrapped_dek, blob)

    async def opens(self, copy: Copy) -> bool:
        """Whether a copy still decrypts: True only if the key service unwraps it and the stream opens."""
        try:
            dek = await unwrap_data_key(self.keyrings.for_region(copy.region), copy.wrapped, region=copy.region,
                                        request_id=copy.request_id)
        except Exception:
            return False
        with dek:
            opened = open_stream(dek, copy.blob, region=copy.region, request_id=copy.request_id)
        return opened.complete and opened.segments[0] == marker_plaintext(copy.request_id)

    async def row(self, request_id: str) -> Recording:
        async with self.factory() as session:
            found = await session.get(Recording, request_id)
        assert found is not None
        return found

    async def rows(self) -> list[Recording]:
        async with self.factory() as session:
            return list((await session.execute(select(Recording).order_by(Recording.started_at))).scalars())

    async def blob_exists(self, recording: Recording) -> bool:
        return await self.stores.store(recording.region).exists(RecordingKey(recording.request_id,
                                                                             recording.started_at))

    async def listed_names(self) -> dict[str, set[str]]:
        """Every blob each region's store holds, by listing."""
        found: dict[str, set[str]] = {}
        for region in REGIONS:
            found[region] = {o.request_id async for o in self.stores.store(region).list_objects()}
        return found

    # --- audit --------------------------------------------------------------------------------------------

    async def chain(self) -> None:
        if self.kind != "postgresql":
            return
        while True:
            async with self.factory() as session:
                count = await integrate_pending(session, wait=True)
                await session.commit()
            if count == 0:
                return

    async def entries(self, action: AuditAction) -> list[tuple[str | None, str]]:
        """(request_id, detail) of every entry of `action`, chained or still queued."""
        async with self.factory() as session:
            rows = await audit_rows(session, "request_id", "detail", action=action.value)
        return [(r[0], r[1]) for r in rows]

    async def count(self, *conditions: Any) -> int:
        async with self.factory() as session:
            return int((await session.execute(select(func.count()).select_from(Recording).where(*conditions)))
                       .scalar_one())


def hours(start: datetime, count: int) -> Sequence[datetime]:
    base = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return [base + timedelta(hours=n) for n in range(count)]


def new_keyrings(directory: Path, clock: ManualClock) -> RegionKeyrings:
    keyring = LocalKeyring(directory, clock=clock, bucket_lifetime=LIFETIME)
    return RegionKeyrings(dict.fromkeys(REGIONS, keyring))
