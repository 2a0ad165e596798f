"""8 concurrent writers across 2 OS processes produce one unbroken chain: no fork, no gap, nothing lost (C6)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.audit.checkpoints import list_checkpoints
from app.audit.keys import FileKeyring
from app.audit.service import ENTRIES, INBOX, integrate_pending
from app.audit.verifier import verify_chain
from app.clock import SystemClock
from tests.fixtures.audit import AuditDb

ROOT = Path(__file__).resolve().parents[2]
PROCESSES, WRITERS, PER_WRITER = 2, 4, 40


async def _run_writers(url: str, mode: str, per_writer: int, data_dir: Path) -> None:
    start_at = time.time() + 1.5
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.audit.writers", url, str(p), str(WRITERS), str(per_writer), mode,
            str(start_at), str(data_dir), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for p in range(PROCESSES)
    ]
    results = [await proc.communicate() for proc in procs]
    for proc, (_, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr.decode()[-3000:]


async def _check_one_chain(db: AuditDb, per_writer: int, data_dir: Path) -> None:
    async with db.factory() as session:
        await integrate_pending(session, wait=True, limit=100_000)  # anything the keepers left
        await session.commit()
    async with db.factory() as session:
        rows = (await session.execute(
            select(ENTRIES.c.seq, ENTRIES.c.actor_id, ENTRIES.c.detail).order_by(ENTRIES.c.seq))).all()
        pending = (await session.execute(select(func.count()).select_from(INBOX))).scalar_one()
        keys = FileKeyring(data_dir / "audit-keys").public_keys()
        result = await verify_chain(session=session, keys=keys, now=SystemClock().now())
    assert pending == 0
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))  # dense: no gap, no fork
    written = [json.loads(r.detail)["setting"] for r in rows if r.actor_id.startswith("p")]
    assert len(written) == len(set(written)) == PROCESSES * WRITERS * per_writer  # each once, none lost
    by_writer: dict[str, list[int]] = defaultdict(list)
    for setting in written:
        process_writer, _, index = setting.rpartition("-")
        by_writer[process_writer].append(int(index))
    assert all(indexes == sorted(indexes) for indexes in by_writer.values())  # a writer's own order is kept
    assert result.ok, result.damage
    assert result.head_seq == len(rows)


@pytest.mark.slow
async def test_eight_writers_in_two_processes_make_one_unbroken_chain(audit_db: AuditDb, tmp_path: Path) -> None:
    """PostgreSQL queues and both processes' chain keepers compete to chain and sign; SQLite chains under its
    writer lock."""
    await _run_writers(audit_db.url, "default", PER_WRITER, tmp_path)
    await _check_one_chain(audit_db, PER_WRITER, tmp_path)
    if audit_db.kind == "postgresql":
        async with audit_db.factory() as session:
            assert await list_checkpoints(session)  # the keepers signed while the writers wrote


@pytest.mark.slow
async def test_eight_inline_writers_in_two_processes_make_one_unbroken_chain(
    audit_db: AuditDb, tmp_path: Path
) -> None:
    """Every writer chains in its own transaction under the chain lock (chain_now=True)."""
    await _run_writers(audit_db.url, "inline", PER_WRITER // 2, tmp_path)
    await _check_one_chain(audit_db, PER_WRITER // 2, tmp_path)
