"""Scale-out: two `voicelog serve` replicas on one PostgreSQL database and one Azurite per region.

The replicas share nothing but the production shared state (database, blob stores, the KEK keyring that
stands in for Key Vault, the dev issuer's key that stands in for Entra ID, the data directory with the audit
signing keys and checkpoint export) and the admin token. Each test starts its own pair of processes, because
some of them kill one. Both replicas always run the scheduled jobs (purge, audit chain keeper), as in the
Helm chart; the last two tests check that this work is done once, not once per replica.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import func, or_, select
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app import migrate
from app.audit.actions import AuditAction, Subjects, detail_time, kek_bucket
from app.audit.checkpoints import Checkpoint, FileCheckpointSink, list_checkpoints
from app.audit.entry_mac import bind_entry_mac, build_entry_mac_keys
from app.audit.models import AuditEntryRow, AuditInboxRow
from app.audit.service import append_entry, read_chain_head
from app.audit.settings import AuditSettings
from app.capture.models import Recording
from app.capture.reader import read_recording
from app.clock import ManualClock, SystemClock
from app.db import create_engine, create_session_factory
from app.regions import RegionSettings
from app.retention.models import RetentionBucket
from app.retention.policy import bucket_hour
from app.storage.layout import RecordingKey
from app.storage.router import RegionRouter
from app.storage.settings import StorageSettings
from app.vault.datakey import DataKey
from app.vault.envelope import WrappedKey, create_data_key
from app.vault.factory import build_keyrings
from app.vault.segments import SegmentWriter
from app.vault.settings import VaultSettings
from tests.fixtures.blob import AzuriteRegions
from tests.fixtures.database import create_pg_database, drop_pg_database, worker_id
from tests.fixtures.relay import LOADED_MACHINE_ENV
from tests.retention.world import RECORDER, REGIONS, Copy, World, marker_plaintext

pytestmark = [pytest.mark.xdist_group("scale_out"), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
VOICELOG = [sys.executable, "-m", "app.cli_main"]
ADMIN_TOKEN = "scale-out-admin-" + secrets.token_hex(8)
STALE_AFTER_S = 3.0
DRAIN_TIMEOUT_S = 5.0  # a drained call must still get words in on a slow, loaded machine
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

    async def start_replica(self, name: str, env: Mapping[str, str] | None = None) -> Replica:
        """`voicelog serve` on the shared state; `env` adds settings for this replica only."""
        port = free_port()
        log = self.work / f"{name}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen([*VOICELOG, "serve", "--port", str(port)], env={**self.env, **(env or {})},
                                       cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
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
        # One process per replica, as these tests mean it (a killed replica is a crashed process); several
        # worker processes in one replica are tests/test_workers.py's.
        "VOICELOG_WORKERS": "1",
        **LOADED_MACHINE_ENV,
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
    probes: set[str] = field(default_factory=set)  # the sessions that showed each replica records (settled)


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
    recorded = Customer(resource, customer)
    for replica in cluster.replicas:  # each learns of the consent on its own reload (every 0.2 s)
        probe = await recorded_through(replica, resource, timeout=30)
        await settled(replica, recorded, probe, timeout=15)
        recorded.probes.add(probe)
    return recorded


async def recorded_through(replica: Replica, resource: str, *, timeout: float) -> str:
    """A short probe session through `replica`, again until the replica records one (its consent cache has
    the consent, as its `relay.session.opened` log line says); the probe's request ID."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    tries: list[str] = []
    while True:
        try:
            async with connect(replica.ws(resource)) as ws:
                request_id = ws.response.headers["x-ms-request-id"]
                await talk(ws, "probe", frames=1)  # the session is opened (and logged) before a frame is relayed
        except InvalidStatus as exc:  # its resource directory does not know the resource yet
            tries.append(f"refused {exc.response.status_code}")
        else:
            opened = [r for r in logged(replica, "relay.session.opened") if r.get("request_id") == request_id]
            if opened and opened[-1].get("recording") is True:
                return request_id
            tries.append(f"{request_id} recording={opened[-1].get('recording') if opened else 'not logged'}")
        if loop.time() > deadline:
            raise AssertionError(f"{replica.name} did not record a session of {resource} within {timeout} s: "
                                 f"{tries[-5:]}\n{replica.output()}")
        await asyncio.sleep(0.1)


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
    listed = set(request_ids.values()) | customer.probes
    assert (await listing(a, customer)).keys() == (await listing(b, customer)).keys() == listed


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


