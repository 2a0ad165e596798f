"""Purge rate: recordings purged per second, beside a raw loop of the same blob deletes in the same run.

For each store (Azurite, the local directory store): N recordings (default 10,000) in B hour buckets
(default 10) of one region, each with its data key wrapped by the local keyring, its row in the database
and a small sealed blob; then `Purger.run()` purges them all (step 1 per recording: key service erasure,
wrapped key deleted, row marked, two audit entries, one transaction per batch; step 2: the blob; step 3:
each bucket's KEK destroyed and audited). Beside it, a raw loop deletes an equal set of blobs of the same
size with `BlobStore.delete` at the purge's blob concurrency: the store's own throughput, with nothing of
the purge around it. Raw and purge are interleaved (raw half, purge, raw other half) so drift hits both.
A raw loop at concurrency 1 over 500 more such blobs is printed for context. The database is PostgreSQL
(as in production) or SQLite. Setup writes go through the SDK on Azurite (not measured). Never asserted;
target: purge >= 80% of raw.

    .venv/bin/python ops/bench/purge_rate.py [--recordings 10000] [--buckets 10] [--backends azure,local]
        [--database postgresql|sqlite] [--concurrency 8] [--batch 200]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from azure.storage.blob.aio import BlobServiceClient
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from app import migrate
from app.capture.models import Recording
from app.clock import ManualClock
from app.db import create_engine, create_session_factory
from app.logs import configure_logging
from app.resources.models import Resource
from app.retention.metrics import RetentionMetrics
from app.retention.purge import Purger
from app.retention.settings import RetentionSettings
from app.storage.azure import AzureBlobStore
from app.storage.errors import NotFound
from app.storage.layout import RecordingKey
from app.storage.local import LocalDirStore
from app.storage.protocol import BlobStore
from app.storage.router import RegionRouter
from app.storage.settings import StorageSettings
from app.tickets.models import Consent, Ticket
from app.vault.envelope import create_data_key
from app.vault.keyring import RegionKeyrings
from app.vault.local import LocalKeyring
from app.vault.segments import SegmentWriter

REGION = "eastus"
LIFETIME = timedelta(days=30)
START = datetime(2031, 5, 5, 0, 0, tzinfo=UTC)
PG = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
PG_DB = "voicelog_bench_purge"
SEQUENTIAL = 500  # raw deletes one at a time, first, for context


@dataclass
class Figures:
    store: str
    recordings: int
    purge_s: float
    raw_s: float
    raw_sequential_rate: float

    @property
    def purge_rate(self) -> float:
        return self.recordings / self.purge_s

    @property
    def raw_rate(self) -> float:
        return self.recordings / self.raw_s


async def gather_limited(concurrency: int, jobs: Sequence[object]) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(job: object) -> None:
        async with gate:
            await job  # type: ignore[misc]

    await asyncio.gather(*(one(j) for j in jobs))


Put = Callable[[RecordingKey, bytes], Awaitable[None]]
"""Writes one whole blob for the setup (not measured)."""


async def make_recordings(factory: object, put: Put, keyrings: RegionKeyrings, count: int, buckets: int) -> None:
    """`count` recordings over `buckets` hours from START: wrapped DEK, row, sealed blob."""
    async with factory() as session:  # type: ignore[operator]
        resource = Resource(name=f"bench-{secrets.token_hex(4)}", region=REGION, upstream_endpoint="ws://x",
                            owner_tenant="bench", created_at=START)
        session.add(resource)
        await session.flush()
        ticket = Ticket(resource_id=resource.id, external_ref=f"B-{secrets.token_hex(4)}", created_by="bench",
                        created_at=START)
        session.add(ticket)
        await session.flush()
        consent = Consent(resource_id=resource.id, ticket_id=ticket.id, granted_by="bench", granted_at=START,
                          not_before=START, not_after=START + timedelta(days=2))
        session.add(consent)
        await session.commit()
        ids = (resource.id, ticket.id, consent.id)
    per_bucket = count // buckets
    rows: list[Recording] = []
    blobs = []
    for n in range(count):
        started = START + timedelta(hours=n // per_bucket, seconds=(n % per_bucket) * 3600 / per_bucket)
        rid = secrets.token_hex(16)
        dek, wrapped = await create_data_key(keyrings.for_region(REGION), region=REGION, request_id=rid,
                                             started_at=started)
        with dek:
            writer = SegmentWriter(dek, region=REGION, request_id=rid)
            body = writer.header + bytes(writer.seal(secrets.token_bytes(160), final=True))
        key = RecordingKey(rid, started)
        rows.append(Recording(request_id=rid, resource_id=ids[0], region=REGION, ticket_id=ids[1], consent_id=ids[2],
                              started_at=started, bucket_start=key.hour, wrapped_dek=wrapped.to_bytes(),
                              blob_name=key.name, state="complete", segments=1))
        blobs.append((key, body))
    for start in range(0, len(rows), 1000):
        async with factory() as session:  # type: ignore[operator]
            session.add_all(rows[start:start + 1000])
            await session.commit()
    await gather_limited(32, [put(key, body) for key, body in blobs])


def store_put(store: BlobStore) -> Put:
    async def put(key: RecordingKey, body: bytes) -> None:
        await store.create(key)
        await store.append(key, body, offset=0)

    return put


def sdk_put(service: BlobServiceClient, container: str) -> Put:
    """Setup through the SDK directly: the store's append first lists the blob's parts, and Azurite's listing
    is linear in the container's size, which would make a 20,000-blob setup take an hour."""

    async def put(key: RecordingKey, body: bytes) -> None:
        client = service.get_blob_client(container, key.name)
        await client.create_append_blob()
        await client.append_block(body, length=len(body))

    return put


