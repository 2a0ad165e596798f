"""Scale-out: two `voicelog serve` replicas on one PostgreSQL database and one Azurite per region.

The replicas share nothing but the production shared state (database, blob stores, the KEK keyring that
stands in for Key Vault, the dev issuer's key that stands in for Entra ID) and the admin token. Each test
starts its own pair of processes, because some of them kill one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app import migrate
from app.capture.models import Recording
from app.capture.reader import read_recording
from app.clock import SystemClock
from app.db import create_engine, create_session_factory
from app.regions import RegionSettings
from app.storage.router import RegionRouter
from app.storage.settings import StorageSettings
from app.vault.factory import build_keyrings
from app.vault.settings import VaultSettings
from tests.fixtures.blob import AzuriteRegions
from tests.fixtures.database import create_pg_database, drop_pg_database, worker_id

pytestmark = pytest.mark.xdist_group("scale_out")

ROOT = Path(__file__).resolve().parents[2]
VOICELOG = [sys.executable, "-m", "app.cli_main"]
ADMIN_TOKEN = "scale-out-admin-" + secrets.token_hex(8)
STALE_AFTER_S = 3.0
DRAIN_TIMEOUT_S = 2.0
ECHO = "/voice-live/realtime?api-version=2026-07-15&x-standin-mode=echo"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def region_json(regions: list[RegionSettings]) -> str:
    out = []
    for region in regions:
        item: dict[str, Any] = region.model_dump(mode="json", exclude_none=True)
        if region.blob_connection_string is not None:
            item["blob_connection_string"] = region.blob_connection_string.get_secret_value()
        out.append(item)
    return json.dumps(out)


@dataclass
class Replica:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, resource: str) -> str:
        return f"ws://127.0.0.1:{self.port}/resources/{resource}{ECHO}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@dataclass
class Cluster:
    """The shared state, and the replicas started on it."""

    env: dict[str, str]
    work: Path
    database_url: str
    regions: list[RegionSettings]
    master_key: str
    standin_port: int
    replicas: list[Replica] = field(default_factory=list)

    async def start_replica(self, name: str) -> Replica:
        port = free_port()
        log = self.work / f"{name}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen([*VOICELOG, "serve", "--port", str(port)], env=self.env, cwd=ROOT,
                                       stdout=sink, stderr=subprocess.STDOUT)
        replica = Replica(name, port, process, log)
        self.replicas.append(replica)
        async with httpx.AsyncClient() as client:
            for _ in range(400):
                try:
                    if (await client.get(f"{replica.http}/readyz")).status_code == 200:
                        return replica
                except httpx.TransportError:
                    pass
                if process.poll() is not None:
                    break
                await asyncio.sleep(0.05)
        raise AssertionError(f"replica {name} did not become ready:\n{replica.output()}")

    def token(self, subject: str, role: str, tenant: str | None = None) -> dict[str, str]:
        """A bearer token from `voicelog dev token`, on the dev issuer key every replica shares."""
        extra = ["--tenant", tenant] if tenant else []
        out = subprocess.run([*VOICELOG, "dev", "token", "--as", subject, "--role", role, *extra], env=self.env,
                             cwd=ROOT, check=True, capture_output=True, text=True)
        return {"Authorization": f"Bearer {out.stdout.strip().splitlines()[-1]}"}

    def stop_all(self) -> None:
        for replica in self.replicas:
            if replica.process.poll() is None:
                replica.process.kill()
            replica.process.wait(15)
        self.replicas.clear()


@pytest.fixture(scope="module")
def cluster(azurite: AzuriteRegions, request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("scale-out")
    db_name = f"voicelog_scale_{worker_id(request.config)}"
    database_url = create_pg_database(db_name)
    migrate.upgrade(database_url)
    regions = azurite.region_settings(container=f"scale{secrets.token_hex(6)}")
    master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    standin_port = free_port()
    env = {
        **os.environ,
        "VOICELOG_DATA_DIR": str(work / "data"),
        "VOICELOG_DATABASE_URL": database_url,
        "VOICELOG_REGIONS": region_json(regions),
        "VOICELOG_ADMIN_TOKEN": ADMIN_TOKEN,
        "VOICELOG_IDENTITY__DEV_ISSUER_ENABLED": "true",
        "VOICELOG_IDENTITY__DEV_ISSUER_KEY_DIR": str(work / "dev-issuer"),
        "VOICELOG_VAULT__LOCAL_KEYRING_DIR": str(work / "keyring"),
        "VOICELOG_VAULT__LOCAL_MASTER_KEY": master_key,
        "VOICELOG_STORAGE__CREATE_CONTAINERS": "true",
        "VOICELOG_STANDIN_ENABLED": "false",
        "VOICELOG_DEMO_RESOURCE": "false",
        "VOICELOG_CONSENT_REFRESH_S": "0.2",
        "VOICELOG_RELAY_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
        "VOICELOG_CAPTURE__STALE_AFTER_S": str(STALE_AFTER_S),
        "VOICELOG_CAPTURE__HEARTBEAT_S": "0.5",
        "VOICELOG_CAPTURE__SEGMENT_SECONDS": "0.5",
        "VOICELOG_CAPTURE__TICK_S": "0.05",
        "VOICELOG_LOG_LEVEL": "INFO",
    }
    for name in ("VOICELOG_PORT", "VOICELOG_HOST"):
        env.pop(name, None)
    standin = subprocess.Popen([*VOICELOG, "standin", "--port", str(standin_port)], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield Cluster(env, work, database_url, regions, master_key, standin_port)
    finally:
        standin.kill()
        standin.wait(10)
        drop_pg_database(db_name)


@pytest.fixture
async def pair(cluster: Cluster) -> AsyncIterator[tuple[Replica, Replica]]:
    """Replica a, then b (one after the other: the first start creates the dev issuer's key)."""
    try:
        a = await cluster.start_replica("a")
        b = await cluster.start_replica("b")
        yield a, b
    finally:
        cluster.stop_all()


@dataclass
class Customer:
    resource: str
    headers: dict[str, str]


async def recorded_resource(cluster: Cluster, via: Replica, region: str = "westeurope") -> Customer:
    """A resource under an active consent, set up through one replica (every API call is replica-agnostic)."""
    tag = secrets.token_hex(4)
    resource, tenant = f"scale-{tag}", f"tenant-{tag}"
    ticketing = await asyncio.to_thread(cluster.token, "svc-ticketing", "ticketing")
    customer = await asyncio.to_thread(cluster.token, f"admin-{tag}", "customer_admin", tenant)
    async with httpx.AsyncClient(base_url=via.http) as client:
        created = await client.post("/admin/resources", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                                    json={"name": resource, "region": region, "owner_tenant": tenant,
                                          "upstream_endpoint": f"ws://127.0.0.1:{cluster.standin_port}"})
        assert created.status_code == 201, created.text
        ticket = await client.post("/tickets", headers=ticketing,
                                   json={"resource": resource, "external_ref": f"INC-{tag}", "engineers": ["alice"]})
        assert ticket.status_code == 201, ticket.text
        consent = await client.post(f"/customer/resources/{resource}/consents", headers=customer,
                                    json={"ticket_id": ticket.json()["id"]})
        assert consent.status_code == 201, consent.text
    await asyncio.sleep(1.0)  # every replica's consent cache reloads every 0.2 s
    return Customer(resource, customer)


async def talk(ws: ClientConnection, marker: str, frames: int) -> None:
    for seq in range(frames):
        message = json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(
            f"{marker}-{seq:04d}".encode()).decode()})
        await ws.send(message)
        assert await asyncio.wait_for(ws.recv(), 5) == message
        await asyncio.sleep(0.02)


