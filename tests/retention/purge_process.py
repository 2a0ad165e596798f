"""One replica's purge, as its own process, for the multi-process tests: purges until nothing is due.

    python -m tests.retention.purge_process --url URL --root DIR --now ISO --name A [--delete-delay-ms 100]

Prints a `ready` line, waits for a line on stdin (so replicas start together), then one JSON line per
committed batch of destroyed keys and one per run.
The clock is frozen at `--now`; deletes are slowed so a purge takes a while.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from app.audit.entry_mac import bind_entry_mac, build_entry_mac_keys
from app.audit.settings import AuditSettings
from app.capture.models import Recording
from app.clock import ManualClock
from app.db import create_engine, create_session_factory
from app.logs import configure_logging
from app.retention.metrics import RetentionMetrics
from app.retention.policy import purge_cutoff
from app.retention.purge import Purger, PurgeResult
from app.retention.settings import RetentionSettings
from app.storage.layout import RecordingKey
from app.storage.protocol import BlobStore
from app.storage.router import RegionRouter
from app.storage.settings import StorageSettings
from tests.retention.conftest import local_regions
from tests.retention.world import LIFETIME, new_keyrings


class SlowDeletes:
    def __init__(self, inner: BlobStore, delay_s: float) -> None:
        self._inner = inner
        self._delay_s = delay_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def delete(self, key: RecordingKey) -> bool:
        await asyncio.sleep(self._delay_s)
        return await self._inner.delete(key)


class ReportingPurger(Purger):
    """Says, as it goes, each batch of keys it destroyed and committed."""

    async def _mark_and_delete(self, batch: Sequence[Recording], result: PurgeResult) -> int:
        marked = await super()._mark_and_delete(batch, result)
        if marked:
            line = {"name": self.owner, "bucket": batch[0].bucket_start.isoformat(), "shredded": marked}
            print(json.dumps(line), flush=True)  # noqa: T201
        return marked


async def main(args: argparse.Namespace) -> None:
    configure_logging("WARNING")
    clock = ManualClock(datetime.fromisoformat(args.now))
    root = Path(args.root)
    engine = create_engine(args.url)
    inner = RegionRouter.from_settings(local_regions(root), StorageSettings(), clock=clock)
    stores = RegionRouter({r: SlowDeletes(inner.store(r), args.delete_delay_ms / 1000) for r in inner.regions})  # type: ignore[misc]
    keyrings = new_keyrings(root / "keyring", clock)
    settings = RetentionSettings(purge_batch=20, blob_delete_concurrency=4)
    # Appends carry the world's entry key (tests/retention/conftest.py built_world), as a replica's would.
    data_dir = root / "data"
    mac_keys = build_entry_mac_keys(AuditSettings(signing_key_dir=data_dir / "audit-keys"), data_dir)
    factory = bind_entry_mac(create_session_factory(engine), mac_keys)
    purger = ReportingPurger(session_factory=factory, clock=clock, keyrings=keyrings,
                             stores=stores, settings=settings, lifetime=LIFETIME,
                             metrics=RetentionMetrics(CollectorRegistry()), owner=args.name)
    await purger.due_buckets(purge_cutoff(clock.now(), LIFETIME, settings.purge_lead))  # connect, warm up
    print(json.dumps({"name": args.name, "ready": True}), flush=True)  # noqa: T201
    await asyncio.to_thread(sys.stdin.readline)  # both replicas start together
    try:
        while True:
            result = await purger.run()
            print(json.dumps({"name": args.name, "run": asdict(result)}), flush=True)  # noqa: T201
            if not await purger.due_buckets(purge_cutoff(clock.now(), LIFETIME, settings.purge_lead)):
                break
            await asyncio.sleep(0.05)
    finally:
        await inner.close()
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--now", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--delete-delay-ms", type=float, default=100.0)
    asyncio.run(main(parser.parse_args()))