async def refuses_connections(replica: Replica) -> bool:
    """True once a new connection is refused; until then /readyz may still answer (200 before the signal is
    handled, 503 while draining)."""
    async with httpx.AsyncClient() as client:  # a new connection each time: a kept-alive one proves nothing
        try:
            await client.get(f"{replica.http}/readyz")
        except httpx.ConnectError:
            return True
    return False


async def test_sigterm_drains_live_sessions_while_the_other_replica_takes_new_ones(
    cluster: Cluster, pair: tuple[Replica, Replica]
) -> None:
    a, b = pair
    customer = await recorded_resource(cluster, via=a)
    async with connect(b.ws(customer.resource)) as ws:
        request_id = ws.response.headers["x-ms-request-id"]
        await talk(ws, "before-the-drain", frames=5)
        b.process.send_signal(signal.SIGTERM)
        # The listener closes first: the readiness probe fails and no new call reaches b.
        await poll("b refusing connections after SIGTERM", lambda: refuses_connections(b), timeout=DRAIN_TIMEOUT_S,
                   replicas=(b,))
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



# --- the scheduler on both replicas: purge and checkpoints exactly once --------------------------------------

PURGE_EVERY_S = 10
CHECKPOINT_EVERY = timedelta(seconds=1.5)
SCHEDULER_ENV = {
    # Both replicas run the scheduler (the default); short periods so the test sees several rounds.
    "VOICELOG_RETENTION__PURGE_EVERY_S": str(PURGE_EVERY_S),
    "VOICELOG_RETENTION__PENDING_BLOBS_EVERY_S": str(PURGE_EVERY_S),
    "VOICELOG_RETENTION__PURGE_BATCH": "4",  # a bucket's rows go in several batches, each claimed
    "VOICELOG_AUDIT__CHECKPOINT_EVERY_MINUTES": str(CHECKPOINT_EVERY.total_seconds() / 60),
}
EXPIRED_BUCKET_HOURS = 3
PER_EXPIRED_BUCKET = 6


@contextlib.asynccontextmanager
async def scheduling_pair(cluster: Cluster) -> AsyncIterator[tuple[Replica, Replica]]:
    """Replicas a and b, both running the retention scheduler and the audit chain keeper at short periods."""
    try:
        a = await cluster.start_replica("sched-a", SCHEDULER_ENV)
        b = await cluster.start_replica("sched-b", SCHEDULER_ENV)
        yield a, b
    finally:
        cluster.stop_all()


@contextlib.asynccontextmanager
async def shared_state(cluster: Cluster, clock: ManualClock) -> AsyncIterator[World]:
    """The retention tests' World on the cluster's own database, Azurite stores and KEK keyring."""
    engine = create_engine(cluster.database_url)
    # The tests' own writes (purges, key destruction) are audited with the replicas' entry key, as a third
    # replica's would be; without it they verify as forged.
    mac_keys = build_entry_mac_keys(AuditSettings(), cluster.work / "data", create=False)
    assert mac_keys is not None, "the replicas have made the entry key by now"
    stores = RegionRouter.from_settings(cluster.regions, StorageSettings(), clock=SystemClock())
    keyrings = build_keyrings(
        VaultSettings(local_keyring_dir=cluster.work / "keyring", local_master_key=SecretStr(cluster.master_key)),
        keyvault_urls={r.name: None for r in cluster.regions}, data_dir=cluster.work / "data", clock=clock)
    try:
        yield World(kind="postgresql", url=cluster.database_url, engine=engine,
                    factory=bind_entry_mac(create_session_factory(engine), mac_keys), clock=clock, keyrings=keyrings,
                    stores=stores, data_dir=cluster.work / "data")
    finally:
        await keyrings.aclose()
        await stores.close()
        await engine.dispose()


