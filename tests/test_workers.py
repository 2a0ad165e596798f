"""Several worker processes in one `voicelog serve` (issue 17): one port, calls spread over the workers, one
/metrics and /readyz for all of them, a dead worker restarted without touching its siblings' calls, a SIGTERM
that leaves nothing behind; a recording made on either worker plays back whole, and the scheduler's jobs run once
per period, not once per worker. Real processes on a real PostgreSQL database; the upstream is a `voicelog
standin` process of its own, so killing a worker never takes a surviving call's upstream with it."""

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
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import psutil
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app import migrate
from app.capture.models import Recording
from app.clock import SystemClock
from app.config import Settings
from app.db import create_engine, create_session_factory
from app.regions import RegionSettings
from app.resources.schemas import ResourceCreate
from app.resources.service import add_resource
from app.server.merged_metrics import END, UNREACHABLE, merge_worker_metrics, worker_exposition
from app.server.siblings import WorkerSlot, WorkerStatus, worker_statuses
from app.server.workers import WorkerCountError, resolve_worker_count
from tests.deploy.test_scale_out import (
    ADMIN_TOKEN,
    SCHEDULER_ENV,
    Cluster,
    JobRunner,
    Replica,
    check_checkpoints_once,
    check_purged_once,
    listing,
    payloads_read_by_a_third_replica,
    recorded_resource,
    region_json,
    settled,
)
from tests.deploy.test_scale_out import talk as talk_frames  # this module has a `talk` of its own
from tests.fixtures.database import create_pg_database, drop_pg_database, pg_url, worker_id
from tests.fixtures.relay import LOADED_MACHINE_ENV
from tests.fixtures.saw import SawPki, run_saw_nginx
from tests.retention.world import REGIONS

