"""Settings: safe defaults, validation, and a reference document that matches the code."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings, settings_reference
from app.relay.settings import RelaySettings

DOC = Path(__file__).resolve().parents[1] / "docs" / "CONFIGURATION.md"


def test_configuration_reference_matches_the_code() -> None:
    assert DOC.read_text() == settings_reference(), "run: voicelog config reference > docs/CONFIGURATION.md"


def test_embedded_defaults_are_sqlite_in_the_data_dir_and_two_local_regions(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.embedded
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path.resolve() / 'voicelog.db'}"
    assert settings.region_names == ["eastus", "westeurope"]
    assert all(r.blob_backend == "local" and r.blob_path == tmp_path / "blobs" / r.name for r in settings.regions)


def test_regions_come_from_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICELOG_REGIONS", '[{"name": "swedencentral", "blob_backend": "azure", '
                                           '"blob_account_url": "https://acct.blob.core.windows.net"}]')
    settings = Settings()
    assert settings.region_names == ["swedencentral"]
    assert settings.regions[0].blob_backend == "azure"


RELAY_KNOBS = {"relay_connect_timeout_s", "relay_idle_timeout_s", "relay_max_session_s", "relay_max_message_bytes",
               "relay_queue_frames", "relay_drain_timeout_s", "relay_ping_interval_s", "relay_max_sessions",
               "relay_busy_loop_lag_s", "relay_data_plane"}


def test_the_relays_knobs_are_its_own_model_and_keep_their_flat_public_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16: RelaySettings declares them, Settings inherits them, so `VOICELOG_RELAY_*` stay what the README,
    the Helm chart and the benchmarks set; the reference lists them all."""
    assert set(RelaySettings.model_fields) == RELAY_KNOBS
    assert issubclass(Settings, RelaySettings)
    assert RELAY_KNOBS.isdisjoint(vars(Settings).get("__annotations__", {}))  # declared once, by the relay
    assert Settings(data_dir=tmp_path).model_dump(include=RELAY_KNOBS) == RelaySettings().model_dump()
    monkeypatch.setenv("VOICELOG_RELAY_MAX_SESSIONS", "7")
    monkeypatch.setenv("VOICELOG_RELAY_DATA_PLANE", "asgi")
    monkeypatch.setenv("VOICELOG_RELAY_PING_INTERVAL_S", "2.5")
    settings = Settings(data_dir=tmp_path)
    assert (settings.relay_max_sessions, settings.relay_data_plane, settings.relay_ping_interval_s) == (7, "asgi", 2.5)
    for name, bad in [("VOICELOG_RELAY_MAX_SESSIONS", "0"), ("VOICELOG_RELAY_DATA_PLANE", "nginx"),
                      ("VOICELOG_RELAY_MAX_MESSAGE_BYTES", "1023")]:
        with monkeypatch.context() as env:
            env.setenv(name, bad)
            with pytest.raises(ValidationError):
                Settings(data_dir=tmp_path)
    rows = [line.split("`")[1] for line in settings_reference().splitlines() if line.startswith("| `VOICELOG_")]
    relay_rows = [f"VOICELOG_{name.upper()}" for name in RelaySettings.model_fields]
    at = rows.index(relay_rows[0])
    assert rows[at:at + len(relay_rows)] == relay_rows  # all listed, together, in its order


@pytest.mark.parametrize("regions", [
    [],
    [{"name": "eastus"}, {"name": "eastus"}],
    [{"name": "East US"}],
])
def test_bad_region_lists_are_refused(regions: list[dict[str, str]]) -> None:
    with pytest.raises(ValidationError):
        Settings(regions=regions)  # type: ignore[arg-type]


def test_embedded_default_signs_in_with_the_dev_issuer_and_production_does_not(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).identity.dev_issuer_enabled
    production = Settings(data_dir=tmp_path, database_url="postgresql+asyncpg://db/voicelog")
    assert not production.identity.dev_issuer_enabled
    assert production.identity.issuer is None  # nothing configured: every authenticated API answers 401


async def test_a_replica_never_holds_more_postgresql_connections_than_its_pool_allows(
    tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    """The connection budget of DEPLOY.md: pool size + overflow per process, whatever the concurrency."""
    import asyncio

    import psycopg
    from sqlalchemy import text

    from app.main import create_app
    from tests.fixtures.database import PG_HOST, PG_PORT, PG_USER, create_pg_database, drop_pg_database, worker_id

    name = f"voicelog_pool_{worker_id(request.config)}"
    url = create_pg_database(name)
    app = create_app(Settings(data_dir=tmp_path, database_url=url, database_pool_size=2, database_max_overflow=1,
                              standin_enabled=False, demo_resource=False))
    engine = app.state.ctx.engine
    seen: list[int] = []

    async def query() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_sleep(0.3)"))

    def backends() -> int:
        with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres") as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone()
            return int(row[0]) if row else 0

    try:
        work = asyncio.gather(*(query() for _ in range(9)))  # three waves of three
        while not work.done():
            seen.append(await asyncio.to_thread(backends))
            await asyncio.sleep(0.05)
        await work
    finally:
        await engine.dispose()
        drop_pg_database(name)
    assert max(seen) == 3


async def test_a_database_that_accepts_and_never_answers_fails_a_connection_in_ten_seconds_not_sixty() -> None:
    """A stalled server (or dropped packets) must not hold each connecting task for asyncpg's 60 s."""
    import asyncio

    from app.db import CONNECT_TIMEOUT_S, create_engine

    held: list[asyncio.StreamWriter] = []

    async def swallow(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # never a byte back

    silent = await asyncio.start_server(swallow, "127.0.0.1", 0)
    engine = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{silent.sockets[0].getsockname()[1]}/x")
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S * 3) as outer:
            with pytest.raises(TimeoutError):
                async with engine.connect():
                    pass
        assert not outer.expired()  # the engine gave up by itself, long before asyncpg's own 60 s
    finally:
        for writer in held:
            writer.close()
        silent.close()
        await engine.dispose()
