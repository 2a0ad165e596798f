"""Two scheduler processes on one PostgreSQL database: every bucket purged exactly once, and one killed in
the middle of a purge loses nothing (DESIGN.md, "Scale-out")."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from app.audit.actions import AuditAction, kek_bucket
from app.capture.models import Recording
from app.capture.shred import delete_pending_blobs
from app.vault.keyring import KeyBucket
from tests.retention.world import LIFETIME, REGIONS, World

ROOT = Path(__file__).resolve().parents[2]
BUCKETS = 8
PER_BUCKET = 40


async def spawn(world: World, tmp_path: Path, name: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.retention.purge_process", "--url", world.url, "--root", str(tmp_path),
        "--now", world.clock.now().isoformat(), "--name", name, cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def ready(process: asyncio.subprocess.Process) -> None:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    assert json.loads(line)["ready"]


async def go(process: asyncio.subprocess.Process) -> None:
    assert process.stdin is not None
    process.stdin.write(b"go\n")
    await process.stdin.drain()


async def next_batch(process: asyncio.subprocess.Process, seen: list[dict[str, Any]]) -> dict[str, Any]:
    """The replica's next committed batch (other lines it prints go to `seen`)."""
    assert process.stdout is not None
    assert process.stderr is not None
    while True:
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        if not line:
            raise AssertionError(f"the replica stopped: {seen} {(await process.stderr.read())[-3000:]!r}")
        record: dict[str, Any] = json.loads(line)
        seen.append(record)
        if "shredded" in record:
            return record


@pytest.mark.parametrize("db_kind", ["postgresql"])
async def test_two_processes_purge_each_recording_once_and_a_killed_one_loses_nothing(
    world: World, tmp_path: Path,
) -> None:
    epoch = world.clock.now()
    made: list[Recording] = []
    for bucket in range(BUCKETS):
        for n in range(PER_BUCKET):
            made.append(await world.record(REGIONS[bucket % 2], epoch + timedelta(hours=bucket, seconds=60 * n + 1)))
    copies = [await world.copy_of(r) for r in made[::10]]
    world.clock.advance(LIFETIME + timedelta(hours=BUCKETS))

    first, second = await spawn(world, tmp_path, "replica-a"), await spawn(world, tmp_path, "replica-b")
    await ready(first)
    await ready(second)
    await go(first)
    first_lines: list[dict[str, Any]] = []
    second_lines: list[dict[str, Any]] = []
    first_batches = [await next_batch(first, first_lines)]  # replica-a holds a bucket, mid-purge...
    await go(second)  # ...when replica-b starts beside it
    second_batches = [await next_batch(second, second_lines)]
    while len(first_batches) < 4:
        first_batches.append(await next_batch(first, first_lines))
    first.send_signal(signal.SIGKILL)  # claims held, a batch in flight, blobs half deleted
    await first.wait()
    out, err = await asyncio.wait_for(second.communicate(), 120)
    assert second.returncode == 0, err.decode()[-2000:]
    lines = second_lines + [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    second_batches += [line for line in lines[len(second_lines):] if "shredded" in line]
    assert sum(int(b["shredded"]) for b in first_batches) >= 4 * 20 - 20  # what replica-a committed stands
    assert sum(int(b["shredded"]) for b in second_batches) < len(made)
    assert sum(line["run"]["buckets_skipped"] for line in lines if "run" in line) >= 1  # they met on a claim

    # The next minute on the surviving replica: the pending-blob job retries what the killed one left.
    async with world.factory() as session:
        await delete_pending_blobs(session=session, clock=world.clock, stores=world.stores)
        await session.commit()
    assert (await world.purger().run()).recordings_purged == 0  # nothing was left for anyone

    assert await world.count(Recording.shredded_at.is_(None)) == 0
    assert await world.count(Recording.blob_deleted_at.is_(None)) == 0
    assert not [r for r in made if await world.blob_exists(r)]
    assert not [c for c in copies if await world.opens(c)]
    assert not await world.keyrings.live_buckets(started_before=world.clock.now())
    await world.chain()
    purges = Counter(rid for rid, _ in await world.entries(AuditAction.RECORDING_PURGED))
    assert len(purges) == len(made)
    assert set(purges.values()) == {1}  # one purge per recording, whoever did it
    keys = [json.loads(d) | {"request_id": rid} for rid, d in await world.entries(AuditAction.KEY_DESTROYED)]
    assert Counter(k["request_id"] for k in keys if k["key_kind"] == "dek") == Counter(r.request_id for r in made)
    keks = Counter((k["region"], k["bucket"]) for k in keys if k["key_kind"] == "kek")
    assert keks == Counter((r.region, kek_bucket(r.bucket_start)) for r in made[::PER_BUCKET])
    assert all(KeyBucket.of(r.region, r.started_at).hour == r.bucket_start for r in made)
