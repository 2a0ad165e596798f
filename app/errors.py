"""Errors as classes with a stable machine code, rendered once as problem+json (RFC 9457)."""

from __future__ import annotations

from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.db import is_database_outage
from app.logs import get_logger

PROBLEM_JSON = "application/problem+json"

log = get_logger("voicelog.errors")


class AppError(Exception):
    """Base of every error a caller may see. `detail` is for humans and must never carry content."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"
    keeps_transaction: ClassVar[bool] = False  # True: what was written (the refusal's audit entry) is committed

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://voicelog.dev/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class NotFound(AppError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(AppError):
    status = 409
    code = "conflict"
    title = "Conflict"


class InvalidInput(AppError):
    status = 422
    code = "invalid_input"
    title = "The request is not valid"


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"
    title = "Authentication required"


class Forbidden(AppError):
    status = 403
    code = "forbidden"
    title = "Not allowed"


class DatabaseUnavailable(AppError):
    """The database refused, dropped or did not answer within the request timeout: try again shortly."""

    status = 503
    code = "database_unavailable"
    title = "The database is unavailable"
    retry_after_s: ClassVar[int] = 5


def problem_response(error: AppError, request: Request) -> JSONResponse:
    headers: dict[str, str] | None = None
    if error.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(error, DatabaseUnavailable):
        headers = {"Retry-After": str(error.retry_after_s)}
    return JSONResponse(
        error.to_problem(instance=request.url.path),
        status_code=error.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


_HTTP_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Not allowed"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("too_large", "Request too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
}


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as problem+json with a stable `code`; internals never leak."""

    async def on_app_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AppError)  # noqa: S101 - registered for AppError only
        return problem_response(exc, request)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)  # noqa: S101
        # Echo locations and messages, never the submitted values (they may be secrets).
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        err = InvalidInput("One or more fields are invalid.", errors=errors)
        return problem_response(err, request)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101
        code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "HTTP error"))
        err = AppError(str(exc.detail) if exc.detail else title)
        body = err.to_problem(instance=request.url.path)
        body.update(status=exc.status_code, code=code, title=title, type=f"https://voicelog.dev/problems/{code}")
        return JSONResponse(body, status_code=exc.status_code, media_type=PROBLEM_JSON, headers=exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_database_outage(exc):  # one the session dependency did not see (raised outside a request session)
            log.warning("database.unavailable", path=request.url.path, error=type(exc).__name__)
            return problem_response(DatabaseUnavailable("Try again shortly."), request)
        return problem_response(AppError("An unexpected error occurred."), request)

    app.add_exception_handler(AppError, on_app_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
