"""Call set-up routes from memory: a database outage does not stop calls of known resources (C8), a resource
registered on another replica is found on its first call, and unknown names cannot flood the database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import psycopg
import pytest
from sqlalchemy import event
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app import migrate
from app.clock import SystemClock
from app.db import create_engine, create_session_factory
from app.resources.directory import DirectoryUnavailable, ResourceDirectory
from app.resources.schemas import ResourceCreate
from app.resources.service import add_resource
from tests.fixtures.database import PG_HOST, PG_PORT, PG_USER, create_pg_database, drop_pg_database
from tests.fixtures.relay import (
    STANDIN_API_KEY,
    TEST_ADMIN_TOKEN,
    RelayHandle,
    StandinHandle,
    relay_for,
    relay_settings,
    run_relay,
)

AUTH = {"api-key": STANDIN_API_KEY}
ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}


@pytest.fixture
def private_pg() -> Iterator[tuple[str, str]]:
    """A migrated PostgreSQL database of this test's own, so it can be taken away."""
    name = f"voicelog_dir_{uuid4().hex[:10]}"
    url = create_pg_database(name)
    migrate.upgrade(url)
    yield name, url
    drop_pg_database(name)


def set_reachable(name: str, reachable: bool) -> None:
    """Let clients connect to database `name`, or refuse them and cut every open connection to it."""
    with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres", autocommit=True) as c:
        c.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"true" if reachable else "false"}')
        if not reachable:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


@contextlib.contextmanager
def database_outage(name: str) -> Iterator[None]:
    set_reachable(name, False)
    try:
        yield
    finally:
        set_reachable(name, True)


async def session_created(relay: RelayHandle, resource: str) -> str:
    """Open a session of `resource` and return the first event's type (the stand-in's session.created)."""
    async with connect(f"{relay.ws}/resources/{resource}/voice-live/realtime", additional_headers=AUTH) as ws:
        first: dict[str, Any] = json.loads(await ws.recv())
    return str(first["type"])


async def refusal(relay: RelayHandle, resource: str) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{relay.ws}/resources/{resource}/voice-live/realtime", additional_headers=AUTH):
            pass
    body = json.loads(refused.value.response.body or b"{}")
    return refused.value.response.status_code, str(body.get("code"))


async def readiness(relay: RelayHandle) -> tuple[int, dict[str, str]]:
    async with httpx.AsyncClient(base_url=relay.http) as client:
        response = await client.get("/readyz")
    checks: dict[str, str] = response.json()["checks"]
    return response.status_code, checks


async def settled_readiness(relay: RelayHandle, check: str, state: str) -> tuple[int, dict[str, str]]:
    """/readyz once its background probe has seen `check` in `state` (it refreshes every 2 s)."""
    async with asyncio.timeout(30):  # a hang guard, not a timing assertion
        while True:
            status, checks = await readiness(relay)
            if checks[check] == state:
                return status, checks
            await asyncio.sleep(0.1)


async def test_calls_of_known_resources_are_admitted_while_the_database_is_down(
    tmp_path: Path, standin: StandinHandle, private_pg: tuple[str, str],
) -> None:
    name, url = private_pg
    async with run_relay(relay_settings(tmp_path, url, resource_refresh_s=0.2)) as relay:
        await relay.add_resource("acme", standin.url)
        assert await session_created(relay, "acme") == "session.created"
        with database_outage(name):
            await asyncio.sleep(0.5)  # the refresh loop has failed against the outage at least once
            assert await session_created(relay, "acme") == "session.created"
            # A name not in memory might have been registered meanwhile: "retry", not "no such resource".
            assert await refusal(relay, "nope") == (503, "resources_unavailable")
            status, checks = await settled_readiness(relay, "database", "unreachable")
            assert status == 200
            assert checks["database"] == "unreachable"
            assert checks["resources"] == "ok"
        assert await session_created(relay, "acme") == "session.created"
        assert await refusal(relay, "nope") == (404, "resource_not_found")


async def test_a_relay_started_while_the_database_is_down_is_not_ready_until_it_can_route(
    tmp_path: Path, standin: StandinHandle, private_pg: tuple[str, str],
) -> None:
    name, url = private_pg
    engine = create_engine(url)
    async with create_session_factory(engine)() as session:  # registered before the outage, by another replica
        await add_resource(session=session, clock=SystemClock(), regions=["eastus"],
                           data=ResourceCreate(name="acme", region="eastus", upstream_endpoint=standin.url,
                                               owner_tenant="t1"))
        await session.commit()
    await engine.dispose()
    with database_outage(name):
        async with run_relay(relay_settings(tmp_path, url, resource_refresh_s=0.2)) as relay:
            status, checks = await readiness(relay)
            assert (status, checks["resources"], checks["database"]) == (503, "not_loaded", "unreachable")
            assert await refusal(relay, "acme") == (503, "resources_unavailable")
            set_reachable(name, True)
            deadline = time.monotonic() + 10
            while (await readiness(relay))[0] != 200:
                assert time.monotonic() < deadline, "never became ready after the database came back"
                await asyncio.sleep(0.1)
            assert await session_created(relay, "acme") == "session.created"


