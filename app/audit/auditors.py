"""Who the auditor is: the one thing audit's routes need of identity, asked through a protocol audit owns.

Every service calls audit and audit calls none of them, so the check (token AND active staff record with
the `auditor` role, C5) is not imported from identity: `app.wiring.build_context` puts identity's check on
the context (`AppContext.auditors`), as the relay takes the recorder through its own `TapFactory`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Protocol

from fastapi import Depends, Request

from app.context import ContextDep
from app.deps import SessionDep

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.context import AppContext


class Auditor(Protocol):
    """What a report records of the person who asked for it."""

    @property
    def subject(self) -> str: ...


class AuditorCheck(Protocol):
    """The caller of `request` as an auditor, or the refusal (401, 403) as an `AppError`."""

    async def __call__(self, request: Request, ctx: AppContext, session: AsyncSession, /) -> Auditor: ...


async def require_auditor(request: Request, ctx: ContextDep, session: SessionDep) -> Auditor:
    """The auditor routes' dependency: the context's check, in the request's own transaction."""
    return await ctx.auditors(request, ctx, session)


AuditorDep = Annotated[Auditor, Depends(require_auditor)]
