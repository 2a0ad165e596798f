"""Storage append benchmark: sealed 2 s segments from N concurrent recordings, store vs. raw baseline.

Each recording appends ~96 KiB units (2 s of 24 kHz pcm16 plus sealing overhead) back to back for a
fixed time; for every N it prints appends/s and p50/p99 append latency of
- AzureBlobStore against Azurite, beside a raw azure-storage-blob loop (append_block with the append
  position condition on one BlobClient per recording, same client options) in the same run;
- LocalDirStore, beside a raw loop of pwrite + fsync on the same number of threads.
Runs are interleaved (raw, store, store, raw, repeated) so drift hits both sides alike, and the
overhead ratio is printed. Paced runs then put the largest N at the real cadence (one unit per 2 s per recording, i.e.
100 appends/s for 200 recordings), raw and store, and report p99 and appends that started late. The
benchmark starts its own Azurite (node_modules/.bin/azurite-blob, `npm ci`). Never asserted.

    .venv/bin/python ops/bench/storage_append.py [--recordings 1,50,200] [--seconds 3] [--rounds 2]
        [--paced-seconds 12] [--backends azure,local]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from azure.storage.blob.aio import BlobClient, BlobServiceClient

from app.storage.azure import AzureBlobStore, client_options
from app.storage.layout import RecordingKey
from app.storage.local import LocalDirStore
from app.storage.settings import StorageSettings

ROOT = Path(__file__).resolve().parents[2]
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
UNIT_BYTES = 96 * 1024 + 60  # 2 s of 24 kHz pcm16 (~94 KiB) rounded up, plus nonce/tag/framing
SEGMENT_PERIOD_S = 2.0
ACCOUNT = "vlbench"

Append = Callable[[int, int], Awaitable[int]]
"""append(recording index, offset) -> new offset."""


@dataclass
class Run:
    latencies_s: list[float]
    seconds: float

    @property
    def rate(self) -> float:
        return len(self.latencies_s) / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @staticmethod
    def merged(runs: list[Run]) -> Run:
        return Run([x for r in runs for x in r.latencies_s], sum(r.seconds for r in runs))


class Azurite:
    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.key = base64.b64encode(secrets.token_bytes(64)).decode()
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not AZURITE.exists():
            raise SystemExit(f"{AZURITE} missing: run `npm ci` in the project root")
        log = (self.workspace / "azurite.log").open("wb")
        self.process = subprocess.Popen(
            [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", "0", "--location", str(self.workspace),
             "--skipApiVersionCheck", "--disableTelemetry", "--silent"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "AZURITE_ACCOUNTS": f"{ACCOUNT}:{self.key}"}, start_new_session=True,
        )
        give_up = time.monotonic() + 30
        while time.monotonic() < give_up and not self.port:
            found = re.findall(r"listens on http://127\.0\.0\.1:(\d+)", (self.workspace / "azurite.log").read_text())
            self.port = int(found[-1]) if found else 0
            time.sleep(0.05)
        if not self.port:
            raise SystemExit("Azurite did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={self.key};"
                f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};")


def sample_units() -> list[bytes]:
    return [os.urandom(UNIT_BYTES) for _ in range(8)]


async def drive(append: Append, recordings: int, seconds: float) -> Run:
    """Every recording appends back to back until the time is up."""
    latencies: list[float] = []
    started = time.perf_counter()
    stop_at = started + seconds

    async def recording(index: int) -> None:
        offset = 0
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            offset = await append(index, offset)
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(recording(i) for i in range(recordings)))
    return Run(latencies, time.perf_counter() - started)


async def paced(append: Append, recordings: int, seconds: float) -> tuple[Run, int]:
    """Every recording appends one unit per segment period (staggered); counts appends that start late."""
    latencies: list[float] = []
    late = 0
    started = time.perf_counter()

    async def recording(index: int) -> None:
        nonlocal late
        offset, due = 0, started + SEGMENT_PERIOD_S * index / recordings
        while due < started + seconds:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            t0 = time.perf_counter()
            late += t0 - due > SEGMENT_PERIOD_S / 4
            offset = await append(index, offset)
            latencies.append(time.perf_counter() - t0)
            due += SEGMENT_PERIOD_S

    await asyncio.gather(*(recording(i) for i in range(recordings)))
    return Run(latencies, time.perf_counter() - started), late


def keys(count: int) -> list[RecordingKey]:
    now = datetime.now(UTC)
    return [RecordingKey(request_id=f"bench-{secrets.token_hex(8)}", started_at=now) for _ in range(count)]


async def azure_store_appender(store: AzureBlobStore, count: int, units: list[bytes]) -> Append:
    recs = keys(count)
    await asyncio.gather(*(store.create(k) for k in recs))

    async def append(index: int, offset: int) -> int:
        return await store.append(recs[index], units[(offset // UNIT_BYTES) % len(units)], offset=offset)

    return append


async def azure_raw_appender(service: BlobServiceClient, container: str, count: int, units: list[bytes]) -> Append:
    clients: list[BlobClient] = [service.get_blob_client(container, f"raw/{secrets.token_hex(8)}")
                                 for _ in range(count)]
    await asyncio.gather(*(c.create_append_blob() for c in clients))

    async def append(index: int, offset: int) -> int:
        data = units[(offset // UNIT_BYTES) % len(units)]
        await clients[index].append_block(data, length=len(data), appendpos_condition=offset)
        return offset + len(data)

    return append


async def local_store_appender(store: LocalDirStore, count: int, units: list[bytes]) -> Append:
    recs = keys(count)
    for k in recs:
        await store.create(k)

    async def append(index: int, offset: int) -> int:
        return await store.append(recs[index], units[(offset // UNIT_BYTES) % len(units)], offset=offset)

    return append


async def local_raw_appender(directory: Path, pool: ThreadPoolExecutor, count: int, units: list[bytes]) -> Append:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"raw-{secrets.token_hex(8)}" for _ in range(count)]
    for path in paths:
        path.touch(mode=0o600)
    loop = asyncio.get_running_loop()

    def write(path: Path, data: bytes, offset: int) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def append(index: int, offset: int) -> int:
        data = units[(offset // UNIT_BYTES) % len(units)]
        await loop.run_in_executor(pool, write, paths[index], data, offset)
        return offset + len(data)

    return append


def report(label: str, n: int, raw: Run, store: Run) -> None:
    print(f"{label:<6} {n:>4}  raw    {raw.rate:9.1f} {raw.pct(0.5):8.1f} {raw.pct(0.99):8.1f}")
    print(f"{label:<6} {n:>4}  store  {store.rate:9.1f} {store.pct(0.5):8.1f} {store.pct(0.99):8.1f}"
          f"   overhead: throughput {raw.rate / store.rate - 1:+.1%}, p99 {store.pct(0.99) / raw.pct(0.99) - 1:+.1%}")


def report_paced(label: str, n: int, raw: tuple[Run, int], store: tuple[Run, int]) -> None:
    """The real cadence: does every recording get its unit stored well within its 2 s period?"""
    for side, (run, late) in (("raw", raw), ("store", store)):
        print(f"{label:<6} {n:>4}  {side + '@2s':<6} {run.rate:9.1f} {run.pct(0.5):8.1f} {run.pct(0.99):8.1f}"
              f"   late starts {late}")
    print(f"{'':<13} paced p99 overhead {store[0].pct(0.99) / raw[0].pct(0.99) - 1:+.1%}")


async def bench_azure(azurite: Azurite, counts: list[int], seconds: float, rounds: int, paced_s: float,
                      units: list[bytes]) -> None:
    settings = StorageSettings(create_containers=True)
    async with BlobServiceClient.from_connection_string(azurite.connection_string,
                                                        **client_options(settings)) as service:
        for n in counts:
            container = f"bench{n}-{secrets.token_hex(4)}"
            await service.create_container(container)
            store = AzureBlobStore.from_connection_string(region="bench", connection_string=azurite.connection_string,
                                                          container=container, settings=settings)
            raws, stores = [], []
            for side in ("raw", "store", "store", "raw") * rounds:
                if side == "raw":
                    raws.append(await drive(await azure_raw_appender(service, container, n, units), n, seconds))
                else:
                    stores.append(await drive(await azure_store_appender(store, n, units), n, seconds))
            report("azure", n, Run.merged(raws), Run.merged(stores))
            if n == max(counts) and paced_s > 0:
                raw_paced = await paced(await azure_raw_appender(service, container, n, units), n, paced_s)
                store_paced = await paced(await azure_store_appender(store, n, units), n, paced_s)
                report_paced("azure", n, raw_paced, store_paced)
            await store.close()
            await service.delete_container(container)


async def bench_local(workdir: Path, counts: list[int], seconds: float, rounds: int, paced_s: float,
                      units: list[bytes]) -> None:
    settings = StorageSettings()
    for n in counts:
        store = LocalDirStore(region="bench", root=workdir / f"store{n}", settings=settings)
        await store.prepare()
        with ThreadPoolExecutor(max_workers=settings.local_io_threads) as pool:
            raws, stores = [], []
            for side in ("raw", "store", "store", "raw") * rounds:
                if side == "raw":
                    raws.append(await drive(await local_raw_appender(workdir / f"raw{n}", pool, n, units), n,
                                            seconds))
                else:
                    stores.append(await drive(await local_store_appender(store, n, units), n, seconds))
            report("local", n, Run.merged(raws), Run.merged(stores))
            if n == max(counts) and paced_s > 0:
                raw_paced = await paced(await local_raw_appender(workdir / f"raw{n}", pool, n, units), n,
                                        paced_s)
                store_paced = await paced(await local_store_appender(store, n, units), n, paced_s)
                report_paced("local", n, raw_paced, store_paced)
        await store.close()
        shutil.rmtree(workdir / f"store{n}", ignore_errors=True)
        shutil.rmtree(workdir / f"raw{n}", ignore_errors=True)


async def main(counts: list[int], seconds: float, rounds: int, paced_s: float, backends: list[str]) -> None:
    units = sample_units()
    print(f"unit {UNIT_BYTES} bytes; {seconds:g} s per run, runs interleaved (raw/store/store/raw) x {rounds}; "
          f"cpu count {os.cpu_count()}")
    print(f"{'store':<6} {'N':>4}  {'run':<6}{'appends/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    with tempfile.TemporaryDirectory(prefix="voicelog-bench-") as tmp:
        if "azure" in backends:
            azurite = Azurite(Path(tmp))
            azurite.start()
            try:
                await bench_azure(azurite, counts, seconds, rounds, paced_s, units)
            finally:
                azurite.stop()
        if "local" in backends:
            await bench_local(Path(tmp) / "local", counts, seconds, rounds, paced_s, units)


def cli() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--recordings", default="1,50,200", help="concurrent recordings, comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each run")
    parser.add_argument("--rounds", type=int, default=2, help="raw/store/store/raw rounds per N")
    parser.add_argument("--paced-seconds", type=float, default=12.0, help="paced run at the largest N; 0 skips")
    parser.add_argument("--backends", default="azure,local", help="azure, local or both")
    args = parser.parse_args()
    counts = [int(n) for n in args.recordings.split(",")]
    try:
        import uvloop

        runner: Callable[..., object] = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(main(counts, args.seconds, args.rounds, args.paced_seconds, args.backends.split(",")))


if __name__ == "__main__":
    cli()
