"""The console's Jinja2 environment (autoescaped) and the small filters its templates use."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import HTMLResponse

from app.access.grant_status import GrantStatus
from app.console.sessions import ConsoleSession

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


def _when(value: datetime | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | int | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds / 86400:.1f} days"


def _iso(value: datetime | str | None) -> str:
    if isinstance(value, str):  # already ISO (the access log's JSON shape)
        return value
    return value.isoformat() if value is not None else ""


def _grant_label(value: str) -> str:
    """The words for a derived grant status (`GrantStatus.label`), for rows and JSON alike."""
    return GrantStatus(value).label


templates.env.filters["when"] = _when
templates.env.filters["duration"] = _duration
templates.env.filters["iso"] = _iso
templates.env.filters["grant_label"] = _grant_label


def page(request: Request, name: str, session: ConsoleSession | None, *, status_code: int = 200,
         **context: Any) -> HTMLResponse:
    """Render `name` with what every page needs: the signed-in principal, its CSRF token, flashes."""
    principal = session.principal if session is not None else None
    base = {
        "principal": principal,
        "roles": sorted(r.value for r in principal.roles) if principal else [],
        "csrf": session.csrf if session is not None else "",
        "flashes": session.take_flashes() if session is not None else [],
        "path": request.url.path,
    }
    return templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code)
