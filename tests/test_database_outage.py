"""A database outage, refused or hung: /readyz still answers from memory (200 while the relay can relay) and
every API route answers 503 `database_unavailable` with Retry-After instead of a 500 or a hang (issue 20)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from app import migrate
from app.config import Settings
from app.identity.principal import Role
from app.readiness import PROBE_EVERY_S
from tests.fixtures.database import PG_HOST, PG_PORT, create_pg_database, drop_pg_database
from tests.fixtures.identity import MintToken
from tests.fixtures.relay import TEST_ADMIN_TOKEN, RelayHandle, relay_settings, run_relay
from tests.relay.test_resource_directory import database_outage

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}
HANG_GUARD_S = 20  # a hang guard only: far above the 2 s request timeout, far below the probe bound set below


class FreezableProxy:
    """A TCP proxy in front of PostgreSQL. Frozen, it is a stalled server (a SIGSTOPped one): open
    connections carry no byte either way and new ones are accepted and not answered; thawed, what was held
    goes on, as after SIGCONT."""

    def __init__(self) -> None:
        self.frozen = asyncio.Event()
        self._thawed = asyncio.Event()
        self.held: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    def freeze(self) -> None:
        self._thawed = asyncio.Event()
        self.frozen.set()

    def thaw(self) -> None:
        self.frozen.clear()
        self._thawed.set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.held.append(writer)
        if self.frozen.is_set():
            await self._thawed.wait()  # accepted, not answered until thawed
        up_reader, up_writer = await asyncio.open_connection(PG_HOST, PG_PORT)
        self.held.append(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self.frozen.is_set():
                await self._thawed.wait()  # held: the bytes arrive once thawed
            writer.write(data)
            await writer.drain()
        writer.close()  # one side closed: so does the other, as a real connection would

    async def close(self) -> None:
        for writer in self.held:
            writer.close()
        if self.server is not None:
            self.server.close()


@pytest.fixture
def private_pg() -> Iterator[tuple[str, str]]:
    name = f"voicelog_out_{uuid4().hex[:10]}"
    url = create_pg_database(name)
    migrate.upgrade(url)
    yield name, url
    drop_pg_database(name)


@contextlib.asynccontextmanager
async def proxied(url: str) -> AsyncIterator[tuple[FreezableProxy, str]]:
    proxy = FreezableProxy()
    await proxy.start()
    try:
        yield proxy, url.replace(f"{PG_HOST}:{PG_PORT}", f"127.0.0.1:{proxy.port}")
    finally:
        await proxy.close()


async def answers(relay: RelayHandle, requests: list[tuple[str, str, dict[str, str]]]) -> list[httpx.Response]:
    async with asyncio.timeout(HANG_GUARD_S), httpx.AsyncClient(base_url=relay.http, timeout=HANG_GUARD_S) as client:
        return [await client.request(method, path, headers=headers) for method, path, headers in requests]


def representative_routes(mint_token: MintToken) -> list[tuple[str, str, dict[str, str]]]:
    """Admin, tickets and audit: each reads the database through the request's session."""
    ticketing = {"Authorization": f"Bearer {mint_token('ticket-svc', [Role.TICKETING])}"}
    auditor = {"Authorization": f"Bearer {mint_token('audrey', [Role.AUDITOR])}"}
    return [("GET", "/admin/resources", ADMIN), ("GET", f"/tickets/{uuid4().hex}", ticketing),
            ("GET", "/audit/verify", auditor)]


def assert_database_unavailable(responses: list[httpx.Response]) -> None:
    for response in responses:
        assert (response.status_code, response.json()["code"]) == (503, "database_unavailable"), response.url
        assert response.headers["content-type"].startswith("application/problem+json")
        assert int(response.headers["retry-after"]) > 0


async def test_api_routes_answer_a_refused_database_with_503_and_retry_after(
    tmp_path: Path, private_pg: tuple[str, str], identity_settings: object, mint_token: MintToken,
) -> None:
    name, url = private_pg
    routes = representative_routes(mint_token)
    async with run_relay(relay_settings(tmp_path, url, identity=identity_settings)) as relay:
        healthy = await answers(relay, routes[:1])
        assert healthy[0].status_code == 200
        with database_outage(name):  # connections refused, open ones terminated
            assert_database_unavailable(await answers(relay, routes))
        assert (await answers(relay, routes[:1]))[0].status_code == 200


async def test_api_routes_answer_a_hung_database_with_503_within_the_request_timeout(
    tmp_path: Path, private_pg: tuple[str, str], identity_settings: object, mint_token: MintToken,
) -> None:
    _name, url = private_pg
    routes = representative_routes(mint_token)
    # The product's bound, not the loaded-machine one the test run sets (tests/conftest.py).
    bound = Settings.model_fields["database_request_timeout_s"].default
    async with (proxied(url) as (proxy, proxied_url),
                run_relay(relay_settings(tmp_path, proxied_url, identity=identity_settings,
                                         database_request_timeout_s=bound)) as relay):
        assert (await answers(relay, routes[:1]))[0].status_code == 200
        proxy.frozen.set()
        for route in routes:
            started = time.monotonic()
            assert_database_unavailable(await answers(relay, [route]))
            # Within the bound, not just the hang guard. Measured, the first request takes two bounds and the
            # others one (bound 2 s: 4.1, 2.1, 2.1 s; bound 6 s: 8.1, 6.1, 6.1 s); the margin is for a loaded
            # machine, and a bound of 10 s (the test run's) would not pass.
            assert time.monotonic() - started < 2 * bound + 2, route
        await proxy.close()  # let the background loops fail fast, so shutdown is quick


async def test_readyz_answers_from_memory_while_the_database_probe_is_still_hanging(
    tmp_path: Path, private_pg: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The probe's own bound is raised far past the hang guard: a /readyz that waited on it could not answer."""
    _name, url = private_pg
    monkeypatch.setattr("app.readiness.DATABASE_PROBE_TIMEOUT_S", 600.0)
    async with proxied(url) as (proxy, proxied_url), run_relay(relay_settings(tmp_path, proxied_url)) as relay:
        before = (await answers(relay, [("GET", "/readyz", {})]))[0]
        assert (before.status_code, before.json()["checks"]["database"]) == (200, "ok")
        proxy.frozen.set()
        await asyncio.sleep(2 * PROBE_EVERY_S)  # a probe round has started since, and hangs on its 600 s bound
        for _ in range(3):
            ready = (await answers(relay, [("GET", "/readyz", {})]))[0]
            checks = ready.json()["checks"]
            assert ready.status_code == 200
            assert (checks["relay"], checks["resources"]) == ("ok", "ok")
            assert checks["database"] == "ok"  # the last result: no probe has ended since the freeze
        await proxy.close()