# Heavy (three processes per server, each importing the whole app): never beside the scale-out replicas.
pytestmark = [pytest.mark.xdist_group("scale_out"), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
VOICELOG = [sys.executable, "-m", "app.cli_main"]
ECHO = "/voice-live/realtime?x-standin-mode=echo"
DRAIN_TIMEOUT_S = 3.0
READY_WITHIN_S = 60.0  # two cold starts side by side on a loaded 2-core machine
Workers = list[dict[str, Any]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def upstream(request: pytest.FixtureRequest) -> Iterator[str]:
    """A `voicelog standin` process every server here routes resource `acme` to: no worker's death takes it."""
    port = free_port()
    process = subprocess.Popen([*VOICELOG, "standin", "--port", str(port)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + READY_WITHIN_S
    while process.poll() is None and time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    else:
        process.kill()
        raise AssertionError(f"voicelog standin did not listen on {port} (exit {process.poll()})")
    yield f"ws://127.0.0.1:{port}"
    process.kill()
    process.wait(10)


async def register(resource: str, upstream: str, url: str) -> None:
    engine = create_engine(url)
    try:
        async with create_session_factory(engine)() as session:
            await add_resource(session=session, clock=SystemClock(), data=ResourceCreate(
                name=resource, region="eastus", upstream_endpoint=upstream, owner_tenant="t1"),
                regions=["eastus", "westeurope"])
            await session.commit()
    finally:
        await engine.dispose()


@dataclass
class Served:
    """A `voicelog serve` supervisor with two workers; its output goes to a file whose tail explains a failure."""

    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log: Path
    database: str
    env: dict[str, str]  # what it was started with: the CLI commands a test runs against it take the same
    pids: set[int] = field(default_factory=set)  # every process under the supervisor we saw, for the leftovers check

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, resource: str = "acme") -> str:
        return f"ws://127.0.0.1:{self.port}/resources/{resource}{ECHO}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.log.read_text(errors="replace").splitlines()
                 if line.startswith("{")]
        return [line for line in lines if line.get("event") == name]

    def note_children(self) -> None:
        self.pids |= {child.pid for child in psutil.Process(self.process.pid).children(recursive=True)}

    async def workers(self) -> Workers:
        async with httpx.AsyncClient(timeout=5) as client:
            workers: Workers = (await client.get(f"{self.http}/readyz")).json()["workers"]
        return workers

    async def wait_until(self, check: Callable[[Workers], bool], what: str) -> Workers:
        """Poll /readyz's `workers` until `check` holds for them."""
        deadline = time.monotonic() + READY_WITHIN_S
        last: object = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"voicelog serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                workers = await self.workers()
                if check(workers):
                    return workers
                last = workers
            except (httpx.TransportError, KeyError, ValueError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.1)
        raise AssertionError(f"not {what} within {READY_WITHIN_S} s (last: {last}):\n{self.output()}")


def all_ready(workers: Workers) -> bool:
    return len(workers) == 2 and all(w["ready"] for w in workers)


def start_served(upstream: str, work: Path, database: str, extra_env: Mapping[str, str] | None = None, *,
                 acme: bool = True) -> Served:
    """Two workers on a database of their own (the demo resource is seeded with worker 0's stand-in port);
    `extra_env` adds settings (applied last). `acme=False` leaves out resource `acme`, whose audit entry this
    process writes without the service's entry key (`audit verify` would call it forged)."""
    url = create_pg_database(database)
    migrate.upgrade(url)
    if acme:
        asyncio.run(register("acme", upstream, url))
    env = {**os.environ, "VOICELOG_DATABASE_URL": url, "VOICELOG_WORKERS": "2", "VOICELOG_DATA_DIR": str(work / "data"),
           "VOICELOG_STANDIN_ENABLED": "true", "VOICELOG_STANDIN_PORT": str(free_port()),
           "VOICELOG_DEMO_RESOURCE": "true", "VOICELOG_RELAY_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
           "VOICELOG_LOG_LEVEL": "INFO",
           # Small pools: each worker is a process with its own (defaults: up to 35 connections each), and the
           # suite's other PostgreSQL tests share the server's 100 (CI failed with "too many clients" once).
           "VOICELOG_DATABASE_POOL_SIZE": "2", "VOICELOG_DATABASE_MAX_OVERFLOW": "3",
           "VOICELOG_DATABASE_REQUEST_POOL_SIZE": "1", **LOADED_MACHINE_ENV, **(extra_env or {})}
    for each in ("VOICELOG_HOST", "VOICELOG_PORT"):
        env.pop(each, None)
    work.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), work / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([*VOICELOG, "serve", "--port", str(port)], cwd=ROOT, stdout=sink,
                                   stderr=subprocess.STDOUT, env=env)
    served = Served(process, port, work / "data", log, database, env)
    try:
        asyncio.run(served.wait_until(all_ready, "both workers ready"))
        served.note_children()
    except BaseException:
        stop_served(served)
        raise
    return served


def stop_served(served: Served) -> None:
    """SIGTERM, then whatever is left of what we started is killed (a failed test must not leave workers)."""
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGTERM)
        try:
            served.process.wait(DRAIN_TIMEOUT_S + 30)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait(10)
    for pid in leftovers(served.pids):
        psutil.Process(pid).kill()
    drop_pg_database(served.database)