async def listing(replica: Replica, customer: Customer) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=replica.http) as client:
        response = await client.get(f"/customer/resources/{customer.resource}/recordings", headers=customer.headers)
    assert response.status_code == 200, response.text
    return {r["request_id"]: r for r in response.json()}


async def settled(replica: Replica, customer: Customer, request_id: str, *, timeout: float) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        row = (await listing(replica, customer)).get(request_id)
        if row is not None and row["state"] != "recording":
            return row
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{request_id} still {row and row['state']} after {timeout} s:\n{replica.output()}")
        await asyncio.sleep(0.2)


async def payloads_read_by_a_third_replica(cluster: Cluster, request_id: str, *, complete: bool = True
                                           ) -> list[bytes]:
    """Open the recording with nothing but the shared state: database row, blob store, keyring (C3 AAD)."""
    engine = create_engine(cluster.database_url)
    stores = RegionRouter.from_settings(cluster.regions, StorageSettings(), clock=SystemClock())
    keyrings = build_keyrings(
        VaultSettings(local_keyring_dir=cluster.work / "keyring", local_master_key=SecretStr(cluster.master_key)),
        keyvault_urls={r.name: None for r in cluster.regions}, data_dir=cluster.work / "data", clock=SystemClock())
    try:
        async with create_session_factory(engine)() as session:
            row = (await session.execute(select(Recording).where(Recording.request_id == request_id))).scalar_one()
        contents = await read_recording(row, keyrings=keyrings, stores=stores)
        assert contents.complete is complete
        return [frame.payload for frame in contents.frames]
    finally:
        await keyrings.aclose()
        await stores.close()
        await engine.dispose()


