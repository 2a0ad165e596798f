"""Background work of the audit trail, safe on every replica at once (C6).

- ChainKeeper: a full round chains queued entries and signs a checkpoint when due (both under the chain lock,
  so replicas take turns), then exports new checkpoints to the sink. It runs when an entry this process
  queued has committed (`app.audit.wake`), when a peek at the inbox (one cheap statement, PostgreSQL only)
  finds entries queued elsewhere, at the moment a checkpoint falls due for unsealed entries, and at least every
  `min(sequencer_idle_s, checkpoint_every_s)`, so the tail is anchored within about `checkpoint_every_s`.
  The peek comes every `sequencer_interval_s` after a round and slows to `sequencer_quiet_poll_s` while the
  inbox stays empty.
- VerifierJob: every `verify_every_minutes`, verifies the whole chain and publishes the result as metrics.
Each unit of work has its own session and transaction; a failure is logged and counted, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit import wake
from app.audit.checkpoints import Checkpoint, SealResult, export_checkpoints, last_checkpoint, seal
from app.audit.keys import PublicKeySet
from app.audit.metrics import DAMAGE_KINDS, AuditMetrics
from app.audit.runtime import AuditRuntime
from app.audit.service import INBOX, dialect_name
from app.audit.verifier import VerificationResult, verify_chain
from app.clock import Clock
from app.logs import get_logger

log = get_logger("voicelog.audit")


class ChainKeeper:
    def __init__(self, runtime: AuditRuntime, session_factory: async_sessionmaker[AsyncSession], clock: Clock) -> None:
        self.runtime = runtime
        self.session_factory = session_factory
        self.clock = clock
        self._exported_through: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._woken = asyncio.Event()  # set by `wake` after this process queued an entry, and by `stop()`

    async def tick(self, *, force: bool = False) -> SealResult:
        """One round: chain, maybe sign, then export what the sink lacks. Raises on failure (run() catches)."""
        async with self.session_factory() as session:
            result = await seal(
                session=session, clock=self.clock, keyring=self.runtime.keyring, policy=self.runtime.policy,
                batch=self.runtime.settings.sequencer_batch, force=force, wait=force, mac=self.runtime.mac_keys,
            )
            await session.commit()
        metrics = self.runtime.metrics
        if metrics is not None:
            metrics.chained.inc(result.chained)
            if result.checkpoint is not None:
                metrics.checkpoints.inc()
            for reason, count in result.rejected.items():
                metrics.unauthenticated.labels(reason=reason).inc(count)
        if result.checkpoint is not None:
            log.info("audit.checkpoint.signed", checkpoint=result.checkpoint.number,
                     head_seq=result.checkpoint.head_seq, key_id=result.checkpoint.key_id)
        await self.export(latest=result.checkpoint)
        return result

    async def export(self, *, latest: Checkpoint | None = None) -> int:
        if latest is not None and self._exported_through is not None and latest.number <= self._exported_through:
            return 0
        async with self.session_factory() as session:
            if latest is None and self._exported_through is not None:
                newest = await last_checkpoint(session)
                if newest is None or newest.number <= self._exported_through:
                    return 0
            written = await export_checkpoints(session=session, sink=self.runtime.sink)
            newest = await last_checkpoint(session)
        self._exported_through = newest.number if newest else 0
        if self.runtime.metrics is not None and newest is not None:
            self.runtime.metrics.anchored_head.set(newest.head_seq)
            self.runtime.metrics.last_anchored.set(newest.signed_at.timestamp())
        if written and self.runtime.metrics is not None:
            self.runtime.metrics.exported.inc(written)
        return written

    async def queued(self) -> bool:
        """Is anything waiting in the inbox? One statement: the idle poll, between full rounds."""
        async with self.session_factory() as session:
            return bool((await session.execute(select(exists().select_from(INBOX)))).scalar_one())

    async def run(self) -> None:
        """Full rounds when woken (an entry this process queued has committed), when the peek finds entries
        queued elsewhere, and at least every `sequencer_idle_s`; rounds at most every `sequencer_interval_s`
        unless a full batch says there is more. The peek runs on PostgreSQL only (SQLite chains entries as
        they are written) and slows from `sequencer_interval_s` to `sequencer_quiet_poll_s` while the inbox
        stays empty, so an idle replica costs the database one look a second."""
        settings = self.runtime.settings
        interval = settings.sequencer_interval_s
        quiet = max(interval, settings.sequencer_quiet_poll_s)
        loop = asyncio.get_running_loop()
        async with self.session_factory() as session:
            polls = dialect_name(session) == "postgresql"
        next_full_round = loop.time()
        poll = interval
        wake.listen(self._woken)
        try:
            while not self._stop.is_set():
                woken = self._woken.is_set()
                self._woken.clear()
                ran = busy = False
                try:
                    # A checkpoint due by time, or one signed elsewhere to export, needs no queued entry to
                    # happen: the full round comes every `sequencer_idle_s` whatever the peek says.
                    if woken or loop.time() >= next_full_round or (polls and await self.queued()):
                        ran = True
                        started = loop.time()
                        result = await self.tick()
                        busy = result.chained >= settings.sequencer_batch
                        # At least every checkpoint interval too: on SQLite nothing is queued to wake us, and
                        # an entry chained inline must still be anchored within about one interval.
                        idle = min(settings.sequencer_idle_s, settings.checkpoint_interval_s)
                        next_full_round = started + self._until_next_round(result, idle)
                except Exception as exc:  # the keeper must outlive a database or sink outage
                    ran = True  # look again soon: the inbox may hold what this round could not chain
                    if self.runtime.metrics is not None:
                        self.runtime.metrics.keeper_errors.labels(step="tick").inc()
                    log.warning("audit.keeper.failed", error=type(exc).__name__)
                # After a round, look again within `interval`: another replica may have held the chain lock
                # while it read the inbox before our entry committed. Only empty looks slow the poll down.
                poll = interval if ran else min(quiet, poll * 2)
                if busy:
                    continue
                if ran:
                    await self._sleep(interval, wakes=False)  # rounds at most this often; wakes wait for it
                    continue
                until_full = max(0.0, next_full_round - loop.time())
                await self._sleep(min(poll, until_full) if polls else until_full, wakes=True)
        finally:
            wake.stop_listening(self._woken)

    async def _sleep(self, seconds: float, *, wakes: bool) -> None:
        """Wait `seconds`, or less if stopped (or, with `wakes`, woken)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for((self._woken if wakes else self._stop).wait(), seconds)

    def _until_next_round(self, result: SealResult, idle_s: float) -> float:
        """Seconds to the next full round: `idle_s`, or sooner when a checkpoint falls due by time for
        entries already chained (so the cadence holds on SQLite too, where nothing is queued to wake us)."""
        if result.next_due is None:
            return idle_s
        return min(idle_s, max(0.0, (result.next_due - self.clock.now()).total_seconds()))

    def start(self) -> asyncio.Task[None]:
        self._stop.clear()
        self._task = asyncio.create_task(self.run(), name="audit-chain-keeper")
        return self._task

    async def stop(self) -> None:
        """Stop after the current round, then chain what is queued once more."""
        self._stop.set()
        self._woken.set()
        if self._task is not None:
            await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.tick()
        with contextlib.suppress(Exception):
            await self.runtime.sink.close()