async def raw_blobs(put: Put, count: int, buckets: int, first_hour: int) -> list[RecordingKey]:
    """Blobs like the recordings' (same size, own hours), deleted by the raw loop."""
    per_bucket = count // buckets
    keys = [RecordingKey(secrets.token_hex(16), START + timedelta(hours=first_hour + n // per_bucket,
                                                                  seconds=(n % per_bucket) * 3600 / per_bucket))
            for n in range(count)]
    body = secrets.token_bytes(40 + 160 + 60)
    await gather_limited(32, [put(key, body) for key in keys])
    return keys


async def delete_settled(store: BlobStore, key: RecordingKey) -> None:
    """A delete as the purge makes it: a concurrent delete emptying the directory is settled by one more look."""
    try:
        await store.delete(key)
    except NotFound:
        await store.delete(key)


async def raw_delete(store: BlobStore, keys: Sequence[RecordingKey], concurrency: int) -> float:
    t0 = time.perf_counter()
    await gather_limited(concurrency, [delete_settled(store, k) for k in keys])
    return time.perf_counter() - t0


@dataclass
class Backend:
    """One kind of store: the purge's store, the raw loop's store (its own container or directory, of the
    same size), and how the setup writes blobs into each."""

    name: str
    store: BlobStore
    raw_store: BlobStore
    put: Put
    raw_put: Put


async def run_backend(backend: Backend, database_url: str, keyring_dir: Path, args: argparse.Namespace) -> Figures:
    name, store = backend.name, backend.store
    clock = ManualClock(START)
    engine = create_engine(database_url)
    factory = create_session_factory(engine)
    keyrings = RegionKeyrings({REGION: LocalKeyring(keyring_dir, clock=clock, bucket_lifetime=LIFETIME)})
    stores = RegionRouter({REGION: store})
    try:
        await store.prepare()
        await backend.raw_store.prepare()
        print(f"[{name}] making {args.recordings} recordings and {args.recordings} raw blobs ...", flush=True)
        await make_recordings(factory, backend.put, keyrings, args.recordings, args.buckets)
        raw = await raw_blobs(backend.raw_put, args.recordings + SEQUENTIAL, args.buckets, first_hour=0)
        sequential, raw = raw[:SEQUENTIAL], raw[SEQUENTIAL:]
        clock.advance(LIFETIME + timedelta(hours=args.buckets))
        purger = Purger(session_factory=factory, clock=clock, keyrings=keyrings, stores=stores,
                        settings=RetentionSettings(blob_delete_concurrency=args.concurrency, purge_batch=args.batch),
                        lifetime=LIFETIME, metrics=RetentionMetrics(CollectorRegistry()), owner="bench")
        print(f"[{name}] purging ...", flush=True)
        seq_s = await raw_delete(backend.raw_store, sequential, 1)  # for context, on a full container too
        half = len(raw) // 2
        raw_s = await raw_delete(backend.raw_store, raw[:half], args.concurrency)
        t0 = time.perf_counter()
        result = await purger.run()
        purge_s = time.perf_counter() - t0
        raw_s += await raw_delete(backend.raw_store, raw[half:], args.concurrency)
        async with factory() as session:
            left = (await session.execute(select(func.count()).select_from(Recording).where(
                Recording.blob_deleted_at.is_(None)))).scalar_one()
        if result.recordings_purged != args.recordings or left or result.buckets_finished != args.buckets:
            raise SystemExit(f"[{name}] purge incomplete: {result}, {left} blobs left")
        return Figures(name, args.recordings, purge_s, raw_s, SEQUENTIAL / seq_s)
    finally:
        await store.close()
        await backend.raw_store.close()
        await engine.dispose()


