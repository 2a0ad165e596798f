"""The one typed context: every long-lived part of a process, built once by `app.wiring.build_context`.

The app, the CLI and the worker hold the same `AppContext`; routes reach it (or one part of it) only through
`get_context` (over `context_of`, the one reader of `app.state`). The part types are imported for the type
checker only, so importing this module (and the dependency aliases built on it) loads no domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI
from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from app.access.context import AccessContext
    from app.audit.auditors import AuditorCheck
    from app.audit.runtime import AuditRuntime
    from app.capture.recorder import Recorder
    from app.clock import Clock
    from app.config import Settings
    from app.console.auth import ConsoleState
    from app.identity.dev_issuer import DevIssuer
    from app.identity.principal import TokenVerifier
    from app.identity.staff.grant_endings import GrantEnder
    from app.metrics import Metrics
    from app.relay.routes import Relay
    from app.resources.directory import ResourceDirectory
    from app.storage.router import RegionRouter
    from app.tickets.consent_cache import ConsentCache
    from app.tracing.provider import Tracing
    from app.vault.keyring import RegionKeyrings


@dataclass
class AppContext:
    """Every long-lived part, passed down explicitly; never read from a global."""

    settings: Settings
    clock: Clock
    engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    request_engine: AsyncEngine  # API requests' own pool, every wait bounded (the engine itself on SQLite)
    request_session_factory: async_sessionmaker[AsyncSession]
    metrics: Metrics
    admin_token: str | None
    dev_issuer: DevIssuer | None  # loaded once: the token verifier, the dev routes and the console's sign-in
    token_verifier: TokenVerifier | None
    stores: RegionRouter
    keyrings: RegionKeyrings
    consents: ConsentCache
    recorder: Recorder
    resources: ResourceDirectory
    relay: Relay
    access: AccessContext
    audit: AuditRuntime
    auditors: AuditorCheck  # who the auditor is, for audit's routes (identity's `check_staff(Role.AUDITOR)`)
    grant_ender: GrantEnder  # a staff or ticket change ends grants (access's `AccessGrantEnder`)
    tracing: Tracing
    console: ConsoleState | None  # None when the console is switched off


def attach_context(app: FastAPI, ctx: AppContext) -> None:
    """create_app's one write: the app carries its context for `get_context`."""
    app.state.ctx = ctx


def context_of(app: FastAPI) -> AppContext:
    """The one place that reads `app.state`: create_app puts the context there and nothing else."""
    ctx: AppContext = app.state.ctx
    return ctx


def get_context(connection: HTTPConnection) -> AppContext:
    """The dependency every route reaches its parts through (`ContextDep` and the part aliases on it)."""
    return context_of(connection.app)


ContextDep = Annotated[AppContext, Depends(get_context)]