async def run_verification(
    *,
    session_factory: async_sessionmaker[AsyncSession],
    runtime: AuditRuntime,
    clock: Clock,
    from_seq: int = 1,
    keys: PublicKeySet | None = None,
    exported: Sequence[Checkpoint] | None = None,
    check_macs: bool = True,
) -> VerificationResult:
    """Verify with the runtime's public keys, MAC keys and exported checkpoints; publish the result as metrics."""
    exported = await runtime.sink.read_all() if exported is None else exported
    async with session_factory() as session:
        result = await verify_chain(
            session=session, keys=keys or runtime.keyring.public_keys(), exported=exported, from_seq=from_seq,
            now=clock.now(), pending_alarm_s=runtime.settings.pending_alarm_s,
            mac_keys=runtime.mac_keys if check_macs else None,
            mac_from_seq=runtime.settings.entry_mac_from_seq,
        )
        await session.rollback()
    if runtime.metrics is not None:
        publish(runtime.metrics, result)
    if result.ok:
        log.info("audit.verified", head_seq=result.head_seq, sealed_through=result.sealed_through,
                 unanchored_entries=result.unanchored_entries, unanchored_s=result.unanchored_s,
                 entries=result.entries_checked, seconds=round(result.duration_s, 3))
    else:
        assert result.damage is not None  # noqa: S101 - not ok means damage
        log.error("audit.damage", kind=result.damage.kind.value, seq=result.damage.seq,
                  checkpoint=result.damage.checkpoint)
    return result


def publish(metrics: AuditMetrics, result: VerificationResult) -> None:
    metrics.chain_ok.set(1 if result.ok else 0)
    for kind in DAMAGE_KINDS:
        metrics.damage.labels(kind=kind).set(1 if result.damage and result.damage.kind.value == kind else 0)
    metrics.verified_head.set(result.head_seq)
    metrics.sealed_through.set(result.sealed_through)
    metrics.last_verification.set(result.checked_at.timestamp())
    metrics.verification_seconds.set(result.duration_s)
    metrics.pending.set(result.pending)
    metrics.unanchored_entries.set(result.unanchored_entries)
    metrics.unanchored_seconds.set(result.unanchored_s or 0.0)


class VerifierJob:
    """The scheduled verifier: the whole chain every `verify_every_minutes` (a metric, and a log on damage)."""

    def __init__(self, runtime: AuditRuntime, session_factory: async_sessionmaker[AsyncSession], clock: Clock) -> None:
        self.runtime = runtime
        self.session_factory = session_factory
        self.clock = clock
        self.last: VerificationResult | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> VerificationResult:
        self.last = await run_verification(session_factory=self.session_factory, runtime=self.runtime,
                                           clock=self.clock)
        return self.last

    async def run(self) -> None:
        interval = self.runtime.settings.verify_every_minutes * 60
        while not self._stop.is_set():
            try:
                await self.run_once()
            except Exception as exc:
                if self.runtime.metrics is not None:
                    self.runtime.metrics.keeper_errors.labels(step="verify").inc()
                log.warning("audit.verify.failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)

    def start(self) -> asyncio.Task[None]:
        self._stop.clear()
        self._task = asyncio.create_task(self.run(), name="audit-verifier")
        return self._task

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
