"""Steps that must follow a commit (forget a cached view of what just changed), registered by the service
that made the change and run by whoever commits its transaction: the request's session dependency, a CLI
or a job. A rollback drops them."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

_AFTER_COMMIT = "voicelog.after_commit"


def after_commit(session: AsyncSession, step: Callable[[], None]) -> None:
    """Run `step` once `session`'s transaction has committed (a reload begun after it sees the change).

    The step belongs to the transaction in progress, begun here if there is none yet: without one, a
    `rollback()` is a no-op that fires no event, and the step would outlive it into a later commit."""
    sync = session.sync_session
    if not sync.in_transaction():
        sync.begin()  # no I/O: the connection is still taken at the first statement
    sync.info.setdefault(_AFTER_COMMIT, []).append(step)


def after_commit_once(session: AsyncSession, step: Callable[[], None]) -> None:
    """`after_commit`, unless `step` (the same function object) already waits on this transaction: a
    transaction that queues many audit entries wakes their sequencer once."""
    steps = session.sync_session.info.get(_AFTER_COMMIT, [])
    if not any(waiting is step for waiting in steps):
        after_commit(session, step)


def discard_after_commit(session: AsyncSession) -> None:
    """Drop every step still waiting on `session`; whoever rolls back calls it, so none reaches a later commit."""
    session.sync_session.info.pop(_AFTER_COMMIT, None)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for step in session.info.pop(_AFTER_COMMIT, []):
        step()


@event.listens_for(Session, "after_rollback")
def _drop_after_commit(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)
