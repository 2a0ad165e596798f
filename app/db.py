"""Database engine, session factory, declarative Base and the UTC timestamp type.

PostgreSQL (asyncpg) in production, SQLite (aiosqlite) in the embedded default and in tests. Services
`flush()`, never `commit()`: the request's session dependency commits or rolls back once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import DateTime, MetaData, String, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from app.transaction import discard_after_commit

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on both databases; naive datetimes are refused, never guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite stores text; store naive UTC so ordering and comparison stay lexical.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


StateT = TypeVar("StateT", bound=StrEnum)


class StrEnumText(TypeDecorator[StateT]):
    """A StrEnum stored as its value in a plain VARCHAR (the schema is that of `String(length)`): rows read
    back as members, and a value outside the enum is refused on write, never stored."""

    impl = String
    cache_ok = True

    def __init__(self, enum: type[StateT], length: int) -> None:
        super().__init__(length)
        self.enum, self.length = enum, length

    def process_bind_param(self, value: StateT | str | None, dialect: Dialect) -> str | None:  # noqa: ARG002
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> StateT | None:  # noqa: ARG002
        return None if value is None else self.enum(value)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


# asyncpg waits 60 s for a server that accepts and never answers; every background loop and request that
# opens a connection then holds its pool slot that long.
CONNECT_TIMEOUT_S = 10.0


def create_engine(
    url: str, *, echo: bool = False, pool_size: int = 10, max_overflow: int = 20,
    connect_timeout_s: float = CONNECT_TIMEOUT_S, statement_timeout_s: float | None = None,
) -> AsyncEngine:
    """Build the async engine; SQLite gets foreign keys, WAL and a busy timeout on every connection.

    On PostgreSQL each process holds up to `pool_size + max_overflow` connections: with one server shared by
    every replica of every region, that product is the connection budget (docs/DEPLOY.md, "Capacity").
    A new connection gives up after `connect_timeout_s`. With `statement_timeout_s` (the API requests' engine),
    each statement and the wait for a pooled connection are bounded too, client side (a hung server) and
    server side (a slow query); background work's engine leaves it unset, so long jobs are never cut.
    """
    kwargs: dict[str, Any] = {"echo": echo}
    if url.startswith("postgresql"):
        kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True)
        if statement_timeout_s is not None:
            kwargs["pool_timeout"] = statement_timeout_s
    if url.startswith("postgresql+asyncpg"):
        connect_args: dict[str, Any] = {"timeout": connect_timeout_s}
        if statement_timeout_s is not None:
            connect_args["command_timeout"] = statement_timeout_s
            connect_args["server_settings"] = {"statement_timeout": str(int(statement_timeout_s * 1000))}
        kwargs["connect_args"] = connect_args
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def create_request_engine(url: str, *, pool_size: int, connect_timeout_s: float, timeout_s: float) -> AsyncEngine:
    """The API requests' own pool, every wait bounded by `timeout_s` (PostgreSQL; callers share the one
    engine on SQLite, a local file with nothing to hang on)."""
    return create_engine(url, pool_size=pool_size, max_overflow=0,
                         connect_timeout_s=min(connect_timeout_s, timeout_s), statement_timeout_s=timeout_s)


def is_database_outage(exc: BaseException) -> bool:
    """An error that says the database cannot be reached or did not answer in time (refused, terminated,
    timed out, pool exhausted), as opposed to one a statement caused (a constraint, a bad value)."""
    if isinstance(exc, sa_exc.DBAPIError):
        # No statement: the error came opening a connection (refused, not accepting connections, too many).
        return exc.statement is None or exc.connection_invalidated \
            or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) or _is_outage_error(exc.orig)
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True
    if isinstance(exc, TimeoutError | OSError | asyncpg.PostgresError | asyncpg.InterfaceError):
        return _is_outage_error(exc)
    return False


def _is_outage_error(exc: BaseException | None) -> bool:
    if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.InterfaceError | asyncpg.CannotConnectNowError
                  | asyncpg.QueryCanceledError | asyncpg.AdminShutdownError):
        return True
    if isinstance(exc, TimeoutError | OSError):
        # Raised raw by asyncpg's connect and command timeout: count it when it came from the database driver.
        return any(_from_driver(tb.tb_frame.f_globals.get("__name__", "")) for tb in _frames(exc.__traceback__))
    return False


def _from_driver(module: str) -> bool:
    return module.split(".")[0] in {"asyncpg", "sqlalchemy"}


def _frames(tb: TracebackType | None) -> Iterator[TracebackType]:
    while tb is not None:
        yield tb
        tb = tb.tb_next


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def session_scope(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit on success, roll back on any error."""
    async with factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            discard_after_commit(session)
            raise