def azurite_launcher() -> type:
    """The storage benchmark's Azurite launcher (ops/bench/storage_append.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from storage_append import Azurite

    return Azurite


def database(kind: str, workdir: Path, label: str) -> str:
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / f'{label}.db'}"
    else:
        name = f"{PG_DB}_{label}"
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    migrate.upgrade(url)
    return url


def drop_database(kind: str, label: str) -> None:
    if kind == "postgresql":
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{PG_DB}_{label}" WITH (FORCE)')


async def main(args: argparse.Namespace) -> None:
    configure_logging("WARNING")
    figures: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="purge-bench-") as tmp:
        workdir = Path(tmp)
        settings = StorageSettings(create_containers=True, timeout_s=30.0)
        for backend in args.backends.split(","):
            url = await asyncio.to_thread(database, args.database, workdir, backend)
            try:
                if backend == "local":
                    local = LocalDirStore(region=REGION, root=workdir / "blobs", settings=settings,
                                          clock=ManualClock(START))
                    raw_local = LocalDirStore(region=REGION, root=workdir / "raw-blobs", settings=settings,
                                              clock=ManualClock(START))
                    figures.append(await run_backend(
                        Backend("local", local, raw_local, store_put(local), store_put(raw_local)), url,
                        workdir / "keyring-local", args))
                else:
                    azurite = azurite_launcher()(workdir)
                    azurite.start()
                    service = BlobServiceClient.from_connection_string(azurite.connection_string)
                    try:
                        connection = azurite.connection_string
                        stores = [AzureBlobStore.from_connection_string(
                            region=REGION, connection_string=connection, container=container, settings=settings)
                            for container in ("recordings", "raw")]
                        figures.append(await run_backend(
                            Backend("azurite", stores[0], stores[1],
                                    sdk_put(service, "recordings"), sdk_put(service, "raw")), url,
                            workdir / "keyring-azure", args))
                    finally:
                        await service.close()
                        azurite.stop()
            finally:
                drop_database(args.database, backend)
    print()
    print(f"database: {args.database}; {args.recordings} recordings in {args.buckets} buckets; "
          f"blob deletes {args.concurrency} at a time; step-1 batch {args.batch}")
    print(f"{'store':<8} {'purge s':>8} {'purged/s':>9} {'raw del/s':>10} {'ratio':>6} {'raw del/s (c=1)':>16} "
          f"{'100k purge':>11}")
    for f in figures:
        day = 100_000 / f.purge_rate / 60
        print(f"{f.store:<8} {f.purge_s:>8.1f} {f.purge_rate:>9.0f} {f.raw_rate:>10.0f} "
              f"{f.purge_rate / f.raw_rate:>6.0%} {f.raw_sequential_rate:>16.0f} {day:>7.1f} min")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recordings", type=int, default=10_000)
    parser.add_argument("--buckets", type=int, default=10)
    parser.add_argument("--backends", default="azure,local")
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--concurrency", type=int, default=RetentionSettings().blob_delete_concurrency)
    parser.add_argument("--batch", type=int, default=RetentionSettings().purge_batch)
    asyncio.run(main(parser.parse_args()))
