"""Audit append benchmark: entries/s for 1 and 8 concurrent writers, beside a plain INSERT, and verification/s.

For each database (PostgreSQL at 127.0.0.1:5432, SQLite in a temp dir) and each writer count it runs, in
the same process and interleaved (plain, audit, audit, plain, ...):
- plain:  one INSERT of an audit-shaped row into a table without triggers or chain, committed alone;
- audit:  `append_entry` + commit, the way services call it (PostgreSQL: queued, a ChainKeeper in this
          process chains and signs; SQLite: chained at once under its writer lock). "chained/s" counts until
          the last entry is in the chain;
- inline: `append_entry(chain_now=True)` + commit (PostgreSQL only): chained inside every writer's transaction.
Each writer is an asyncio task with its own connection and session. Then it builds a chain of --verify-entries
entries and times the verifier on it (first, cold, pass and a warm one). Figures only, never asserted.

    .venv/bin/python ops/bench/audit_append.py [--seconds 4] [--rounds 2] [--writers 1,8]
        [--verify-entries 300000] [--databases postgresql,sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import migrate
from app.audit.actions import Actor, AuditAction, Subjects
from app.audit.canonical import canonical_time
from app.audit.entry_mac import EntryMacKeys, bind_entry_mac, build_entry_mac_keys, encode_content, new_nonce
from app.audit.jobs import ChainKeeper
from app.audit.runtime import AuditRuntime
from app.audit.service import CONTENT_COLUMNS, INBOX, append_entry, integrate_pending
from app.audit.settings import AuditSettings
from app.audit.verifier import verify_chain
from app.clock import SystemClock
from app.db import create_engine, create_session_factory
from app.logs import configure_logging

PG = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
PG_DB = "voicelog_audit_bench"
PLAIN_TABLE = """
CREATE TABLE bench_plain_entries (
    seq {serial} PRIMARY KEY,
    recorded_at TIMESTAMP WITH TIME ZONE NOT NULL,
    actor_type VARCHAR(16) NOT NULL, actor_id VARCHAR(128) NOT NULL, action VARCHAR(48) NOT NULL,
    ticket_id VARCHAR(128), request_id VARCHAR(128), grant_id VARCHAR(128), saw_id VARCHAR(128),
    resource_id VARCHAR(128), detail TEXT NOT NULL
)"""
PLAIN_INSERT = text(
    "INSERT INTO bench_plain_entries (recorded_at, actor_type, actor_id, action, ticket_id, request_id, grant_id, "
    "saw_id, resource_id, detail) VALUES (:recorded_at, :actor_type, :actor_id, :action, :ticket_id, :request_id, "
    ":grant_id, :saw_id, :resource_id, :detail)"
)
CLOCK = SystemClock()

Write = Callable[[AsyncSession, int, int], Awaitable[None]]


def prepare_postgres() -> str:
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{PG_DB}"')
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{PG_DB}"
    migrate.upgrade(url)
    with psycopg.connect(PG.replace("dbname=postgres", f"dbname={PG_DB}"), autocommit=True) as conn:
        conn.execute(PLAIN_TABLE.format(serial="BIGSERIAL"))
    return url


def prepare_sqlite(directory: Path) -> str:
    url = f"sqlite+aiosqlite:///{directory / 'bench.db'}"
    migrate.upgrade(url)
    import sqlite3

    with sqlite3.connect(directory / "bench.db") as conn:
        conn.execute(PLAIN_TABLE.format(serial="INTEGER"))
    return url


def row(writer: int, n: int) -> dict[str, object]:
    """The same content both sides write: a recording.read entry."""
    return {"recorded_at": CLOCK.now(), "actor_type": "staff", "actor_id": f"engineer-{writer}",
            "action": "recording.read", "ticket_id": None, "request_id": f"req-{writer}-{n}", "grant_id": "grant-1",
            "saw_id": "saw-1", "resource_id": None, "detail": '{"bytes":123456,"part":"audio_inbound"}'}


async def plain(session: AsyncSession, writer: int, n: int) -> None:
    await session.execute(PLAIN_INSERT, row(writer, n))


def audit(chain_now: bool | None) -> Write:
    async def write(session: AsyncSession, writer: int, n: int) -> None:
        await append_entry(session=session, clock=CLOCK, actor=Actor.staff(f"engineer-{writer}"),
                           action=AuditAction.RECORDING_READ,
                           subjects=Subjects(request_id=f"req-{writer}-{n}", grant="grant-1", saw="saw-1"),
                           detail={"bytes": 123456, "part": "audio_inbound"}, chain_now=chain_now)
    return write


async def run_writers(factory: async_sessionmaker[AsyncSession], writers: int, seconds: float, write: Write
                      ) -> tuple[int, float]:
    """`writers` tasks, one transaction per entry, for `seconds`; returns (committed, elapsed)."""
    deadline = time.perf_counter() + seconds
    counts = [0] * writers

    async def writer(index: int) -> None:
        async with factory() as session:
            while time.perf_counter() < deadline:
                await write(session, index, counts[index])
                await session.commit()
                counts[index] += 1

    started = time.perf_counter()
    await asyncio.gather(*(writer(i) for i in range(writers)))
    return sum(counts), time.perf_counter() - started


async def pending(factory: async_sessionmaker[AsyncSession]) -> int:
    async with factory() as session:
        return int((await session.execute(select(func.count()).select_from(INBOX))).scalar_one())


async def audited_run(engine: AsyncEngine, factory: async_sessionmaker[AsyncSession], writers: int,
                      seconds: float, data_dir: Path) -> tuple[float, float]:
    """The services' way, with this process's chain keeper: (committed/s, chained/s)."""
    runtime = AuditRuntime.from_settings(AuditSettings(sequencer_interval_s=0.05), data_dir)
    keeper = ChainKeeper(runtime, factory, CLOCK)
    if engine.dialect.name == "postgresql":
        keeper.start()
    started = time.perf_counter()
    try:
        committed, elapsed = await run_writers(factory, writers, seconds, audit(None))
        while await pending(factory):
            await asyncio.sleep(0.01)
        chained_after = time.perf_counter() - started
    finally:
        if engine.dialect.name == "postgresql":
            await keeper.stop()
    return committed / elapsed, committed / chained_after


async def bench_database(kind: str, url: str, writer_counts: list[int], seconds: float, rounds: int,
                         data_dir: Path) -> list[dict[str, object]]:
    engine = create_engine(url)
    # The services' way: appends carry the entry MAC key under data_dir (the audited runs' keepers check it).
    factory = bind_entry_mac(create_session_factory(engine), build_entry_mac_keys(AuditSettings(), data_dir))
    results = []
    try:
        for writers in writer_counts:
            plain_rates, audit_rates, chained_rates, inline_rates = [], [], [], []
            for _ in range(rounds):
                committed, elapsed = await run_writers(factory, writers, seconds, plain)
                plain_rates.append(committed / elapsed)
                for _ in range(2):
                    rate, chained = await audited_run(engine, factory, writers, seconds, data_dir)
                    audit_rates.append(rate)
                    chained_rates.append(chained)
                if kind == "postgresql":
                    committed, elapsed = await run_writers(factory, writers, seconds, audit(True))
                    inline_rates.append(committed / elapsed)
                committed, elapsed = await run_writers(factory, writers, seconds, plain)
                plain_rates.append(committed / elapsed)
            result: dict[str, object] = {
                "db": kind, "writers": writers, "plain": statistics.median(plain_rates),
                "audit": statistics.median(audit_rates), "chained": statistics.median(chained_rates),
                "inline": statistics.median(inline_rates) if inline_rates else None,
            }
            results.append(result)
            print_row(result)
    finally:
        await engine.dispose()
    return results


def print_row(r: dict[str, object]) -> None:
    plain_rate, audit_rate, chained = float(r["plain"]), float(r["audit"]), float(r["chained"])  # type: ignore[arg-type]
    inline = r["inline"]
    inline_text = "-" if inline is None else f"{float(inline):8.0f} ({float(inline) / plain_rate:4.0%})"  # type: ignore[arg-type]
    print(f"{r['db']:<11} {r['writers']:>2} writers  plain {plain_rate:8.0f}/s  audit {audit_rate:8.0f}/s "
          f"({audit_rate / plain_rate:4.0%})  chained {chained:8.0f}/s ({chained / plain_rate:4.0%})  "
          f"inline {inline_text}", flush=True)


async def read_only(factory: async_sessionmaker[AsyncSession]) -> float:
    """The baseline for verification: the verifier's own query, rows fetched and dropped."""
    from app.audit.verifier import EntryReader

    async with factory() as session:
        reader = EntryReader(session, limit=2**62)
        began, after, count = time.perf_counter(), 0, 0
        while rows := await reader.after(after, 20_000):
            count, after = count + len(rows), rows[-1][0]
        return count / (time.perf_counter() - began)


