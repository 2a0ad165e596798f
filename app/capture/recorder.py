"""The recorder: a TapFactory for the relay and the background sealer that turns taps into sealed blobs.

On the relay's path it only appends frame references to a bounded buffer (C9). Everything that can be
slow or fail (data key, database row, blob create, sealing, appends) happens in the sealer task, which
retries with backoff for `retry_deadline_s` and then gives the recording up as incomplete. The relayed
session never waits for it and never fails because of it (C8). Nothing is stored, logged or buffered for
a session without an active consent (C1).

The database is not needed to record: with it away, a recording's row is deferred (the blob goes first,
under the consent cache's answer) and written with its progress and audit entries when it is back; a
row's close waits for it as long as it is away (docs/ARCHITECTURE.md, "Recording through a database
outage").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import random
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.actions import Actor, AuditAction, Subjects, detail_time, kek_bucket
from app.audit.service import append_entry
from app.capture.buffer import MARKER_MAX_BYTES, BufferItem, FrameBuffer, MemoryBudget, split_for_segments
from app.capture.frame_log import (
    BINARY,
    C2S,
    FRAME,
    S2C,
    TEXT,
    EndRecord,
    GapRecord,
    encode_end,
    encode_gap,
    pack_frame_head,
)
from app.capture.lifecycle import (
    APPENDS,
    ENDED,
    GIVEN_UP,
    OWNS_ROW,
    STARTING,
    TAKES_FRAMES,
    Backoff,
    Event,
    Phase,
    RowEvent,
    RowState,
    next_phase,
    next_row_state,
)
from app.capture.metrics import CaptureMetrics
from app.capture.models import Recording, RecordingState
from app.capture.recovery import close_stale_recordings
from app.capture.settings import CaptureSettings
from app.capture.states import IncompleteReason
from app.clock import Clock
from app.db import is_database_outage
from app.logs import get_logger
from app.relay.tap import Direction, FrameTap, SessionInfo
from app.request_id import RequestId
from app.storage.errors import StorageError
from app.storage.layout import RecordingKey
from app.storage.router import RegionRouter
from app.tickets.consent_cache import ConsentCache
from app.tickets.service import ActiveConsent, consent_covers
from app.vault.datakey import DataKey
from app.vault.envelope import create_data_key
from app.vault.keyring import RegionKeyrings
from app.vault.segments import SegmentWriter

log = get_logger("voicelog.capture")
_CLIENT_TO_SERVICE = Direction.CLIENT_TO_SERVICE  # read per recorded frame: a module global, not an Enum lookup
SYSTEM = Actor.system("recorder")


@dataclass(eq=False)
class LiveRecording:
    """One recorded session in this process: its phase and its row's state (`lifecycle.py`), and the data
    that is neither."""

    info: SessionInfo
    consent: ActiveConsent
    buffer: FrameBuffer
    key: RecordingKey
    opened_mono: float
    phase: Phase = Phase.NEEDS_KEY
    dek: DataKey | None = None
    wrapped: bytes = b""
    writer: SegmentWriter | None = None
    offset: int = 0
    pending: list[tuple[bytes, int]] = field(default_factory=list)
    last_seal_mono: float = 0.0
    frames: int = 0
    segments: int = 0
    end: EndRecord | None = None  # the session's end, once the relay reported it: the next seal is the last
    row: RowState = RowState.NOT_WRITTEN
    failure: IncompleteReason | None = None  # the last failure; the incomplete reason once given up
    retry: Backoff = field(default_factory=Backoff)
    # `phase in TAKES_FRAMES`, kept beside the phase: the tap reads it for every frame, and hashing an Enum member
    # is a Python-level call.
    takes_frames: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        self.takes_frames = self.phase in TAKES_FRAMES

    def apply(self, event: Event) -> None:
        self.phase = next_phase(self.phase, event)
        self.takes_frames = self.phase in TAKES_FRAMES

    def apply_row(self, event: RowEvent) -> None:
        self.row = next_row_state(self.row, event)


class RecordingTap:
    """What the relay calls inline: append a reference, count, return. Never raises on its own."""

    __slots__ = ("_recording",)

    def __init__(self, recording: LiveRecording) -> None:
        self._recording = recording

    def on_frame(self, direction: Direction, offset_ns: int, payload: bytes, text: bool) -> None:
        recording = self._recording
        if recording.end is not None or not recording.takes_frames:
            return
        recording.buffer.add(C2S if direction is _CLIENT_TO_SERVICE else S2C, TEXT if text else BINARY,
                             offset_ns // 1000, payload)
        recording.frames += 1

    def on_close(self, client_code: int | None, upstream_code: int | None, reason: str) -> None:
        recording = self._recording
        offset_us = int((time.monotonic() - recording.opened_mono) * 1e6)
        recording.end = EndRecord(offset_us, client_code or 0, upstream_code or 0, reason)


def encode_items(items: list[BufferItem], end: EndRecord | None) -> bytes:
    """The frame log of one segment (docs/FORMAT.md, "Frame log"), exactly as `encode_frame` and friends write it.

    Heads and payloads are gathered and joined once: each payload is copied once, with no buffer growing
    behind it and no final copy, and the per-frame Python work (held under the GIL, on the sealer thread) is
    one `struct.pack` and two list appends."""
    parts: list[bytes | bytearray] = []
    append = parts.append
    head = pack_frame_head
    for item in items:
        if isinstance(item, GapRecord):
            marker = bytearray()
            encode_gap(marker, item)
            append(marker)
            continue
        direction, opcode, offset_us, payload = item
        append(head(FRAME, direction, opcode, offset_us, len(payload)))
        append(payload)
    if end is not None:
        marker = bytearray()
        encode_end(marker, end)
        append(marker)
    return b"".join(parts)


class Recorder:
    """TapFactory + sealer. One per process; `start()` in the lifespan, `stop()` on shutdown."""

    def __init__(
        self,
        *,
        settings: CaptureSettings,
        clock: Clock,
        consents: ConsentCache,
        keyrings: RegionKeyrings,
        stores: RegionRouter,
        session_factory: async_sessionmaker[AsyncSession],
        metrics: CaptureMetrics,
        replica_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.consents = consents
        self.keyrings = keyrings
        self.stores = stores
        self.session_factory = session_factory
        self.metrics = metrics
        self.replica_id = replica_id or f"{os.uname().nodename}-{os.getpid()}"[:64]
        self.budget = MemoryBudget(settings.process_cap_bytes)
        self.live: dict[RequestId, LiveRecording] = {}
        self._task: asyncio.Task[None] | None = None
        self._inflight: dict[RequestId, asyncio.Task[None]] = {}
        self._last_heartbeat = 0.0
        self._last_recovery = 0.0
        self._upkeep: asyncio.Task[None] | None = None  # deferred rows, heartbeat and recovery, beside the steps
        self._database_away = False  # the last database step failed as an outage: new rows are deferred
        self._database_back_mono = 0.0  # when a database step last succeeded after an outage
        self._deferred_retry = Backoff()
        # Read at every scrape: the gauge is right even while the sealer loop or a step is held up.
        metrics.backlog.set_function(lambda: self.budget.used)
        for region in stores.regions:  # the stores the recorder writes to: their headroom, where it is finite
            if stores.has_free_space_check(region):
                metrics.store_free.labels(region).set_function(functools.partial(stores.free_bytes, region))
        # One thread seals for every recording: a segment takes well under a millisecond, and each extra
        # thread doing Python work is one more contender for the GIL the relay's event loop needs.
        self._sealer: ThreadPoolExecutor | None = None

    # --- the relay's side (no I/O) -----------------------------------------------------------------

    async def open(self, info: SessionInfo) -> FrameTap | None:
        consent = self.consents.lookup(info.resource_id, info.started_at)
        if consent is None:
            return None  # C1: no consent, no recording, no state
        recording = LiveRecording(
            info=info,
            consent=consent,
            buffer=FrameBuffer(budget=self.budget, session_cap=self.settings.session_cap_bytes),
            key=RecordingKey(info.request_id, info.started_at),
            opened_mono=time.monotonic(),
            # A random phase: calls that start together (a load test, the top of the hour) would otherwise
            # seal together every segment, and that burst of sealing delays every relayed frame at once.
            last_seal_mono=time.monotonic() - random.uniform(0, self.settings.segment_seconds),  # noqa: S311
        )
        self.live[info.request_id] = recording
        self.metrics.active.set(len(self.live))
        return RecordingTap(recording)

    # --- the sealer ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="recorder-sealer")

    async def stop(self, timeout: float = 10.0) -> None:
        """Seal what can be sealed within `timeout`, then stop."""
        for recording in self.live.values():
            if recording.end is None:
                recording.end = EndRecord(int((time.monotonic() - recording.opened_mono) * 1e6), 0, 0, "relay stopped")
        deadline = time.monotonic() + timeout
        while self.live and time.monotonic() < deadline:
            await asyncio.sleep(self.settings.tick_s)
        for task in (self._task, self._upkeep):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for task in self._inflight.values():
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        if self._sealer is not None:
            self._sealer.shutdown(wait=False, cancel_futures=True)
            self._sealer = None

    async def run(self) -> None:
        """Every `tick_s`, every recording gets one step; steps run side by side, so one slow region or
        recording never holds up the others, and a recording never has two steps at once. The database
        upkeep (heartbeat, recovery) runs beside them: a hung query holds up neither steps nor appends (C8).

        Between ticks, every `seal_pace_s`, streaming recordings that are due are sealed: recordings fall due
        at their own (random) phases, and a fine pace seals them as they do, a few at a time, where a coarse
        tick would seal a tick's worth back to back and hold up relayed frames meanwhile."""
        inflight = self._inflight
        live = self.live
        streaming = Phase.STREAMING
        settings = self.settings
        pace = min(settings.seal_pace_s, settings.tick_s)
        rate = settings.starts_per_s
        burst = max(1.0, rate * pace)
        starts = burst  # a token bucket: recordings that may start now
        next_tick = last = 0.0
        while True:
            started = time.monotonic()
            tick = started >= next_tick
            if tick:
                next_tick = started + settings.tick_s
            starts = min(burst, starts + (started - last) * rate)
            last = started
            for request_id, recording in list(live.items()):
                phase = recording.phase
                starting = False
                if phase is streaming and not recording.pending:
                    if not self._due(recording, started):
                        continue  # its step would do nothing: no task for it
                elif phase in STARTING:
                    # Started at the pace too, a few at a time: a burst of new calls would otherwise make every
                    # data key, row and blob in one tick while the relay carries the calls' first frames.
                    if starts < 1 or started < recording.retry.next_try:
                        continue
                    starting = True
                elif not tick:
                    continue
                task = inflight.get(request_id)
                if task is None or task.done():
                    if starting:
                        starts -= 1
                    inflight[request_id] = asyncio.create_task(self._guarded_step(recording))
            if tick:
                for request_id in [r for r, t in inflight.items() if t.done() and r not in live]:
                    del inflight[request_id]
                if self._upkeep is None or self._upkeep.done():
                    self._upkeep = asyncio.create_task(self._database_upkeep(), name="recorder-upkeep")
            # No recording (an idle replica): nothing can fall due before the next tick.
            wake = started + pace if live else next_tick
            await asyncio.sleep(max(0.0, wake - time.monotonic()))

    async def _guarded_step(self, recording: LiveRecording) -> None:
        try:
            await self.step(recording)
        except Exception as exc:  # a bug here must never take the sealer down
            self.metrics.errors.labels("sealer_bug").inc()
            log.error("recording.sealer.error", request_id=recording.info.request_id, error=type(exc).__name__,
                      phase=recording.phase)
            if recording.phase not in ENDED:  # a bug after the recording was forgotten leaves nothing to give up
                self._fail(recording, IncompleteReason.INTERNAL_ERROR, give_up=True)

    async def step(self, recording: LiveRecording) -> None:
        """One look at one recording: do what its phase asks, as far as it gets. Never raises on I/O.

        The phase is read again after every await: an erasure may abandon the recording meanwhile, and then
        nothing more is started.
        """
        now = time.monotonic()
        if recording.phase in GIVEN_UP:
            await self._finish_abandoned(recording)
            return
        if now < recording.retry.next_try:
            return
        if recording.phase is Phase.NEEDS_KEY and not await self._attempt(
                recording, IncompleteReason.KEY_SERVICE_UNAVAILABLE, self._make_key(recording)):
            return
        if recording.phase is Phase.NEEDS_ROW and not await self._start_row(recording):
            return
        if recording.phase is Phase.NEEDS_BLOB and not await self._attempt(
                recording, IncompleteReason.STORE_UNAVAILABLE, self._create_blob(recording)):
            return
        if recording.phase is Phase.STREAMING and self._due(recording, now):
            await self._seal(recording, now)
        if recording.phase in APPENDS and recording.pending and not await self._attempt(
                recording, IncompleteReason.STORE_UNAVAILABLE, self._append(recording)):
            return
        if recording.phase is Phase.FINAL_SEALED and not recording.pending and recording.row is RowState.WRITTEN:
            await self._attempt(recording, IncompleteReason.DATABASE_UNAVAILABLE, self._finish(recording),
                                deadline=self.settings.db_timeout_s)

    def _due(self, recording: LiveRecording, now: float) -> bool:
        if recording.end is not None:
            return True
        return (recording.buffer.buffered >= self.settings.segment_bytes
                or now - recording.last_seal_mono >= self.settings.segment_seconds)

    async def _attempt(self, recording: LiveRecording, reason: IncompleteReason,
                       work: Coroutine[object, object, None], *, deadline: float | None = None) -> bool:
        """Await `work` (within `deadline` s if given); on failure back off, and past the retry deadline
        give the recording up (C8)."""
        try:
            async with asyncio.timeout(deadline):
                await work
        except Exception as exc:
            self.metrics.errors.labels(reason).inc()
            log.warning("recording.retry", request_id=recording.info.request_id, reason=reason,
                        error=type(exc).__name__)
            outage = reason is IncompleteReason.DATABASE_UNAVAILABLE and self._database_failed(exc)
            self._fail(recording, reason, give_up=False, database_away=outage)
            return False
        if reason is IncompleteReason.DATABASE_UNAVAILABLE:
            self._database_answered()
        recording.retry.succeeded()
        return True

    def _fail(self, recording: LiveRecording, reason: IncompleteReason, *, give_up: bool,
              database_away: bool = False) -> None:
        recording.failure = reason
        now = time.monotonic()
        deadline = self.settings.retry_deadline_s
        if database_away and recording.phase is Phase.FINAL_SEALED:
            # Everything is stored; only the row's close is left, and it holds no frame in memory: wait for
            # the database however long it is away (C8), rather than leave the recording to recovery.
            deadline = math.inf
        if reason is IncompleteReason.STORE_UNAVAILABLE and recording.phase in APPENDS and not give_up:
            if recording.end is None:
                # The call is live: wait for the store however long it is away. Memory stays within the C9 caps
                # (what is sealed but not stored counts against them); past them frames are dropped from the
                # recording and a gap is marked, and recording resumes when the store is back.
                deadline = math.inf
            else:
                # The call has ended: the store gets `retry_deadline_s` from the end to take what is left.
                ended = recording.opened_mono + recording.end.offset_us / 1e6
                since = recording.retry.failing_since
                if since is not None and since < ended:
                    recording.retry.failing_since = ended
        if recording.retry.failed(now, deadline) or give_up:
            recording.apply(Event.ABANDON)

    # --- start ------------------------------------------------------------------------------------------

    async def _make_key(self, recording: LiveRecording) -> None:
        info = recording.info
        keyring = self.keyrings.for_region(info.region)
        dek, wrapped = await create_data_key(keyring, region=info.region, request_id=info.request_id,
                                             started_at=info.started_at)
        recording.dek, recording.wrapped = dek, wrapped.to_bytes()
        recording.writer = SegmentWriter(dek, region=info.region, request_id=info.request_id)
        recording.apply(Event.KEY_MADE)

    async def _create_blob(self, recording: LiveRecording) -> None:
        assert recording.writer is not None  # noqa: S101 - set with the DEK
        store = self.stores.store(recording.info.region)
        await store.create(recording.key)
        if recording.offset == 0:
            recording.offset = await store.append(recording.key, recording.writer.header, offset=0)
        recording.apply(Event.BLOB_CREATED)

    async def _start_row(self, recording: LiveRecording) -> bool:
        """The row before the blob, as a rule; with the database away (refused, or silent past
        `db_timeout_s`) the row is deferred and the blob goes first, so the database never holds up a
        recording (C8). Returns True when the recording may go on to its blob."""
        if not self._database_away:
            try:
                async with asyncio.timeout(self.settings.db_timeout_s):
                    covered = await self._insert_row(recording)
            except Exception as exc:
                reason = IncompleteReason.DATABASE_UNAVAILABLE
                self.metrics.errors.labels(reason).inc()
                log.warning("recording.retry", request_id=recording.info.request_id, reason=reason,
                            error=type(exc).__name__)
                if not self._database_failed(exc):
                    self._fail(recording, reason, give_up=False)  # a statement's error: retried
                    return False
            else:
                self._database_answered()
                recording.retry.succeeded()
                if covered:
                    recording.apply_row(RowEvent.WRITTEN)
                recording.apply(Event.ROW_WRITTEN if covered else Event.CONSENT_ENDED)
                return covered and recording.phase is Phase.NEEDS_BLOB
        recording.apply_row(RowEvent.DEFERRED)
        recording.apply(Event.ROW_DEFERRED)
        self.metrics.errors.labels("row_deferred").inc()
        log.warning("recording.row_deferred", request_id=recording.info.request_id, region=recording.info.region)
        return recording.phase is Phase.NEEDS_BLOB

    @property
    def database_away(self) -> bool:
        """True since a database step failed as an outage, until one succeeds."""
        return self._database_away

    def _database_answered(self) -> None:
        if self._database_away:
            self._database_away = False
            self._database_back_mono = time.monotonic()
            log.info("recording.database_back")

    def _database_failed(self, exc: BaseException) -> bool:
        """Note a failed database step; True when it says the database is away (refused, dropped, silent)."""
        away = isinstance(exc, TimeoutError) or is_database_outage(exc)
        if away:
            self._database_away = True
        return away

    async def _insert_row(self, recording: LiveRecording, *, failed: IncompleteReason | None = None) -> bool:
        """The row and its `recording.started` entry, in one transaction (C6). `failed`: it never started,
        or (a deferred row) it was given up before its row could be written. False: the consent does not
        cover the session, and nothing was written.

        The consent is checked once more in the database: it must have been in force when the session
        began (the cache may lag by `consent_refresh_s`), and it must not have been erased since (C1).
        A session that began under a consent later withdrawn is recorded to its end. A deferred row carries
        the progress made meanwhile and keeps its data key, so what was stored stays readable.
        """
        info, consent = recording.info, recording.consent
        keep_key = recording.row is RowState.DEFERRED or not failed
        async with self.session_factory() as session:
            if await session.get(Recording, info.request_id) is not None:
                written_before = True  # an earlier try committed, but its answer was lost (a hung database)
            elif not await consent_covers(session=session, consent_id=consent.consent_id,
                                          session_start=info.started_at):
                recording.failure = IncompleteReason.CONSENT_ENDED
                return False  # nothing to write, ever
            else:
                written_before = False
                await self._add_row(session, recording, failed=failed, keep_key=keep_key)
                await session.commit()
        if written_before and failed:
            await self._close_row(recording, state=RecordingState.INCOMPLETE, reason=failed,
                                  dropped=recording.buffer.dropped_frames)
        self.metrics.started.inc()
        log.info("recording.started", request_id=info.request_id, region=info.region,
                 deferred=recording.row is RowState.DEFERRED)
        return True

    async def _add_row(self, session: AsyncSession, recording: LiveRecording, *, failed: IncompleteReason | None,
                       keep_key: bool) -> None:
        """Add the row and its entries to `session` (the caller commits)."""
        info, consent = recording.info, recording.consent
        bucket = recording.key.hour
        session.add(Recording(
            request_id=info.request_id, resource_id=info.resource_id, region=info.region,
            ticket_id=consent.ticket_id, consent_id=consent.consent_id, correlation_id=info.correlation_id,
            started_at=info.started_at, bucket_start=bucket,
            wrapped_dek=recording.wrapped if keep_key else None,
            blob_name=recording.key.name, state=RecordingState.INCOMPLETE if failed else RecordingState.RECORDING,
            incomplete_reason=failed, ended_at=self.clock.now() if failed else None,
            owner=None if failed else self.replica_id, heartbeat_at=self.clock.now(),
            segments=recording.segments, bytes_committed=recording.offset, frames=recording.frames,
        ))
        await append_entry(
            session=session, clock=self.clock, actor=SYSTEM, action=AuditAction.RECORDING_STARTED,
            subjects=Subjects(request_id=info.request_id, resource=info.resource_id, ticket=consent.ticket_id),
            detail={"region": info.region, "started_at": detail_time(info.started_at),
                    "kek_bucket": kek_bucket(info.started_at), "consent": consent.consent_id},
        )
        if failed:
            await append_entry(
                session=session, clock=self.clock, actor=SYSTEM, action=AuditAction.RECORDING_INCOMPLETE,
                subjects=Subjects(request_id=info.request_id), detail={"reason": failed},
            )

    # --- seal and append ------------------------------------------------------------------------------

    async def _seal(self, recording: LiveRecording, now: float) -> None:
        """Take the buffer on the loop (the tap appends to it there); cut, encode and encrypt in a thread, so
        sealing many recordings at once never holds the relay's event loop for long: the loop's share is a
        list swap and, afterwards, one append per segment."""
        writer = recording.writer
        assert writer is not None  # noqa: S101 - only called once started
        items, size = recording.buffer.take()
        end = recording.end
        final = end is not None
        max_bytes = self.settings.segment_max_bytes
        if self._sealer is None:
            self._sealer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder-sealer")

        def seal_runs() -> list[tuple[bytes, int]]:
            runs = split_for_segments(items, max_bytes, MARKER_MAX_BYTES if final else 0)
            runs[-1] = (runs[-1][0], size - sum(accounted for _, accounted in runs[:-1]))  # the sizes add up exactly
            last = len(runs) - 1
            # bytes() here, not on the loop: the store takes bytes, and a segment is up to 1 MiB to copy.
            sealed = [(bytes(writer.seal(encode_items(run, end if i == last else None), final=final and i == last)),
                       accounted) for i, (run, accounted) in enumerate(runs)]
            # The frames are freed here, on this thread, not when the loop's coroutine lets go of them: a
            # segment's few hundred payloads cost the relay's event loop nothing.
            items.clear()
            runs.clear()
            return sealed

        sealed = await asyncio.get_running_loop().run_in_executor(self._sealer, seal_runs)
        for segment, accounted in sealed:
            recording.pending.append((segment, accounted))
            self.metrics.sealed_bytes.inc(len(segment))
        recording.last_seal_mono = now
        if final:
            recording.apply(Event.LAST_SEGMENT_SEALED)

    async def _append(self, recording: LiveRecording) -> None:
        store = self.stores.store(recording.info.region)
        while recording.pending and recording.phase in APPENDS:
            sealed, size = recording.pending[0]
            recording.offset = await store.append(recording.key, sealed, offset=recording.offset)
            recording.pending.pop(0)
            recording.segments += 1
            recording.buffer.release(size)

    # --- finish ---------------------------------------------------------------------------------------

    async def _finish(self, recording: LiveRecording) -> None:
        dropped = recording.buffer.dropped_frames
        await self._close_row(recording, state=RecordingState.COMPLETE, reason=None, dropped=dropped)
        if recording.phase is not Phase.FINAL_SEALED:
            return  # abandoned meanwhile (an erasure): its own finish finds the row closed and adds nothing
        self._forget(recording, Event.FINISHED)
        self.metrics.completed.labels("complete").inc()
        log.info("recording.complete", request_id=recording.info.request_id, segments=recording.segments,
                 bytes=recording.offset, frames=recording.frames, dropped_frames=dropped)

    async def _finish_abandoned(self, recording: LiveRecording) -> None:
        """Give up: release memory now; record `incomplete(reason)` if the row exists (best effort)."""
        reason = recording.failure or IncompleteReason.INTERNAL_ERROR
        for _, size in recording.pending:
            recording.buffer.release(size)
        recording.pending.clear()
        _, size = recording.buffer.take()
        recording.buffer.release(size)
        # The row's state is only read here, never moved: the upkeep may be writing a deferred row meanwhile,
        # and it alone moves a deferred row on.
        try:
            async with asyncio.timeout(self.settings.db_timeout_s):
                if recording.phase is Phase.ABANDONED and recording.row is RowState.DEFERRED:
                    # Given up before its deferred row was written: the row says incomplete and keeps the key.
                    if not await self._insert_row(recording, failed=reason):
                        await self._delete_unconsented_blob(recording)
                elif recording.phase is Phase.ABANDONED:
                    await self._close_row(recording, state=RecordingState.INCOMPLETE, reason=reason,
                                          dropped=recording.buffer.dropped_frames)
                elif recording.phase is Phase.ABANDONED_BEFORE_ROW:
                    # Never started (key service or database down): leave a visible, keyless row if we can.
                    await self._insert_row(recording, failed=reason)
                elif recording.row is RowState.REFUSED:
                    # DISCARDING a deferred row: the database said the consent did not cover the session.
                    await self._delete_unconsented_blob(recording)
            # DISCARDING otherwise: the consent had ended, nothing was ever written and nothing will be.
        except Exception:
            # The row stays `recording` (or never exists: the blob is an orphan, docs/RETENTION.md); recovery
            # closes stale rows by heartbeat.
            log.warning("recording.close_failed", request_id=recording.info.request_id,
                        row_deferred=recording.row is RowState.DEFERRED)
        self._forget(recording, Event.RELEASED)
        self.metrics.completed.labels("incomplete").inc()
        log.warning("recording.incomplete", request_id=recording.info.request_id, reason=reason)

    async def _close_row(self, recording: LiveRecording, *, state: RecordingState, reason: IncompleteReason | None,
                         dropped: int) -> None:
        info = recording.info
        async with self.session_factory() as session:
            result = await session.execute(
                update(Recording).where(Recording.request_id == info.request_id,
                                         Recording.state == RecordingState.RECORDING)
                .values(state=state, incomplete_reason=reason, ended_at=self.clock.now(),
                        segments=recording.segments, bytes_committed=recording.offset, frames=recording.frames,
                        dropped_frames=dropped, owner=None)
            )
            if getattr(result, "rowcount", 0) == 0:
                await session.rollback()
                return  # already closed elsewhere (recovery or erasure): nothing to add
            await append_entry(
                session=session, clock=self.clock, actor=SYSTEM, action=AuditAction.RECORDING_SEALED_SUMMARY,
                subjects=Subjects(request_id=info.request_id),
                detail={"segments": recording.segments, "bytes": recording.offset, "frames": recording.frames,
                        "dropped_frames": dropped, "complete": state is RecordingState.COMPLETE,
                        "duration_ms": int((time.monotonic() - recording.opened_mono) * 1000)},
            )
            if state is RecordingState.INCOMPLETE:
                await append_entry(
                    session=session, clock=self.clock, actor=SYSTEM, action=AuditAction.RECORDING_INCOMPLETE,
                    subjects=Subjects(request_id=info.request_id),
                    detail={"reason": reason or "unknown", "dropped_frames": dropped},
                )
            await session.commit()

    def _forget(self, recording: LiveRecording, event: Event) -> None:
        recording.apply(event)
        self.live.pop(recording.info.request_id, None)
        if recording.dek is not None:
            recording.dek.destroy()
        self.metrics.active.set(len(self.live))
        self.metrics.dropped_frames.inc(recording.buffer.dropped_frames)

    def abandon(self, request_ids: set[RequestId], reason: IncompleteReason) -> None:
        """Stop recording these sessions now (their consent was erased): nothing more is stored."""
        for request_id in request_ids & set(self.live):
            recording = self.live[request_id]
            recording.failure = reason
            recording.apply(Event.ABANDON)

    async def _delete_unconsented_blob(self, recording: LiveRecording) -> None:
        """A deferred row's late consent check said no (C1): delete what was stored. Its data key never left
        memory, so it was unreadable from the start; a delete that fails leaves an orphan the sweep removes."""
        try:
            await self.stores.store(recording.info.region).delete(recording.key)
        except StorageError as exc:
            log.warning("recording.discard_delete_failed", request_id=recording.info.request_id, error=exc.code)
            return
        log.warning("recording.discarded", request_id=recording.info.request_id, reason="consent_ended")

    async def _database_upkeep(self) -> None:
        """Deferred rows, heartbeat and recovery, each within `db_timeout_s`: a hung database costs one
        upkeep, no step."""
        for upkeep, name in ((self._write_deferred_rows, "deferred_rows"), (self._heartbeat, "heartbeat"),
                             (self._recover_stale, "recovery")):
            try:
                async with asyncio.timeout(self.settings.db_timeout_s):
                    await upkeep()
            except TimeoutError:
                self._database_away = True
                self.metrics.errors.labels(f"{name}_timeout").inc()
                log.warning("recording.upkeep_timeout", upkeep=name)

    async def _write_deferred_rows(self) -> None:
        """Write the rows deferred during a database outage, oldest first, each with its progress so far and
        its `recording.started` entry; at the first outage stop and try again after a backoff."""
        now = time.monotonic()
        waiting = [r for r in self.live.values() if r.row is RowState.DEFERRED and r.phase in OWNS_ROW]
        if not waiting or now < self._deferred_retry.next_try:
            return
        for recording in sorted(waiting, key=lambda r: r.opened_mono):
            try:
                covered = await self._insert_row(recording)
            except Exception as exc:
                self.metrics.errors.labels("deferred_row_failed").inc()
                log.warning("recording.deferred_row_failed", request_id=recording.info.request_id,
                            error=type(exc).__name__, waiting=len(waiting))
                if self._database_failed(exc):
                    self._deferred_retry.failed(now, math.inf)  # still away: the rest wait with it
                    return
                # This row's own statement failed: its retry deadline applies, the others go on.
                self._fail(recording, IncompleteReason.DATABASE_UNAVAILABLE, give_up=False)
                continue
            self._database_answered()
            self._deferred_retry.succeeded()
            if covered:
                recording.apply_row(RowEvent.DEFERRED_WRITTEN)
            elif recording.phase in OWNS_ROW:
                recording.apply_row(RowEvent.REFUSED)
                recording.apply(Event.CONSENT_ENDED)  # its finish deletes what was stored

    async def _recover_stale(self) -> None:
        """At start and every half `stale_after_s`: close what dead replicas left `recording`."""
        now = time.monotonic()
        if self._last_recovery and now - self._last_recovery < self.settings.stale_after_s / 2:
            return
        if now - self._database_back_mono < 2 * self.settings.heartbeat_s:
            # The database has just come back: every replica's heartbeats were refused as ours were, so
            # the rows look stale though their writers live. Give them two heartbeats to say so first.
            return
        self._last_recovery = now
        try:
            await close_stale_recordings(
                session_factory=self.session_factory, clock=self.clock, stores=self.stores,
                stale_after=timedelta(seconds=self.settings.stale_after_s), live=set(self.live))
        except Exception as exc:
            self._database_failed(exc)
            self.metrics.errors.labels("recovery_failed").inc()
            log.warning("recording.recovery_failed")

    # --- heartbeat --------------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat < self.settings.heartbeat_s:
            return
        self._last_heartbeat = now
        ids = [r.info.request_id for r in self.live.values() if r.phase in OWNS_ROW and r.row is RowState.WRITTEN]
        if not ids:
            return
        try:
            async with self.session_factory() as session:
                await session.execute(
                    update(Recording).where(Recording.request_id.in_(ids), Recording.state == RecordingState.RECORDING)
                    .values(heartbeat_at=self.clock.now(), owner=self.replica_id)
                )
                await session.commit()
            self._database_answered()
        except Exception as exc:
            self._database_failed(exc)
            self.metrics.errors.labels("heartbeat_failed").inc()
            log.warning("recording.heartbeat_failed", recordings=len(ids))