async def test_sessions_recorded_by_either_replica_are_listed_and_readable_through_the_other(
    cluster: Cluster, pair: tuple[Replica, Replica]
) -> None:
    a, b = pair
    customer = await recorded_resource(cluster, via=a)
    request_ids: dict[str, str] = {}
    for replica in (a, b):
        marker = f"said-through-{replica.name}-{secrets.token_hex(4)}"
        async with connect(replica.ws(customer.resource)) as ws:
            request_ids[replica.name] = ws.response.headers["x-ms-request-id"]
            await talk(ws, marker, frames=20)
        row = await settled(a if replica is b else b, customer, request_ids[replica.name], timeout=15)
        assert row["state"] == "complete", row
        payloads = await payloads_read_by_a_third_replica(cluster, request_ids[replica.name])
        assert sum(marker.encode() in base64.b64decode(json.loads(p)["audio"]) for p in payloads
                   if p.startswith(b"{")) == 2 * 20  # both directions, every frame
    assert (await listing(a, customer)).keys() == (await listing(b, customer)).keys() == set(request_ids.values())


async def test_sigkill_mid_session_leaves_the_recording_closed_as_incomplete_by_the_survivor(
    cluster: Cluster, pair: tuple[Replica, Replica]
) -> None:
    a, b = pair
    customer = await recorded_resource(cluster, via=b)
    async with connect(a.ws(customer.resource)) as ws:
        request_id = ws.response.headers["x-ms-request-id"]
        await talk(ws, "before-the-crash", frames=30)
        assert (await listing(b, customer))[request_id]["state"] == "recording"
        a.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(a.process.wait, 10)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    killed_at = asyncio.get_running_loop().time()
    row = await settled(b, customer, request_id, timeout=STALE_AFTER_S * 4)
    assert row["state"] == "incomplete"
    assert row["incomplete_reason"] == "relay_restarted"
    assert asyncio.get_running_loop().time() - killed_at >= STALE_AFTER_S * 0.5  # closed by staleness, not luck
    # What the dead replica had stored stays readable, up to its last durable segment.
    payloads = await payloads_read_by_a_third_replica(cluster, request_id, complete=False)
    assert any(b"before-the-crash" in base64.b64decode(json.loads(p)["audio"]) for p in payloads
               if p.startswith(b"{"))


async def test_sigterm_drains_live_sessions_while_the_other_replica_takes_new_ones(
    cluster: Cluster, pair: tuple[Replica, Replica]
) -> None:
    a, b = pair
    customer = await recorded_resource(cluster, via=a)
    async with connect(b.ws(customer.resource)) as ws:
        request_id = ws.response.headers["x-ms-request-id"]
        await talk(ws, "before-the-drain", frames=5)
        b.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        # The listener closes at once: the readiness probe fails and no new call reaches b.
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"{b.http}/readyz")
        await talk(ws, "during-the-drain", frames=5)  # inside the drain window the call goes on
        async with connect(a.ws(customer.resource)) as other:  # the load balancer sends new calls to a
            await talk(other, "on-the-other-replica", frames=3)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), DRAIN_TIMEOUT_S + 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001
    assert await asyncio.to_thread(b.process.wait, 20) in (0, -signal.SIGTERM)
    row = await settled(a, customer, request_id, timeout=10)
    assert row["state"] == "complete", row  # a drained session is a finished session, not a crashed one
    payloads = await payloads_read_by_a_third_replica(cluster, request_id)
    assert any(b"during-the-drain" in base64.b64decode(json.loads(p)["audio"]) for p in payloads
               if p.startswith(b"{"))

