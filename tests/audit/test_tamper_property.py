"""Property: after any random run of actions, any single edit, deletion, insertion, swap, tail truncation or
careful rewrite done directly in the database (triggers bypassed, as a superuser would) is found by the
verifier, with the right kind and the right position (C6)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.checkpoints import CheckpointPolicy, FileCheckpointSink, export_checkpoints, list_checkpoints, seal
from app.audit.keys import FileKeyring
from app.audit.verifier import DamageKind, verify_chain
from app.clock import ManualClock
from app.db import create_engine, create_session_factory
from tests.audit import tamper
from tests.audit.scenario import append_and_chain, example_steps
from tests.fixtures.audit import AUDIT_EPOCH, disable_audit_triggers

EDITS = ("actor_id", "action", "detail", "request_id", "recorded_at", "prev_hash", "entry_hash")


@dataclass(frozen=True)
class Plan:
    steps: list[tuple[int, int, int]]  # (template, variant, seconds to the next step)
    seal_after: int  # also seal a checkpoint after this many steps (0: only at the end)
    act: tuple[Any, ...]  # the tamper and its parameters
    where: tuple[float, float]  # positions, as fractions of the chain


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    steps = draw(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 40), st.integers(0, 4000)),
                          min_size=2, max_size=18))
    act = draw(st.one_of(
        st.tuples(st.just("edit"), st.sampled_from(EDITS)),
        st.tuples(st.just("delete"), st.booleans()),  # renumber the rest to close the gap?
        st.tuples(st.just("insert"), st.booleans()),  # with a correct hash and link?
        st.tuples(st.just("swap")),
        st.tuples(st.just("truncate"), st.sampled_from(["rows", "head", "checkpoints"])),
        st.tuples(st.just("rewrite")),
    ))
    fraction = st.floats(0, 1, exclude_max=True)
    return Plan(steps, draw(st.integers(0, len(steps))), act, (draw(fraction), draw(fraction)))


def _pick(fraction: float, low: int, high: int) -> int:
    return low + int(fraction * (high - low + 1))


async def _tamper(session: AsyncSession, plan: Plan, n: int, pins: list[int]) -> tuple[DamageKind, int]:
    """Do the plan's one act; return the damage the verifier must report."""
    act, (f1, f2) = plan.act, plan.where
    await disable_audit_triggers(session)
    if act[0] == "edit":
        k = _pick(f1, 1, n)
        row = await tamper.entry(session, k)
        column = act[1]
        if column == "recorded_at":
            await tamper.edit_time(session, k, timedelta(microseconds=1))
        else:
            forged = {"actor_id": "mallory", "detail": '{"forged":1}', "request_id": "req-forged",
                      "prev_hash": "e" * 64, "entry_hash": "e" * 64,
                      "action": "saw.revoked" if row["action"] != "saw.revoked" else "admin.changed"}[column]
            await tamper.edit(session, k, column, forged)
        return DamageKind.EDITED, k
    if act[0] == "delete":
        k = _pick(f1, 1, n - 1)
        await tamper.delete(session, k, renumber=act[1])
        return DamageKind.DELETED, k
    if act[0] == "insert":
        k = _pick(f1, 1, n)
        await tamper.insert_forged(session, k, valid_hash=act[1])
        return DamageKind.INSERTED, k
    if act[0] == "swap":
        i = _pick(f1, 1, n - 1)
        j = _pick(f2, i + 1, n)
        await tamper.swap(session, i, j)
        return DamageKind.REORDERED, i
    if act[0] == "truncate":
        keep = _pick(f1, 1, n - 1)
        await tamper.truncate(session, keep, rewind_head=act[1] != "rows", drop_checkpoints=act[1] == "checkpoints")
        return DamageKind.TAIL_TRUNCATED, keep + 1
    k = _pick(f1, 1, n)
    await tamper.rewrite(session, k)
    # A careful rewrite is caught by the first checkpoint at or after it: the damage lies after the one before.
    return DamageKind.EDITED, max([p for p in pins if p < k], default=0) + 1