async def recordings_past_their_30_days(world: World, starts: Sequence[tuple[str, datetime]]) -> list[Copy]:
    """Recordings made as the recorder makes them (data key under the bucket's KEK, sealed blob, row and
    `recording.started`), at times more than 30 days ago. Every key and blob is made before the rows commit,
    all in one transaction: the replicas' purge may tick at any moment and must not meet a half-made one.
    Returns what a backup and a blob snapshot would hold of each."""
    made: list[tuple[DataKey, WrappedKey, RecordingKey, str]] = []
    for region, started_at in starts:  # keys first: the KEKs of these hours are long past their life
        key = RecordingKey(secrets.token_hex(16), started_at)
        dek, wrapped = await create_data_key(world.keyrings.for_region(region), region=region,
                                             request_id=key.request_id, started_at=started_at)
        made.append((dek, wrapped, key, region))
    copies: list[Copy] = []
    rows: list[Recording] = []
    for dek, wrapped, key, region in made:
        with dek:
            writer = SegmentWriter(dek, region=region, request_id=key.request_id)
            blob = writer.header + bytes(writer.seal(marker_plaintext(key.request_id), final=True))
        store = world.stores.store(region)
        await store.create(key)
        await store.append(key, blob, offset=0)
        copies.append(Copy(key.request_id, region, key.started_at, wrapped.to_bytes(), blob))
        resource_id, ticket_id, consent_id = world.resources[region]
        rows.append(Recording(
            request_id=key.request_id, resource_id=resource_id, region=region, ticket_id=ticket_id,
            consent_id=consent_id, started_at=key.started_at, bucket_start=key.hour,
            wrapped_dek=wrapped.to_bytes(), blob_name=key.name, state="complete",
            ended_at=key.started_at + timedelta(seconds=30), segments=1, heartbeat_at=key.started_at,
        ))
    assert all([await world.opens(c) for c in copies])  # every copy decrypts before the purge
    async with world.factory() as session:
        session.add_all(rows)
        for row in rows:
            await append_entry(
                session=session, clock=world.clock, actor=RECORDER, action=AuditAction.RECORDING_STARTED,
                subjects=Subjects(request_id=row.request_id, resource=row.resource_id, ticket=row.ticket_id),
                detail={"region": row.region, "started_at": detail_time(row.started_at),
                        "kek_bucket": kek_bucket(row.started_at), "consent": row.consent_id},
            )
        await session.commit()
    return copies


async def metric(replica: Replica, name: str, **labels: str) -> float:
    """One replica's own account (its /metrics): the sum of a metric's samples that carry `labels`."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{replica.http}/metrics")
    assert response.status_code == 200, response.text
    return sum(sample.value for family in text_string_to_metric_families(response.text)
               for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


@dataclass(frozen=True, eq=False)
class JobRunner:
    """A process that runs the scheduled jobs (the retention purge, the audit chain keeper): a replica, or one
    worker of one (its samples' and its log records' `worker`)."""

    replica: Replica
    worker: str | None = None

    @property
    def name(self) -> str:
        return self.replica.name if self.worker is None else f"{self.replica.name} worker {self.worker}"

    def _metric(self, name: str, **labels: str) -> Awaitable[float]:
        return metric(self.replica, name, **labels, **({} if self.worker is None else {"worker": self.worker}))

    async def purge_runs(self) -> float:
        return await self._metric("voicelog_scheduler_job_runs_total", job_name="retention.purge", outcome="ok")

    async def purged(self) -> float:
        return await self._metric("voicelog_retention_recordings_purged_total")

    async def checkpoints_signed(self) -> float:
        return await self._metric("voicelog_audit_checkpoints_signed_total")

    async def keeper_errors(self) -> float:
        return await self._metric("voicelog_audit_keeper_errors_total")

    def logged(self, event: str) -> list[dict[str, Any]]:
        records = logged(self.replica, event)
        return records if self.worker is None else [r for r in records if str(r.get("worker")) == self.worker]


def replicas_of(runners: Sequence[JobRunner]) -> list[Replica]:
    """The distinct replicas the runners live in (two workers of one serve are one replica), in order."""
    return list({id(r.replica): r.replica for r in runners}.values())


def logged(replica: Replica, event: str) -> list[dict[str, Any]]:
    """The replica's structured log records of one event."""
    records = []
    for line in replica.log.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            record: dict[str, Any] = json.loads(line)
            if record.get("event") == event:
                records.append(record)
    return records


