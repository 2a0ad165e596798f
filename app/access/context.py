"""The access domain's parts, built once in create_app and shared by the API, the console and the jobs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request

from app.access.metrics import AccessMetrics
from app.access.notify import Notifier
from app.access.playback.service import SawLookup
from app.access.ratelimit import ReadLimiter
from app.access.service import StaffDirectory


@dataclass
class AccessContext:
    directory: StaffDirectory
    saws: SawLookup
    limiter: ReadLimiter
    metrics: AccessMetrics
    retention: timedelta
    notifier: Notifier


def get_access_context(request: Request) -> AccessContext:
    """The one place that reads it from app.state (typed for everyone else)."""
    ctx: AccessContext = request.app.state.access
    return ctx


AccessDep = Annotated[AccessContext, Depends(get_access_context)]