def _queued(mac: EntryMacKeys, values: dict[str, object]) -> dict[str, object]:
    """An inbox row as append_entry queues it: with its nonce and writer MAC (else it verifies as forged)."""
    nonce = new_nonce()
    recorded_at = values["recorded_at"]
    assert isinstance(recorded_at, datetime)
    fields = [values[c] for c in CONTENT_COLUMNS[1:]]
    content = encode_content(canonical_time(recorded_at), *(None if f is None else str(f) for f in fields))  # type: ignore[arg-type]
    return {**values, "nonce": nonce.hex(), "writer_mac": mac.inbox_mac(content, nonce)}


async def bench_verification(kind: str, url: str, entries: int, data_dir: Path) -> None:
    engine = create_engine(url)
    runtime = AuditRuntime.from_settings(AuditSettings(), data_dir)
    factory = runtime.bind_sessions(create_session_factory(engine))
    keys, mac = runtime.keyring.public_keys(), runtime.mac_keys
    assert mac is not None
    start = datetime(2030, 1, 1, tzinfo=UTC)
    try:
        async with factory() as session:
            existing = int((await session.execute(text("SELECT seq FROM audit_chain_head"))).scalar_one())
        to_add = max(0, entries - existing)
        for offset in range(0, to_add, 20_000):
            rows = [_queued(mac, {**row(i % 8, offset + i), "recorded_at": start + timedelta(milliseconds=offset + i)})
                    for i in range(min(20_000, to_add - offset))]
            async with factory() as session:
                await session.execute(insert(INBOX), rows)
                await integrate_pending(session, wait=True, limit=len(rows))
                await session.commit()
        verify_rates, read_rates = [], []
        for label in ("cold", "warm", "warm", "warm"):
            async with factory() as session:
                began = time.perf_counter()
                result = await verify_chain(session=session, keys=keys, now=CLOCK.now(), mac_keys=mac)
                elapsed = time.perf_counter() - began
            assert result.ok, result.damage
            rate = result.entries_checked / elapsed
            if label == "cold":
                print(f"{kind:<11} verification (cold, first read of fresh rows): {rate:,.0f} entries/s", flush=True)
                continue
            verify_rates.append(rate)
            read_rates.append(await read_only(factory))
        verify_rate, read_rate = statistics.median(verify_rates), statistics.median(read_rates)
        print(f"{kind:<11} verification: {result.entries_checked} entries, {verify_rate:,.0f} entries/s "
              f"(median of {len(verify_rates)}); reading the same rows without checking: {read_rate:,.0f}/s "
              f"(verification = {verify_rate / read_rate:.0%} of it)", flush=True)
    finally:
        await engine.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--writers", default="1,8")
    parser.add_argument("--verify-entries", type=int, default=300_000)
    parser.add_argument("--databases", default="postgresql,sqlite")
    args = parser.parse_args()
    configure_logging("WARNING")
    writer_counts = [int(w) for w in args.writers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        urls = {"postgresql": prepare_postgres, "sqlite": lambda: prepare_sqlite(directory)}
        for kind in args.databases.split(","):
            url = await asyncio.to_thread(urls[kind])  # alembic runs its own event loop
            await bench_database(kind, url, writer_counts, args.seconds, args.rounds, directory / kind)
            await bench_verification(kind, url, args.verify_entries, directory / kind)
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')


if __name__ == "__main__":
    asyncio.run(main())
