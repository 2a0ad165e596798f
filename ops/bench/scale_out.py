"""Scale-out benchmark: one `voicelog serve` process vs two on one PostgreSQL, recording on.

Both configurations share a PostgreSQL database (127.0.0.1:5432), one local blob directory, one keyring and
one stand-in upstream (echo mode); every session is recorded (an active consent on the resource). Two load
generator processes spread sessions round-robin over the replicas, as a load balancer would. For each
configuration it prints:

- accepted sessions per second: sessions opened, one frame echoed, closed, `--concurrency` in flight;
- concurrent real-time sessions held: the largest step of `--steps` where every session sent a 20 ms pcm16
  24 kHz frame every 20 ms, got every echo back, and round-trip p99 stayed under `--p99-ms` (the sessions
  of a step start spread over 2 s: recording set-up costs enough that a burst of starts in one frame shows
  up as a p99 spike for the sessions already running);

and the ratio two/one. The two configurations alternate for `--rounds` rounds (1, 2, 1, 2, ...) and the
medians are compared, so one disturbed run cannot decide the ratio; every round is printed too.
Everything runs on this machine: the generators, stand-in and PostgreSQL share its cores with the relays,
so the ratio says how far a second process helps *here*, not in a cluster. Figures are printed, never
asserted.

    .venv/bin/python ops/bench/scale_out.py [--steps 50,100,150,200,300] [--seconds 8] [--accept 1000]
                                            [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psycopg
import uvloop
from recording_overhead import http
from relay_latency import FRAME_MS, ROOT, free_port, one_session, percentile, stop_processes, wait_port
from websockets.asyncio.client import connect

GENERATORS = 2
QUERY = "/voice-live/realtime?api-version=2026-07-15&x-standin-mode=echo"
DB_NAME = "voicelog_bench_scale_out"
START_SPREAD_S = 2.0


def realtime_worker(urls: list[str], sessions: int, seconds: float, first: int) -> tuple[list[float], int, int]:
    """One generator process: `sessions` real-time sessions, the i-th on urls[(first + i) % len(urls)]."""

    async def main() -> tuple[list[float], int, int]:
        rtts: list[float] = []
        counts = [0, 0]
        spread = START_SPREAD_S / max(1, sessions)  # calls arrive over a window, not all in one frame
        await asyncio.gather(*(one_session(urls[(first + i) % len(urls)], seconds, rtts, counts, i * spread)
                               for i in range(sessions)), return_exceptions=True)
        return rtts, counts[0], counts[1]

    return uvloop.run(main())


def accept_worker(urls: list[str], count: int, concurrency: int, first: int) -> tuple[int, int]:
    """Open, echo one frame, close: `count` sessions, `concurrency` at once. Returns (ok, failed)."""

    async def main() -> tuple[int, int]:
        gate = asyncio.Semaphore(concurrency)
        message = json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(os.urandom(960)).decode()})

        async def one(i: int) -> bool:
            async with gate:
                try:
                    async with connect(urls[(first + i) % len(urls)], compression=None, open_timeout=20) as ws:
                        await ws.send(message)
                        return await asyncio.wait_for(ws.recv(), 20) == message
                except Exception:  # a refused or failed session is counted, not raised
                    return False

        results = await asyncio.gather(*(one(i) for i in range(count)))
        return sum(results), count - sum(results)

    return uvloop.run(main())


def measure_accept(pool: ProcessPoolExecutor, urls: list[str], total: int, concurrency: int) -> tuple[float, int]:
    share = total // GENERATORS
    started = time.perf_counter()
    futures = [pool.submit(accept_worker, urls, share, concurrency // GENERATORS, g) for g in range(GENERATORS)]
    done = [f.result() for f in futures]
    elapsed = time.perf_counter() - started
    ok, failed = sum(d[0] for d in done), sum(d[1] for d in done)
    return ok / elapsed, failed


def measure_held(pool: ProcessPoolExecutor, urls: list[str], steps: list[int], seconds: float, p99_limit: float
                 ) -> tuple[int, list[str]]:
    held = 0
    lines = []
    for sessions in steps:
        share = sessions // GENERATORS
        futures = [pool.submit(realtime_worker, urls, share, seconds, g) for g in range(GENERATORS)]
        done = [f.result() for f in futures]
        rtts = [r for d in done for r in d[0]]
        sent, lost = sum(d[1] for d in done), sum(d[2] for d in done)
        p50, p99 = percentile(rtts, 0.5), percentile(rtts, 0.99)
        ok = lost == 0 and sent == share * GENERATORS * int(seconds * 1000 / FRAME_MS) and p99 < p99_limit
        lines.append(f"    {sessions:>5} sessions: rtt p50 {p50:6.2f} ms, p99 {p99:7.2f} ms, lost {lost:>5}"
                     f"  {'held' if ok else 'NOT held'}")
        if not ok:
            break
        held = sessions
        time.sleep(2)
    return held, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="50,100,150,200,300")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--accept", type=int, default=1000, help="sessions opened for the accept rate")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (1 process, 2 processes)")
    parser.add_argument("--concurrency", type=int, default=40, help="accepts in flight")
    parser.add_argument("--p99-ms", type=float, default=100.0, help="round-trip p99 a held step must stay under")
    args = parser.parse_args()
    steps = [int(x) for x in args.steps.split(",")]

    work = Path(tempfile.mkdtemp(prefix="voicelog-scalebench-"))
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    voicelog = [sys.executable, "-m", "app.cli_main"]
    admin = secrets.token_urlsafe(16)
    env = {**os.environ, "VOICELOG_DATA_DIR": str(work / "data"),
           "VOICELOG_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DB_NAME}",
           "VOICELOG_REGIONS": json.dumps([{"name": "eastus", "blob_backend": "local",
                                            "blob_path": str(work / "blobs")}]),
           "VOICELOG_ADMIN_TOKEN": admin, "VOICELOG_IDENTITY__DEV_ISSUER_ENABLED": "true",
           "VOICELOG_IDENTITY__DEV_ISSUER_KEY_DIR": str(work / "dev-issuer"),
           "VOICELOG_VAULT__LOCAL_KEYRING_DIR": str(work / "keyring"),
           "VOICELOG_VAULT__LOCAL_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
           "VOICELOG_STANDIN_ENABLED": "false", "VOICELOG_DEMO_RESOURCE": "false", "VOICELOG_LOG_LEVEL": "WARNING",
           "VOICELOG_CONSENT_REFRESH_S": "0.5", "VOICELOG_WORKERS": "1"}  # each replica is one process here
    env.pop("VOICELOG_PORT", None)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        standin_port = free_port()
        procs.append(subprocess.Popen([*voicelog, "standin", "--port", str(standin_port)], env=env, cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(standin_port)
        subprocess.run([*voicelog, "db", "upgrade"], env=env, cwd=ROOT, check=True, capture_output=True)
        subprocess.run([*voicelog, "resources", "add", "bench", "--region", "eastus", "--upstream",
                        f"ws://127.0.0.1:{standin_port}", "--tenant", "bench-tenant"], env=env, cwd=ROOT,
                       check=True, capture_output=True)

        def serve() -> int:
            port = free_port()
            procs.append(subprocess.Popen([*voicelog, "serve", "--port", str(port)], env=env, cwd=ROOT,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(port)
            return port

        def token(subject: str, role: str, tenant: str | None = None) -> str:
            extra = ["--tenant", tenant] if tenant else []
            out = subprocess.run([*voicelog, "dev", "token", "--as", subject, "--role", role, *extra], env=env,
                                 cwd=ROOT, check=True, capture_output=True, text=True)
            return out.stdout.strip().splitlines()[-1]

        ports = [serve()]
        base = f"http://127.0.0.1:{ports[0]}"
        ticket = http("POST", f"{base}/tickets", token("ticketing", "ticketing"),
                      {"resource": "bench", "external_ref": "INC-SCALE"})
        http("POST", f"{base}/customer/resources/bench/consents", token("admin", "customer_admin", "bench-tenant"),
             {"ticket_id": ticket["id"]})
        ports.append(serve())  # started now, used only by the two-process runs
        time.sleep(1.5)

        print(f"scale-out: recording on, PostgreSQL + local blob store shared, {os.cpu_count()} cores, "
              f"{GENERATORS} load generator processes; real-time steps {steps} x {args.seconds:.0f} s, "
              f"held = no frame lost and rtt p99 < {args.p99_ms:.0f} ms")
        figures: dict[int, list[tuple[float, int]]] = {1: [], 2: []}
        with ProcessPoolExecutor(GENERATORS) as pool:
            for round_no in range(1, args.rounds + 1):
                for replicas in (1, 2):
                    urls = [f"ws://127.0.0.1:{port}/resources/bench{QUERY}" for port in ports[:replicas]]
                    measure_accept(pool, urls, 20 * replicas * GENERATORS, 4)  # warm-up: pools, caches, imports
                    realtime_worker(urls, 4 * replicas, 2.0, 0)
                    time.sleep(2)
                    held, lines = measure_held(pool, urls, steps, args.seconds, args.p99_ms)
                    time.sleep(3)
                    rate, failed = measure_accept(pool, urls, args.accept, args.concurrency)
                    figures[replicas].append((rate, held))
                    print(f"  round {round_no}, {replicas} process{'es' if replicas > 1 else ''}: {rate:7.1f} "
                          f"sessions/s accepted ({failed} failed), {held} concurrent real-time sessions held",
                          flush=True)
                    for line in lines:
                        print(line, flush=True)
                    time.sleep(3)
        with psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={DB_NAME}") as conn:
            row = conn.execute("SELECT count(*), count(*) FILTER (WHERE state = 'complete') FROM recordings")
            recorded, complete = row.fetchone() or (0, 0)
        rate1, held1 = (statistics.median(f[i] for f in figures[1]) for i in (0, 1))
        rate2, held2 = (statistics.median(f[i] for f in figures[2]) for i in (0, 1))
        print(f"medians of {args.rounds} rounds: 1 process {rate1:.1f} sessions/s, {held1:.0f} held; "
              f"2 processes {rate2:.1f} sessions/s, {held2:.0f} held")
        print(f"ratio two/one: accept x{rate2 / rate1:.2f}, held x{(held2 / held1) if held1 else float('nan'):.2f}")
        stored = sum(p.stat().st_size for p in (work / "blobs").rglob("*") if p.is_file())
        print(f"recordings: {recorded} rows ({complete} complete), {stored / 1024 / 1024:.1f} MiB sealed")
    finally:
        stop_processes(procs, 45)
        shutil.rmtree(work, ignore_errors=True)
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


if __name__ == "__main__":
    main()
