"""A local store short of disk space is reported as `low_space` by /readyz (issue 20, item 4b), which stays
200 (calls do not need the store), and `voicelog_storage_free_bytes` shows the free bytes it found."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import httpx

from app import migrate
from app.regions import RegionSettings
from app.storage.router import RegionRouter
from app.storage.settings import StorageSettings
from tests.fixtures.relay import relay_settings, run_relay
from tests.relay.test_resource_directory import settled_readiness

GiB = 1024**3


async def test_a_local_store_below_its_free_space_threshold_reads_low_space_and_above_it_ok(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    states = {}
    for name, threshold in (("short", free + GiB), ("roomy", 0)):
        router = RegionRouter.from_settings([RegionSettings(name=name, blob_path=tmp_path / name)],
                                            StorageSettings(local_min_free_bytes=threshold))
        await router.prepare()
        states |= await router.check_ready()
        assert 0 < router.free_bytes(name) <= free + GiB
        await router.close()
    assert states == {"short": "low_space", "roomy": "ok"}


async def test_readyz_stays_ready_and_reports_low_space_with_the_free_bytes_metric(tmp_path: Path) -> None:
    """The threshold is set above the disk's real free space, as a nearly full disk would be."""
    (tmp_path / "data").mkdir()
    threshold = shutil.disk_usage(tmp_path).free + GiB
    settings = relay_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
                              storage=StorageSettings(local_min_free_bytes=threshold))
    await asyncio.to_thread(migrate.upgrade, settings.resolved_database_url)
    region = settings.region_names[0]
    async with run_relay(settings) as relay:
        status, checks = await settled_readiness(relay, f"storage:{region}", "low_space")
        async with httpx.AsyncClient(base_url=relay.http) as client:
            ready = (await client.get("/readyz")).json()
            exposition = (await client.get("/metrics")).text
    assert (status, ready["status"]) == (200, "ready")
    assert (checks["relay"], checks["resources"]) == ("ok", "ok")
    found = re.search(rf'^voicelog_storage_free_bytes{{region="{region}"}} (\S+)$', exposition, re.MULTILINE)
    assert found is not None
    assert 0 < float(found.group(1)) < threshold
