"""A writer process for the concurrency tests: `writers` asyncio tasks, each its own session and transactions.

Run as `python -m tests.audit.writers URL PROCESS WRITERS PER_WRITER MODE START_AT DATA_DIR` where MODE is
`default` (the database's own way: PostgreSQL queues and a chain keeper in this process chains and signs
with the keyring under DATA_DIR, shared by the processes) or `inline`.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from app.audit.actions import Actor, AuditAction
from app.audit.entry_mac import bind_entry_mac, build_entry_mac_keys
from app.audit.jobs import ChainKeeper
from app.audit.runtime import AuditRuntime
from app.audit.service import append_entry
from app.audit.settings import AuditSettings
from app.clock import SystemClock
from app.db import create_engine, create_session_factory


async def write(url: str, process: int, writers: int, per_writer: int, mode: str, start_at: float,
                data_dir: Path) -> None:
    engine = create_engine(url)
    clock = SystemClock()
    keeper = None
    # Appends carry the entry key under DATA_DIR, shared by the processes (as a deployment's replicas share it).
    factory = bind_entry_mac(create_session_factory(engine), build_entry_mac_keys(AuditSettings(), data_dir))
    if mode == "default" and engine.dialect.name == "postgresql":
        runtime = AuditRuntime.from_settings(
            AuditSettings(sequencer_interval_s=0.02, checkpoint_every_entries=50), data_dir)
        keeper = ChainKeeper(runtime, factory, clock)
        keeper.start()

    async def writer(number: int) -> None:
        for i in range(per_writer):
            async with factory() as session:
                await append_entry(
                    session=session, clock=clock, actor=Actor.service(f"p{process}-w{number}"),
                    action=AuditAction.ADMIN_CHANGED, detail={"setting": f"p{process}-w{number}-{i}", "change": "set"},
                    chain_now=True if mode == "inline" else None,
                )
                await session.commit()

    # Both processes start writing at the same moment.
    await asyncio.sleep(max(0.0, start_at - asyncio.get_running_loop().time()))
    try:
        await asyncio.gather(*(writer(n) for n in range(writers)))
    finally:
        if keeper is not None:
            await keeper.stop()
        await engine.dispose()


def main() -> None:
    import time

    url, process, writers, per_writer, mode, start_at, data_dir = sys.argv[1:8]
    delay = float(start_at) - time.time()

    async def run() -> None:
        loop_start = asyncio.get_running_loop().time() + max(0.0, delay)
        await write(url, int(process), int(writers), int(per_writer), mode, loop_start, Path(data_dir))

    asyncio.run(run())


if __name__ == "__main__":
    main()