def leftovers(pids: set[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.fixture(scope="module")
def pair(upstream: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the tests that only look (spread, metrics, readiness)."""
    served = start_served(upstream, tmp_path_factory.mktemp("pair"), f"voicelog_workers_{worker_id(request.config)}")
    yield served
    stop_served(served)


@pytest.fixture
def served(upstream: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """A server of the test's own, for the tests that kill or stop it."""
    served = start_served(upstream, tmp_path, f"voicelog_workers_{worker_id(request.config)}_{uuid4().hex[:6]}")
    yield served
    stop_served(served)


async def open_call(url: str) -> ClientConnection:
    """A relayed echo call, proved live by one round trip."""
    ws = await connect(url)
    await ws.send("hello")
    assert await ws.recv() == "hello"
    return ws


def sessions_by_worker(workers: Workers) -> dict[int, int]:
    return {w["index"]: w["active_sessions"] for w in workers}


async def scrape(served: Served) -> str:
    async with httpx.AsyncClient(timeout=5) as client:  # a new connection each time: any worker may answer
        response = await client.get(f"{served.http}/metrics")
    assert response.status_code == 200
    return response.text


async def talk(call: ClientConnection, stop: asyncio.Event) -> None:
    """A caller's audio rate: one 4 KB message every 20 ms, each echoed back."""
    while not stop.is_set():
        await call.send("x" * 4000)
        await call.recv()
        await asyncio.sleep(0.02)


async def test_calls_through_one_port_spread_over_both_workers(pair: Served) -> None:
    """Calls arrive one after the other while the earlier ones talk, as they do in production: the kernel gives
    each to a worker waiting in accept(), and a busier one gets there later. (Idle workers may take a burst of
    calls all on one: only load spreads them.)"""
    calls, stop = [], asyncio.Event()
    talking: list[asyncio.Task[None]] = []
    try:
        for _ in range(10):
            calls.append(await open_call(pair.ws()))
            talking.append(asyncio.create_task(talk(calls[-1], stop)))
            await asyncio.sleep(0.05)
        by_worker = sessions_by_worker(await pair.workers())
        assert sum(by_worker.values()) == 10
        assert min(by_worker.values()) >= 1, by_worker
        families = {f.name: f for f in text_string_to_metric_families(await scrape(pair))}
        gauge = {s.labels["worker"]: s.value for s in families["voicelog_relay_active_sessions"].samples}
        assert gauge == {"0": by_worker[0], "1": by_worker[1]}
    finally:
        stop.set()
        await asyncio.gather(*talking)
        await asyncio.gather(*(call.close() for call in calls))


async def test_metrics_through_one_port_carry_every_workers_samples_once_each(pair: Served) -> None:
    await (await open_call(pair.ws())).close()  # a counter and a histogram with samples on one worker at least
    for _ in range(4):  # whichever worker answers, the scrape is the pod's
        text = await scrape(pair)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        for name in ("voicelog_relay_active_sessions", "voicelog_relay_sessions",
                     "voicelog_relay_added_latency_seconds", "voicelog_event_loop_lag_seconds"):
            assert {s.labels["worker"] for s in families[name].samples} == {"0", "1"}, name
        assert all("worker" in s.labels for f in families.values() for s in f.samples)
        assert {s.labels["worker"]: s.value for s in families[UNREACHABLE].samples} == {"0": 0.0, "1": 0.0}
        typed = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
        helped = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]
        assert len(typed) == len(set(typed)) == len(helped) == len(set(helped))
        assert "voicelog_relay_sessions_total" in typed  # counters keep their suffix, histograms their series
        assert {s.name for s in families["voicelog_relay_added_latency_seconds"].samples} >= {
            "voicelog_relay_added_latency_seconds_bucket", "voicelog_relay_added_latency_seconds_count",
            "voicelog_relay_added_latency_seconds_sum"}


async def test_readyz_lists_each_worker_and_only_worker_0_runs_the_standin(pair: Served) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"{pair.http}/readyz")
    body = response.json()
    assert response.status_code == 200
    assert (body["status"], body["checks"]["relay"], body["checks"]["database"]) == ("ready", "ok", "ok")
    assert body["worker"] in (0, 1)
    assert [w["index"] for w in body["workers"]] == [0, 1]
    pids = {w["pid"] for w in body["workers"]}
    assert len(pids) == 2
    assert pids <= {child.pid for child in psutil.Process(pair.process.pid).children()}
    assert [e["worker"] for e in pair.events("standin.listening")] == [0]
    await (await open_call(pair.ws("demo"))).close()  # the demo resource reaches worker 0's stand-in


async def test_a_killed_worker_is_restarted_while_the_other_workers_call_goes_on(served: Served) -> None:
    calls: dict[int, list[ClientConnection]] = {0: [], 1: []}
    before = sessions_by_worker(await served.workers())
    while not calls[1] and sum(map(len, calls.values())) < 40:  # a call on worker 1, to outlive worker 0
        call = await open_call(served.ws())
        after = sessions_by_worker(await served.workers())
        (landed,) = [i for i in after if after[i] > before[i]]
        calls[landed].append(call)
        before = after
    (survivor, *_) = calls[1]
    pid0 = (await served.workers())[0]["pid"]

    os.kill(pid0, signal.SIGKILL)
    for call in calls[0]:  # worker 0's calls went with it
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(call.recv(), 10)
    await survivor.send("still here")
    assert await survivor.recv() == "still here"
    workers = await served.wait_until(
        lambda ws: all_ready(ws) and ws[0]["pid"] not in (None, pid0), "worker 0 restarted")
    await survivor.send("and now")
    assert await survivor.recv() == "and now"
    assert workers[1]["active_sessions"] == len(calls[1])

    (died,) = served.events("worker.died")
    assert (died["worker"], died["pid"], died["exitcode"]) == (0, pid0, -signal.SIGKILL)
    assert [e["worker"] for e in served.events("standin.listening")] == [0, 0]  # it came back with worker 0
    fresh = await asyncio.gather(*(open_call(served.ws()) for _ in range(4)), open_call(served.ws("demo")))
    await asyncio.gather(*(call.close() for call in [*fresh, *calls[1]]))
    served.note_children()


async def test_sigterm_drains_every_worker_then_exits_0_leaving_no_process(served: Served) -> None:
    call = await open_call(served.ws())
    served.note_children()
    served.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:  # the supervisor's copy of the listener is closed too: new connections are refused, not held
        try:
            async with httpx.AsyncClient(timeout=1) as client:
                await client.get(f"{served.http}/healthz")
        except httpx.ConnectError:
            break
        except (httpx.ReadError, httpx.RemoteProtocolError):
            pass  # accepted into a backlog that closed under it: reset, not served; refusal comes next
        assert time.monotonic() < deadline, "the port still takes connections after SIGTERM"
        await asyncio.sleep(0.05)
    await call.send("still talking")  # inside the drain window the call goes on
    assert await call.recv() == "still talking"
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(call.recv(), DRAIN_TIMEOUT_S + 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001

    assert await asyncio.to_thread(served.process.wait, DRAIN_TIMEOUT_S + 30) == 0
    deadline = time.monotonic() + 10  # the workers are joined; multiprocessing's tracker ends on its own
    while leftovers(served.pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert leftovers(served.pids) == []
    assert len(served.pids) >= 2
    assert list((served.data_dir / "run").iterdir()) == []  # the workers' sockets went with the supervisor


async def test_the_workers_of_a_killed_supervisor_drain_and_exit_on_their_own(served: Served) -> None:
    """SIGKILL cannot be forwarded: each worker sees its parent gone, drains like on SIGTERM and exits."""
    call = await open_call(served.ws())
    workers = {w["pid"] for w in await served.workers()}
    served.process.kill()
    served.process.wait(10)
    with pytest.raises(ConnectionClosed) as closed:  # closed by the drain's end, not by a crash
        await asyncio.wait_for(call.recv(), DRAIN_TIMEOUT_S + 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001
    deadline = time.monotonic() + 20
    while leftovers(workers) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert leftovers(workers) == []
    assert sorted(e["worker"] for e in served.events("worker.orphaned")) == [0, 1]


def test_sqlite_with_two_workers_is_refused_at_start_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "VOICELOG_WORKERS": "2", "VOICELOG_DATA_DIR": str(tmp_path / "data")}
    env.pop("VOICELOG_DATABASE_URL", None)
    done = subprocess.run([*VOICELOG, "serve", "--port", str(free_port())], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: VOICELOG_WORKERS=2 needs PostgreSQL: on SQLite the scheduler's and audit ")
    assert not (tmp_path / "data").exists()  # refused before anything was made or migrated


@pytest.mark.parametrize(("url", "workers", "expected"), [
    (None, None, 1), ("sqlite+aiosqlite:////tmp/x.db", 1, 1), ("postgresql", None, 3), ("postgresql", 5, 5),
    ("postgresql", 1, 1),
])
def test_worker_count_is_one_per_cpu_on_postgresql_and_one_on_sqlite(
    tmp_path: Path, url: str | None, workers: int | None, expected: int,
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=pg_url("x") if url == "postgresql" else url, workers=workers)
    assert resolve_worker_count(settings, cpus=3) == expected


@pytest.mark.parametrize("url", [None, "sqlite+aiosqlite:////tmp/x.db"])
def test_more_than_one_worker_on_sqlite_is_refused(tmp_path: Path, url: str | None) -> None:
    with pytest.raises(WorkerCountError, match="needs PostgreSQL"):
        resolve_worker_count(Settings(data_dir=tmp_path, database_url=url, workers=2), cpus=3)


def worker_registry(things: float) -> CollectorRegistry:
    """A worker's registry with the three kinds of family and the characters the text format escapes (a quote, a
    backslash, a newline, a brace and a line that looks like a family's start) in label values and help."""
    registry = CollectorRegistry()
    counter = Counter("x", "Things.\n# HELP fake line", ["kind"], registry=registry)
    counter.labels('a "b" \\ }\n# HELP x_total 1').inc(things)
    Gauge("y_open", "Open things.", registry=registry).set(things + 1)
    Histogram("z_seconds", "Delays.", buckets=(0.1, 1.0), registry=registry).observe(things / 10)
    return registry


def test_workers_expositions_merge_into_one_that_parses_with_every_sample_labelled_once() -> None:
    merged = merge_worker_metrics({index: worker_exposition(worker_registry(index + 2.0), index)
                                   for index in (0, 1)}).decode()
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    assert [(s.labels["worker"], s.labels["kind"], s.value) for s in families["x"].samples
            if s.name == "x_total"] == [("0", 'a "b" \\ }\n# HELP x_total 1', 2.0),
                                         ("1", 'a "b" \\ }\n# HELP x_total 1', 3.0)]
    assert families["x"].documentation == "Things.\n# HELP fake line"
    assert [(s.labels, s.value) for s in families["y_open"].samples] == [({"worker": "0"}, 3.0),
                                                                        ({"worker": "1"}, 4.0)]
    assert {(s.name, s.labels["worker"]) for s in families["z_seconds"].samples} >= {
        ("z_seconds_count", "0"), ("z_seconds_count", "1"), ("z_seconds_sum", "0"), ("z_seconds_sum", "1")}
    heads = [line.split()[2] for line in merged.splitlines() if line.startswith(("# HELP ", "# TYPE "))]
    assert len(heads) == 2 * len(set(heads))  # one HELP and one TYPE per family, however many workers
    assert "# EOF" not in merged
    assert {s.labels["worker"]: s.value for s in families[UNREACHABLE].samples} == {"0": 0.0, "1": 0.0}


def test_a_worker_that_does_not_answer_or_answers_torn_or_malformed_is_left_out_of_metrics_and_counted(
) -> None:
    torn = worker_exposition(worker_registry(5.0), 3)
    cut_after_a_line = torn[: torn.index(b"\n", len(torn) // 2) + 1]
    other_code = CollectorRegistry()  # a worker on other code: `z_seconds` a summary, not a histogram
    Summary("z_seconds", "Delays.", registry=other_code).observe(0.5)
    answers = {0: worker_exposition(worker_registry(2.0), 0), 1: None, 2: torn[: len(torn) // 2],
               3: cut_after_a_line, 4: b"x_total{kind= garbage",
               5: b"garbage\n" + END, 6: b"# HELP x_total Things.\n" + END,  # malformed, though whole
               7: b"# HELP q Q.\n# TYPE q gauge\ny_open 1.0\n" + END, 8: worker_exposition(other_code, 8),
               9: b"# HELP q Q.\nq 1.0\n" + END, 10: torn[: torn.index(b"# HELP z_seconds")]}  # cut between families
    merged = merge_worker_metrics(answers).decode()
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    assert [(s.labels["worker"], s.value) for s in families["x"].samples if s.name == "x_total"] == [("0", 2.0)]
    assert {s.labels["worker"] for s in families["z_seconds"].samples} == {"0"}
    assert {s.labels["worker"]: s.value for s in families[UNREACHABLE].samples} == {
        "0": 0.0, "1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0, "5": 1.0, "6": 1.0, "7": 1.0, "8": 1.0, "9": 1.0,
        "10": 1.0}


async def test_readyz_reports_a_worker_without_a_socket_as_unreachable(tmp_path: Path) -> None:
    slot = WorkerSlot(index=1, count=3, run_dir=tmp_path)
    own = WorkerStatus(index=1, pid=os.getpid(), ready=True, active_sessions=0)
    statuses = await worker_statuses(slot, own)
    assert statuses == [WorkerStatus.unreachable(0), own, WorkerStatus.unreachable(2)]


# --- recording and the scheduler with two workers in one serve (issue 17) ---------------------------------------
# tests/deploy/test_scale_out.py checks the same for two single-worker replicas; here the two recorders, purges and
# audit chain keepers are sibling processes of one `voicelog serve`. Its set-up and flows are reused: the served
# pair is one replica of a Cluster on shared state the test can open too (database, regional stores, keyring).

FRAMES = 12  # audio messages per recorded call, each echoed back


@pytest.fixture(scope="module")
def recording_pair(upstream: str, request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Cluster]]:
    """Two workers that record (admin token, dev issuer, SAW proxy on loopback, consents reloaded every 0.2 s)
    and run the scheduler at test_scale_out's short periods; the Cluster describes their shared state."""
    work = tmp_path_factory.mktemp("recording-pair")
    regions = [RegionSettings(name=name, blob_path=work / "data" / "blobs" / name) for name in REGIONS]
    master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    env = {"VOICELOG_REGIONS": region_json(regions), "VOICELOG_ADMIN_TOKEN": ADMIN_TOKEN,
           "VOICELOG_IDENTITY__DEV_ISSUER_ENABLED": "true",
           "VOICELOG_IDENTITY__DEV_ISSUER_KEY_DIR": str(work / "dev-issuer"),
           "VOICELOG_VAULT__LOCAL_KEYRING_DIR": str(work / "keyring"), "VOICELOG_VAULT__LOCAL_MASTER_KEY": master_key,
           "VOICELOG_SAW__TRUSTED_PROXIES": '["127.0.0.1/32"]',  # the SAW's nginx, started by the test
           "VOICELOG_CONSENT_REFRESH_S": "0.2", "VOICELOG_CAPTURE__SEGMENT_SECONDS": "0.5",
           "VOICELOG_CAPTURE__TICK_S": "0.05", **SCHEDULER_ENV}
    served = start_served(upstream, work, f"voicelog_workers_{worker_id(request.config)}_rec", env, acme=False)
    replica = Replica("served", served.port, served.process, served.log)
    yield served, Cluster(served.env, work, served.env["VOICELOG_DATABASE_URL"], regions, master_key,
                          standin_port=int(upstream.rsplit(":", 1)[1]), replicas=[replica])
    stop_served(served)


@dataclass
class RecordedCall:
    ws: ClientConnection
    request_id: str
    marker: str
    worker: int  # whose recorder made the recording: its row's `owner` names that worker's process


async def opened_as(served: Served, request_id: str) -> dict[str, Any]:
    """The worker's `relay.session.opened` line of a call (written before its first frame is relayed)."""
    for _ in range(50):
        opened = [e for e in served.events("relay.session.opened") if e.get("request_id") == request_id]
        if opened:
            return opened[-1]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no relay.session.opened for {request_id}:\n{served.output()}")


async def made_by(served: Served, factory: async_sessionmaker[AsyncSession], request_id: str) -> int:
    """The worker whose recorder owns the recording's row while the call goes on (owner: `<host>-<pid>`)."""
    by_owner: dict[str, int] = {f"{os.uname().nodename}-{w['pid']}"[:64]: w["index"] for w in await served.workers()}
    for _ in range(100):
        async with factory() as session:
            owner = (await session.execute(
                select(Recording.owner).where(Recording.request_id == request_id))).scalar_one_or_none()
        if owner is not None:
            assert owner in by_owner, (owner, by_owner)
            return by_owner[owner]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no recording row with an owner for {request_id}:\n{served.output()}")


async def recorded_call(served: Served, replica: Replica, factory: async_sessionmaker[AsyncSession],
                        resource: str) -> RecordedCall | None:
    """A call that talks FRAMES messages and stays open; None if the worker that took it did not record it (its
    caches did not know the resource or its consent yet)."""
    try:
        ws = await connect(replica.ws(resource))
    except InvalidStatus:  # this worker's resource directory does not know the resource yet
        return None
    assert ws.response is not None
    request_id = ws.response.headers["x-ms-request-id"]
    marker = f"w{secrets.token_hex(5)}"  # `<marker>-<seq>` is 16 bytes: whole pcm16 samples
    await talk_frames(ws, marker, frames=FRAMES)
    if (await opened_as(served, request_id)).get("recording") is not True:
        await ws.close()
        return None
    return RecordedCall(ws, request_id, marker, await made_by(served, factory, request_id))


async def calls_recorded_on_both_workers(served: Served, cluster: Cluster, resource: str) -> list[RecordedCall]:
    """Recorded calls, each opened while the earlier ones still talk (load spreads calls over the workers: idle
    ones may take many in a row on one), until each worker has made a recording."""
    (replica,) = cluster.replicas
    engine = create_engine(cluster.database_url)
    factory = create_session_factory(engine)
    started: list[asyncio.Task[RecordedCall | None]] = []
    try:
        while len(started) < 60:
            started.append(asyncio.create_task(recorded_call(served, replica, factory, resource)))
            await asyncio.sleep(0.1)
            made = [task.result() for task in started if task.done()]
            if {call.worker for call in made if call is not None} == {0, 1}:
                break
        calls = [call for call in await asyncio.gather(*started) if call is not None]
    finally:
        await engine.dispose()
    assert {call.worker for call in calls} == {0, 1}, [call.worker for call in calls]
    return calls


def sent(call: RecordedCall) -> list[bytes]:
    """The messages `talk_frames` sent on the call, each once (the echo sends each back)."""
    return [json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(
        f"{call.marker}-{seq:04d}".encode()).decode()}).encode() for seq in range(FRAMES)]


async def engineer_desk(cluster: Cluster, saw_pki: SawPki, tag: str) -> tuple[dict[str, str], dict[str, str]]:
    """Team `voice-<tag>` with alice (engineer, the SAW's owner; test_scale_out's tickets assign her) and
    mona-<tag> (its manager), made through the admin API; their tokens."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    (replica,) = cluster.replicas
    team, manager = f"voice-{tag}", f"mona-{tag}"
    async with httpx.AsyncClient(base_url=replica.http, timeout=10) as client:
        assert (await client.post("/admin/teams", headers=admin, json={"name": team})).status_code == 201
        for subject, role in (("alice", "engineer"), (manager, "manager")):
            made = await client.post("/admin/staff", headers=admin, json={
                "subject": subject, "display_name": subject, "team": team, "roles": [role]})
            assert made.status_code == 201, made.text
        added = await client.post(f"/admin/teams/{team}/managers", headers=admin, json={"subject": manager})
        assert added.status_code == 200, added.text
        saw = await client.post("/admin/saws", headers=admin, json={
            "owner": "alice", "label": f"SAW-{tag}", "cert_pem": saw_pki.valid.pem})
        assert saw.status_code == 201, saw.text
    engineer, approver = await asyncio.gather(asyncio.to_thread(cluster.token, "alice", "engineer"),
                                              asyncio.to_thread(cluster.token, manager, "manager"))
    return engineer, approver


async def test_a_recording_made_on_either_worker_is_complete_and_plays_back(
    recording_pair: tuple[Served, Cluster], saw_pki: SawPki, tmp_path: Path,
) -> None:
    served, cluster = recording_pair
    (replica,) = cluster.replicas
    customer = await recorded_resource(cluster, via=replica)
    calls = await calls_recorded_on_both_workers(served, cluster, customer.resource)
    await asyncio.gather(*(call.ws.close() for call in calls))
    listed = await listing(replica, customer)
    assert {call.request_id for call in calls} <= listed.keys()
    for call in calls:
        row = await settled(replica, customer, call.request_id, timeout=15)
        assert row["state"] == "complete", (call.worker, row)
        # What is stored is each message as it crossed the relay, both directions, in order (test_scale_out's read).
        stored = await payloads_read_by_a_third_replica(cluster, call.request_id)
        assert stored == [message for message in sent(call) for _ in ("c2s", "s2c")], call.worker

    # The first recording of each worker played back as an engineer plays it: a JIT grant approved by the
    # manager, read from the SAW through nginx.
    played = [next(call for call in calls if call.worker == worker) for worker in (0, 1)]
    engineer, approver = await engineer_desk(cluster, saw_pki, secrets.token_hex(4))
    async with httpx.AsyncClient(base_url=replica.http, timeout=10) as client:
        (ticket,) = [t for t in (await client.get("/me/tickets", headers=engineer)).json()
                     if t["id"] == listed[calls[0].request_id]["ticket_id"]]
        asked = await client.post("/access/requests", headers=engineer, json={
            "ticket_id": ticket["id"], "request_ids": [call.request_id for call in played],
            "justification": f"{ticket['external_ref']}: one call from each worker", "duration_minutes": 30})
        assert asked.status_code == 201, asked.text
        approved = await client.post(f"/access/requests/{asked.json()['id']}/approve", headers=approver, json={})
        assert approved.status_code == 200, approved.text
        assert approved.json()["status"] == "approved"
    async with run_saw_nginx(tmp_path / "nginx", saw_pki, upstream_port=served.port) as nginx, httpx.AsyncClient(
            base_url=nginx.url, verify=saw_pki.client_context(saw_pki.valid), headers=engineer, timeout=30) as saw:
        for call in played:
            caller = await saw.get(f"/recordings/{call.request_id}/audio/caller.wav")
            assert caller.status_code == 200, caller.text
            assert caller.headers["x-voicelog-recording-state"] == "complete"
            # Every frame the caller sent, in order, byte for byte: the track is their audio joined.
            assert caller.content[44:] == b"".join(base64.b64decode(json.loads(m)["audio"]) for m in sent(call))
            events = await saw.get(f"/recordings/{call.request_id}/events")
            assert events.status_code == 200, events.text
            frames = [(e["direction"], e["type"]) for e in map(json.loads, events.text.splitlines())
                      if "direction" in e]
            assert frames == [("c2s", "input_audio_buffer.append"), ("s2c", "input_audio_buffer.append")] * FRAMES


async def test_recordings_past_30_days_are_purged_once_while_both_workers_run_the_scheduler(
    recording_pair: tuple[Served, Cluster],
) -> None:
    """test_scale_out's purge check, with the two schedulers in sibling workers of one serve."""
    _, cluster = recording_pair
    (replica,) = cluster.replicas
    await check_purged_once(cluster, [JobRunner(replica, worker="0"), JobRunner(replica, worker="1")])


async def test_audit_checkpoints_are_signed_once_per_period_while_both_workers_keep_the_chain(
    recording_pair: tuple[Served, Cluster],
) -> None:
    """test_scale_out's checkpoint check, with the two chain keepers in sibling workers of one serve, the
    entries arriving through its one port (either worker takes each)."""
    _, cluster = recording_pair
    (replica,) = cluster.replicas
    await check_checkpoints_once(cluster, [JobRunner(replica, worker="0"), JobRunner(replica, worker="1")])