async def _build(session: AsyncSession, plan: Plan, clock: ManualClock, keyring: FileKeyring,
                 sink: FileCheckpointSink) -> tuple[int, list[int]]:
    for index, (template, variant, seconds) in enumerate(plan.steps, start=1):
        step = example_steps(variant, clock.now())[template]
        await append_and_chain(session, clock, [step], advance=lambda _i, s=seconds: timedelta(seconds=s))
        if index == plan.seal_after:
            await seal(session=session, clock=clock, keyring=keyring, policy=CheckpointPolicy(), force=True, wait=True)
    await seal(session=session, clock=clock, keyring=keyring, policy=CheckpointPolicy(), force=True, wait=True)
    await export_checkpoints(session=session, sink=sink)
    pins = [c.head_seq for c in await list_checkpoints(session)]
    return await tamper.count(session), pins


Session = Callable[[], Any]


def _run_examples(open_session: Callable[[], Any], tmp: Path, max_examples: int) -> None:
    keyring = FileKeyring(tmp / "keys")

    @settings(max_examples=max_examples, deadline=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(plan=plans())
    def example(plan: Plan) -> None:
        async def go() -> None:
            clock = ManualClock(AUDIT_EPOCH)
            sink = FileCheckpointSink(Path(tempfile.mkdtemp(dir=tmp)) / "checkpoints.jsonl")
            async with open_session() as (build, attack, check):
                n, pins = await _build(build, plan, clock, keyring, sink)
                clean = await verify_chain(session=build, keys=keyring.public_keys(),
                                           exported=await sink.read_all(), now=clock.now())
                assert clean.ok, clean.damage
                await _after_build(build)
                expected = await _tamper(attack, plan, n, pins)
                await _after_tamper(attack)
                result = await verify_chain(session=check, keys=keyring.public_keys(),
                                            exported=await sink.read_all(), now=clock.now())
            event(f"{plan.act} -> {result.damage.kind.value if result.damage else None}")
            assert result.damage is not None, f"{plan.act} went unnoticed"
            assert (result.damage.kind, result.damage.seq) == expected, result.damage

        asyncio.run(go())

    example()


async def _after_build(session: AsyncSession) -> None:
    if session.get_bind().dialect.name == "sqlite":
        await session.commit()


async def _after_tamper(session: AsyncSession) -> None:
    if session.get_bind().dialect.name == "sqlite":
        await session.commit()


@pytest.mark.slow
def test_a_single_tamper_is_found_with_its_kind_and_position(
    db_kind: str, audit_db_url: str, tmp_path: Path
) -> None:
    if db_kind == "postgresql":
        @asynccontextmanager
        async def open_session() -> AsyncIterator[tuple[AsyncSession, AsyncSession, AsyncSession]]:
            # One transaction per example, rolled back: build, bypass the triggers (SET LOCAL), tamper, verify.
            engine = create_engine(audit_db_url)
            try:
                async with engine.connect() as conn:
                    outer = await conn.begin()
                    session = AsyncSession(bind=conn, expire_on_commit=False)
                    try:
                        yield session, session, session
                    finally:
                        await session.close()
                        await outer.rollback()
            finally:
                await engine.dispose()
    else:
        template = Path(audit_db_url.removeprefix("sqlite+aiosqlite:///"))

        @asynccontextmanager
        async def open_session() -> AsyncIterator[tuple[AsyncSession, AsyncSession, AsyncSession]]:
            # A fresh copy of the migrated database per example; the triggers are dropped to tamper.
            copy = Path(tempfile.mkdtemp(dir=tmp_path)) / "audit.db"
            shutil.copyfile(template, copy)
            engine = create_engine(f"sqlite+aiosqlite:///{copy}")
            factory = create_session_factory(engine)
            try:
                async with factory() as build, factory() as attack, factory() as check:
                    yield build, attack, check
            finally:
                await engine.dispose()

    _run_examples(open_session, tmp_path, max_examples=60)
