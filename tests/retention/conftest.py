"""Retention fixtures: a private committed-to database per test (the purge and the scheduler commit).

SQLite: a copy of the migrated template. PostgreSQL: `voicelog_retention_<worker>_<n>`, cloned from a
template migrated once per worker, dropped after the test.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from app import migrate
from app.audit.entry_mac import bind_entry_mac, build_entry_mac_keys
from app.audit.settings import AuditSettings
from app.clock import ManualClock
from app.db import create_engine, create_session_factory
from app.regions import RegionSettings
from app.storage.router import RegionRouter
from app.storage.settings import StorageSettings
from tests.fixtures.audit import clone_pg_database
from tests.fixtures.database import create_pg_database, drop_pg_database, worker_id
from tests.retention.world import REGIONS, World, new_keyrings

# A Monday 00:00 UTC; 60 simulated days from here stay inside one year.
RETENTION_EPOCH = datetime(2031, 3, 3, 0, 0, tzinfo=UTC)
_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def retention_pg_template(request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"voicelog_retention_tpl_{worker_id(request.config)}"
    migrate.upgrade(create_pg_database(name))
    yield name
    drop_pg_database(name)


@pytest.fixture
def retention_db_url(db_kind: str, migrated_databases: dict[str, str], tmp_path: Path,
                     request: pytest.FixtureRequest) -> Iterator[str]:
    if db_kind == "sqlite":
        target = tmp_path / f"retention-{next(_numbers)}.db"
        shutil.copyfile(migrated_databases["sqlite"].removeprefix("sqlite+aiosqlite:///"), target)
        yield f"sqlite+aiosqlite:///{target}"
        return
    template = request.getfixturevalue("retention_pg_template")
    name = f"voicelog_retention_{worker_id(request.config)}_{next(_numbers)}"
    yield clone_pg_database(template, name)
    drop_pg_database(name)


def local_regions(root: Path) -> list[RegionSettings]:
    return [RegionSettings(name=region, blob_path=root / "blobs" / region) for region in REGIONS]


@pytest.fixture
def retention_clock() -> ManualClock:
    return ManualClock(RETENTION_EPOCH)


@pytest.fixture
async def world(db_kind: str, retention_db_url: str, tmp_path: Path, retention_clock: ManualClock
                ) -> AsyncIterator[World]:
    async with built_world(db_kind, retention_db_url, tmp_path, retention_clock, local_regions(tmp_path)) as built:
        yield built


@contextlib.asynccontextmanager
async def built_world(kind: str, url: str, tmp_path: Path, clock: ManualClock, regions: list[RegionSettings],
                      storage: StorageSettings | None = None) -> AsyncIterator[World]:
    """A World on the given regions' stores; closes stores, keyrings and engine afterwards."""
    engine = create_engine(url)
    stores = RegionRouter.from_settings(regions, storage or StorageSettings(create_containers=True), clock=clock)
    keyrings = new_keyrings(tmp_path / "keyring", clock)
    try:
        await stores.prepare()
        # Appends carry the entry key of the world's audit runtime (World.audit_runtime), as its service's would.
        mac_keys = build_entry_mac_keys(AuditSettings(signing_key_dir=tmp_path / "data" / "audit-keys"),
                                        tmp_path / "data")
        factory = bind_entry_mac(create_session_factory(engine), mac_keys)
        built = World(kind=kind, url=url, engine=engine, factory=factory, clock=clock, keyrings=keyrings,
                      stores=stores, data_dir=tmp_path / "data")
        await built.seed()
        yield built
    finally:
        await stores.close()
        await keyrings.aclose()
        await engine.dispose()