async def poll(what: str, check: Callable[[], Awaitable[bool]], *, timeout: float, replicas: Sequence[Replica]
               ) -> None:
    """Wait until `check()` holds; past `timeout` fail with the replicas' logs."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            logs = "\n".join(f"--- {r.name}:\n{r.output()}" for r in replicas)
            raise AssertionError(f"not within {timeout} s: {what}\n{logs}")
        await asyncio.sleep(0.25)


async def _at_least(count: Callable[[], Awaitable[int]], wanted: int) -> bool:
    return await count() >= wanted


async def chain_snapshot(world: World) -> tuple[int, int, list[Checkpoint]]:
    """(queued entries, chain head seq, every stored checkpoint)."""
    async with world.factory() as session:
        queued = (await session.execute(select(func.count()).select_from(AuditInboxRow))).scalar_one()
        head = await read_chain_head(session)
        checkpoints = await list_checkpoints(session)
    return int(queued), head.seq, checkpoints


async def sealed(world: World) -> bool:
    """Nothing queued, and the newest checkpoint signs the chain's head."""
    queued, head, checkpoints = await chain_snapshot(world)
    return queued == 0 and bool(checkpoints) and checkpoints[-1].head_seq == head


async def audit_verify(cluster: Cluster) -> dict[str, Any]:
    """`voicelog audit verify --json`, as an auditor runs it against the shared database and export."""
    done = await asyncio.to_thread(subprocess.run, [*VOICELOG, "audit", "verify", "--json"], env=cluster.env,
                                   cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout[done.stdout.index("{"):])
    return result


async def test_recordings_past_30_days_are_purged_once_while_both_replicas_run_the_scheduler(
    cluster: Cluster,
) -> None:
    async with scheduling_pair(cluster) as (a, b):
        await check_purged_once(cluster, [JobRunner(a), JobRunner(b)])