async def test_a_resource_registered_elsewhere_is_found_on_its_first_call_and_one_removed_here_is_gone_at_once(
    tmp_path: Path, standin: StandinHandle,
) -> None:
    async with relay_for(tmp_path, standin, resource_refresh_s=300) as relay:  # no periodic reload helps
        assert await session_created(relay, "acme") == "session.created"
        engine = create_engine(relay.settings.resolved_database_url)
        async with create_session_factory(engine)() as session:  # another replica's admin call
            await add_resource(session=session, clock=SystemClock(), regions=["eastus"],
                               data=ResourceCreate(name="beta", region="eastus", upstream_endpoint=standin.url,
                                                   owner_tenant="t1"))
            await session.commit()
        await engine.dispose()
        assert await session_created(relay, "beta") == "session.created"
        async with httpx.AsyncClient(base_url=relay.http) as client:
            assert (await client.delete("/admin/resources/beta", headers=ADMIN)).status_code == 204
        assert await refusal(relay, "beta") == (404, "resource_not_found")
        assert await session_created(relay, "acme") == "session.created"


async def test_a_flood_of_unknown_names_costs_the_database_a_bounded_number_of_reads(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'dir.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    engine = create_engine(url)
    reads: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_: reads.append(statement) if "FROM resources" in statement else None)
    directory = ResourceDirectory(miss_reload_gap_s=0.5)
    try:
        found = await asyncio.gather(*(directory.find(f"nope-{i}", create_session_factory(engine))
                                       for i in range(200)))
    finally:
        await directory.stop()
        await engine.dispose()
    assert found == [None] * 200
    # One read for the first caller, one for everyone who arrived while it ran: not one per caller.
    assert 1 <= len(reads) <= 3


async def test_before_any_load_an_unreachable_database_is_a_clear_failure_not_a_not_found() -> None:
    engine = create_engine("postgresql+asyncpg://nobody@127.0.0.1:9/none")  # the discard port: refused
    directory = ResourceDirectory()
    try:
        with pytest.raises(DirectoryUnavailable):
            await directory.find("acme", create_session_factory(engine))
        assert not directory.loaded
    finally:
        await directory.stop()
        await engine.dispose()


async def test_a_hung_database_holds_neither_start_up_nor_the_readiness_probe(
    tmp_path: Path, standin: StandinHandle,
) -> None:
    """A database that accepts connections and never answers (a stalled server, dropped packets): the
    relay still starts, and /readyz answers within the orchestrator's probe timeout (4 s), not ready."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # never a byte back

    silent = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    settings = relay_settings(tmp_path, f"postgresql+asyncpg://postgres@127.0.0.1:{port}/hung")
    try:
        async with asyncio.timeout(60):  # a start-up held by the database would end here, as a failure
            async with run_relay(settings) as relay:
                async with httpx.AsyncClient(base_url=relay.http, timeout=4.0) as client:
                    ready = await client.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["checks"]["resources"] == "not_loaded"
                assert ready.json()["checks"]["database"] == "unreachable"
                for writer in held:  # let the background loops fail fast, so shutdown is quick
                    writer.close()
                silent.close()
    finally:
        silent.close()


async def test_neither_start_up_nor_a_call_waits_on_a_database_that_stopped_answering() -> None:
    """The directory's own bounds, shorter than any database timeout: start-up goes on after `wait_s`, and
    a name not in memory gets "retry" after `miss_wait_s` while the reload it waits for is still hanging."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    silent = await asyncio.start_server(swallow, "127.0.0.1", 0)
    engine = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{silent.sockets[0].getsockname()[1]}/x")
    directory = ResourceDirectory(miss_wait_s=0.5)
    try:
        async with asyncio.timeout(5) as outer:  # the connect timeout (10 s) would come later
            await directory.start(create_session_factory(engine), wait_s=0.3)
            assert not directory.loaded
            with pytest.raises(DirectoryUnavailable):
                await directory.find("acme", create_session_factory(engine))
        assert not outer.expired()
    finally:
        await directory.stop()
        for writer in held:
            writer.close()
        silent.close()
        await engine.dispose()
