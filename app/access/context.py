"""The access domain's parts, built once in create_app and shared by the API, the console and the jobs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends

from app.access.metrics import AccessMetrics
from app.access.notify import Notifier
from app.access.playback.service import SawLookup
from app.access.ratelimit import ReadLimiter
from app.access.service import StaffDirectory
from app.context import ContextDep


@dataclass
class AccessContext:
    directory: StaffDirectory
    saws: SawLookup
    limiter: ReadLimiter
    metrics: AccessMetrics
    retention: timedelta
    notifier: Notifier


def get_access_context(ctx: ContextDep) -> AccessContext:
    return ctx.access


AccessDep = Annotated[AccessContext, Depends(get_access_context)]