async def check_purged_once(cluster: Cluster, runners: Sequence[JobRunner]) -> None:
    """Recordings past their 30 days, in several long-past hours of every region, are purged while each of
    `runners` runs the purge: each recording and each data key once, each hour's KEK once, as the chain, the
    runners' own counts and the stores all say, and the chain verifies with every purge entry sealed."""
    replicas = replicas_of(runners)
    first_hour = bucket_hour(datetime.now(UTC) - timedelta(days=31, hours=EXPIRED_BUCKET_HOURS))
    starts = [(region, first_hour + timedelta(hours=h, minutes=7 * n, seconds=1))
              for h in range(EXPIRED_BUCKET_HOURS) for region in REGIONS for n in range(PER_EXPIRED_BUCKET)]
    buckets = {(region, kek_bucket(started_at)) for region, started_at in starts}
    clock = ManualClock(max(s for _, s in starts))  # the recorder's time when these were made
    async with shared_state(cluster, clock) as world:
        await world.seed()

        async def each_purged_once() -> bool:
            return all([await r.purge_runs() >= 1 for r in runners])

        # A runner's first purge also sweeps the keyring for expired KEKs (then once an hour): the KEKs made
        # below for long-past hours must not meet that sweep before their rows exist.
        await poll("a first purge run by each runner", each_purged_once, timeout=PURGE_EVERY_S * 4,
                   replicas=replicas)
        copies = await recordings_past_their_30_days(world, starts)
        ids = {c.request_id for c in copies}

        async def purged_and_destroyed() -> bool:
            async with world.factory() as session:
                left = (await session.execute(select(func.count()).select_from(Recording).where(
                    Recording.request_id.in_(ids),
                    or_(Recording.shredded_at.is_(None), Recording.blob_deleted_at.is_(None))))).scalar_one()
                keks = (await session.execute(select(RetentionBucket.region, RetentionBucket.bucket_start).where(
                    RetentionBucket.kek_destroyed_at.is_not(None)))).all()
            return left == 0 and buckets <= {(region, kek_bucket(start)) for region, start in keks}

        await poll("every expired recording purged and every KEK destroyed", purged_and_destroyed,
                   timeout=PURGE_EVERY_S * 6, replicas=replicas)
        # Every runner gets another go at the same buckets; nothing may be done twice then either.
        runs = [await r.purge_runs() for r in runners]

        async def each_ran_again() -> bool:
            return all([await r.purge_runs() > before for r, before in zip(runners, runs, strict=True)])

        await poll("a purge run by each runner after the purge", each_ran_again, timeout=PURGE_EVERY_S * 4,
                   replicas=replicas)
        await poll("the purge's audit entries chained and sealed by a checkpoint", lambda: sealed(world),
                   timeout=30, replicas=replicas)

        # The auditor's check, from the chain: one purge and one DEK destruction per recording, one KEK per bucket.
        purges = [(rid, json.loads(d)) for rid, d in await world.entries(AuditAction.RECORDING_PURGED) if rid in ids]
        assert Counter(rid for rid, _ in purges) == Counter(ids)  # a runner purging again would make it 2
        assert {d["reason"] for _, d in purges} == {"retention"}
        assert min(d["age_s"] for _, d in purges) > 30 * 24 * 3600
        keys = [(rid, json.loads(d)) for rid, d in await world.entries(AuditAction.KEY_DESTROYED)]
        assert Counter(rid for rid, d in keys if d["key_kind"] == "dek" and rid in ids) == Counter(ids)
        keks = Counter((d["region"], d["bucket"]) for _, d in keys if d["key_kind"] == "kek")
        assert {bucket: keks[bucket] for bucket in buckets} == dict.fromkeys(buckets, 1)
        # The runners' own accounts agree: together they purged each recording once.
        purged_by = {r.name: await r.purged() for r in runners}
        assert sum(purged_by.values()) == len(ids), purged_by
        # And what they destroyed is gone: no blob left, no backup or snapshot of one decrypts.
        assert not [c.request_id for c in copies
                    if await world.stores.store(c.region).exists(RecordingKey(c.request_id, c.started_at))]
        assert not [c.request_id for c in copies if await world.opens(c)]

        # The chain verifies, signed checkpoints included, and seals every purge entry.
        async with world.factory() as session:
            last_purge_seq = (await session.execute(select(func.max(AuditEntryRow.seq)).where(
                AuditEntryRow.action.in_([AuditAction.RECORDING_PURGED.value, AuditAction.KEY_DESTROYED.value]),
            ))).scalar_one()
        verified = await audit_verify(cluster)
        assert verified["ok"], verified
        assert verified["sealed_through"] >= last_purge_seq


async def test_audit_checkpoints_are_signed_once_per_period_while_both_replicas_keep_the_chain(
    cluster: Cluster,
) -> None:
    async with scheduling_pair(cluster) as (a, b):
        await check_checkpoints_once(cluster, [JobRunner(a), JobRunner(b)])


