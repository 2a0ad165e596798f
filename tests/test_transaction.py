"""after_commit (app/transaction.py): a step runs once its transaction commits and never after a rollback,
whether or not the session had begun a transaction when the step was registered (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import create_engine, create_session_factory
from app.deps import get_session, settle_refusal
from app.errors import AppError
from app.transaction import after_commit, after_commit_once, discard_after_commit


@pytest.fixture
async def session_factory(app_db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(app_db_url)
    yield create_session_factory(engine)
    await engine.dispose()


async def test_a_step_runs_after_the_commit(session_factory: async_sessionmaker[AsyncSession]) -> None:
    ran: list[str] = []
    async with session_factory() as session:
        await session.execute(text("SELECT 1"))
        after_commit(session, lambda: ran.append("step"))
        assert ran == []
        await session.commit()
    assert ran == ["step"]


async def test_a_step_registered_once_runs_once_per_commit(session_factory: async_sessionmaker[AsyncSession]) -> None:
    """As a transaction queuing many audit entries wakes the sequencer: once per commit, again for the next one."""
    ran: list[str] = []

    def step() -> None:
        ran.append("step")

    async with session_factory() as session:
        for _ in range(3):
            after_commit_once(session, step)
        after_commit_once(session, lambda: ran.append("other"))
        await session.commit()
        assert ran == ["step", "other"]
        after_commit_once(session, step)
        await session.commit()
    assert ran == ["step", "other", "step"]


async def test_a_step_registered_on_a_fresh_session_does_not_survive_its_rollback(
        session_factory: async_sessionmaker[AsyncSession]) -> None:
    ran: list[str] = []
    async with session_factory() as session:
        after_commit(session, lambda: ran.append("rolled back"))  # no statement yet, no transaction begun
        await session.rollback()
        await session.execute(text("SELECT 1"))
        await session.commit()
        after_commit(session, lambda: ran.append("committed"))
        await session.commit()
    assert ran == ["committed"]


async def test_discard_drops_the_waiting_steps(session_factory: async_sessionmaker[AsyncSession]) -> None:
    ran: list[str] = []
    async with session_factory() as session:
        after_commit(session, lambda: ran.append("discarded"))
        discard_after_commit(session)
        await session.commit()
    assert ran == []


class _Refused(AppError):
    status = 409
    code = "refused"
    title = "Refused"


async def test_the_request_session_runs_no_step_of_a_failed_request_at_a_later_commit(
        session_factory: async_sessionmaker[AsyncSession]) -> None:
    ran: list[str] = []
    dependency = get_session(SimpleNamespace(request_session_factory=session_factory))  # type: ignore[arg-type]  # reads only this
    session = await anext(dependency)
    after_commit(session, lambda: ran.append("failed request"))
    with pytest.raises(_Refused):
        await dependency.athrow(_Refused("no"))
    await session.execute(text("SELECT 1"))
    await session.commit()
    assert ran == []


class _AuditedRefusal(_Refused):
    keeps_transaction = True


@pytest.mark.parametrize(("error", "kept"), [(_Refused("no"), False), (_AuditedRefusal("no, and audited"), True)])
async def test_a_front_door_that_answers_a_refusal_itself_settles_it_as_the_request_session_does(
        session_factory: async_sessionmaker[AsyncSession], error: AppError, kept: bool) -> None:
    """The console answers a refusal with a message instead of raising it: `settle_refusal` keeps an audited
    refusal's writes (their commit runs the waiting steps) and rolls any other back (its steps never run)."""
    ran: list[str] = []
    async with session_factory() as session:
        await session.execute(text("SELECT 1"))
        after_commit(session, lambda: ran.append("written before the refusal"))
        await settle_refusal(session, error)
        await session.execute(text("SELECT 1"))
        await session.commit()  # the request's own commit, as get_session makes it after the console's redirect
    assert ran == (["written before the refusal"] if kept else [])
