"""ASGI middleware: one SERVER span per HTTP request, named by route template, with no URL or body in it.

It sits inside the other middleware so it sees the scope the router fills in (`route`), and names the span
`GET /access/recordings/{request_id}/audio/{direction}` rather than the concrete path. The query string,
headers and bodies never reach a span: they can carry credentials, tokens and customer data.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.tracing.provider import Tracing

UNMATCHED = "(unmatched)"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})


def route_template(scope: Scope) -> str:
    """The matched route's template (`/tickets/{ticket_id}`), a mount's prefix, or `(unmatched)`."""
    route: Any = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(template, str):
        return template
    root = scope.get("root_path", "")
    return f"{root}/*" if isinstance(root, str) and root and scope.get("endpoint") else UNMATCHED


class TracingMiddleware:
    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # WebSocket sessions get their span from the relay itself
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        method = method if method in KNOWN_METHODS else "_OTHER"  # a caller's arbitrary token stays out
        status = 500
        span = self.tracing.tracer.start_span(
            f"{method} {UNMATCHED}", kind=SpanKind.SERVER, context=self.tracing.parent(scope["headers"]),
            attributes={"http.request.method": method, "url.scheme": scope.get("scheme", "http")},
        )

        async def traced_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                await self.app(scope, receive, traced_send)
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__name__)  # the type only: messages may hold data
            raise
        finally:
            route = route_template(scope)
            span.update_name(f"{method} {route}")
            span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