async def check_checkpoints_once(cluster: Cluster, runners: Sequence[JobRunner], wanted: int = 6) -> None:
    """Entries arrive through each of the runners' ports in turn while every runner's chain keeper runs, until
    `wanted` periods have passed: each period is signed once (one checkpoint per head, never two within a
    period, the last entries sealed), by exactly one runner by their own counts and logs, announced once in the
    chain by the entry it seals and exported once, with no keeper round failing; and the chain verifies."""
    replicas = replicas_of(runners)
    async with shared_state(cluster, ManualClock(datetime.now(UTC))) as world:
        customer = await recorded_resource(cluster, via=replicas[0])
        ticketing = await asyncio.to_thread(cluster.token, "svc-ticketing", "ticketing")
        # Start from a sealed chain: nothing is signed until new entries arrive, so counts start clean.
        await poll("the set-up's entries sealed", lambda: sealed(world), timeout=30, replicas=replicas)
        signed_before = sum([await r.checkpoints_signed() for r in runners])
        _, _, before = await chain_snapshot(world)
        start = before[-1].number if before else 0

        # Entries arrive through every port while every keeper runs, until several periods have passed.
        async with httpx.AsyncClient() as client:
            fed = 0
            deadline = asyncio.get_running_loop().time() + 60 * CHECKPOINT_EVERY.total_seconds()
            while len((await chain_snapshot(world))[2]) < len(before) + wanted:
                via = replicas[fed % len(replicas)]
                created = await client.post(f"{via.http}/tickets", headers=ticketing, json={
                    "resource": customer.resource, "external_ref": f"INC-cp-{fed}", "engineers": []})
                assert created.status_code == 201, created.text
                fed += 1
                assert asyncio.get_running_loop().time() < deadline, f"fewer than {wanted} checkpoints signed"
                await asyncio.sleep(0.1)
        # Once entries stop, the next period seals what is left, and then nothing more is signed.
        await poll("the last entries sealed by a checkpoint", lambda: sealed(world), timeout=30, replicas=replicas)
        _, head, checkpoints = await chain_snapshot(world)
        new = [c for c in checkpoints if c.number > start]

        async def signed_by_runners() -> int:
            return int(sum([await r.checkpoints_signed() for r in runners]) - signed_before)

        # The runners count a checkpoint just after it commits: wait for their accounts to catch up.
        await poll("the runners' own count of checkpoints signed", lambda: _at_least(signed_by_runners, len(new)),
                   timeout=10, replicas=replicas)
        signed_by = await signed_by_runners()
        keeper_errors = {r.name: await r.keeper_errors() for r in runners}
        signers: dict[int, list[str]] = {}
        for runner in runners:
            for record in runner.logged("audit.checkpoint.signed"):
                signers.setdefault(int(record["checkpoint"]), []).append(runner.name)
        async with world.factory() as session:
            signed_entries = (await session.execute(select(AuditEntryRow.seq, AuditEntryRow.detail).where(
                AuditEntryRow.action == AuditAction.CHECKPOINT_SIGNED.value))).all()
    exported = await FileCheckpointSink(cluster.work / "data" / "audit-checkpoints.jsonl").read_all()

    who = {c.number: signers.get(c.number, []) for c in new}
    assert len(new) >= wanted
    assert [c.number for c in checkpoints] == list(range(1, len(checkpoints) + 1))
    # One checkpoint per period: never two for the same head, never two within one period.
    assert all(later.head_seq > earlier.head_seq for earlier, later in itertools.pairwise(new)), who
    gaps = [later.signed_at - earlier.signed_at for earlier, later in itertools.pairwise(new)]
    assert min(gaps) >= CHECKPOINT_EVERY, (gaps, who)
    assert len(new) <= 1 + (new[-1].signed_at - new[0].signed_at) // CHECKPOINT_EVERY
    assert new[-1].head_seq == head  # and the last period's entries were not left unsealed
    # Each is announced once in the chain, by the entry it seals, and exported once.
    announced = Counter(json.loads(detail)["checkpoint"] for _, detail in signed_entries)
    assert announced == Counter(c.number for c in checkpoints)
    announced_at = {seq: json.loads(detail)["checkpoint"] for seq, detail in signed_entries}
    assert all(announced_at.get(c.head_seq) == c.number for c in checkpoints)
    assert [(c.number, c.signature) for c in exported] == [(c.number, c.signature) for c in checkpoints]
    # Each was signed by exactly one runner, by their own accounts, and no keeper round failed.
    assert signed_by == len(new), who
    assert all(len(names) == 1 for names in who.values()), who
    assert sum(keeper_errors.values()) == 0, keeper_errors

    verified = await audit_verify(cluster)
    assert verified["ok"], verified
    assert verified["checkpoints_checked"] >= len(checkpoints)
    assert verified["sealed_through"] >= new[-1].head_seq
