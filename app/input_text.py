"""The three kinds of text a caller may send, checked at the edge: every schema, query and console form uses them.

- `SingleLine`: a name, label or reason. No control characters (Unicode Cc), no line or paragraph separators,
  no bidirectional overrides, no unpaired surrogates.
- `Prose`: what a human writes in a textarea (a justification). The same, except that line breaks and tabs
  are allowed; it is stored as written and audited in its `audit_form` (line breaks and tabs folded to spaces).
- `Identifier`: an id, an OIDC subject, a tenant: printable ASCII without spaces, 1..128 characters, the
  audit trail's own rule for actor and subject ids (`app.audit.actions.ID_PATTERN`).

Bad text is a 422 `invalid_input` (API) or a form error (console), never a 500 from deep inside a service.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Annotated, Final

from pydantic import AfterValidator, Field
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.audit.actions import ID_PATTERN, MAX_ID_LENGTH
from app.errors import PROBLEM_JSON, AppError, InvalidInput

# Bidi embeddings, overrides and isolates: they make a name or a reason render as something else.
_BIDI_CONTROLS: Final = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_LINE_BREAKS: Final = frozenset("\n\r\u2028\u2029\x85")
_PROSE_ALLOWED: Final = frozenset("\n\r\t")
_FOLDED: Final = re.compile(r"[\t\r\n]+")

IDENTIFIER_PATTERN: Final = ID_PATTERN.pattern
IDENTIFIER_RULE: Final = f"printable ASCII without spaces, 1 to {MAX_ID_LENGTH} characters"


class InvalidText(InvalidInput):
    code = "invalid_text"
    title = "A text field holds characters it may not"


def _refused_character(value: str, allowed: frozenset[str]) -> str | None:
    """A description of the first character `value` may not hold, or None."""
    for char in value:
        if char in allowed:
            continue
        category = unicodedata.category(char)
        if category == "Cc" or char in _LINE_BREAKS:
            return "control characters or line breaks"
        if category == "Cs":
            return "unpaired surrogates"
        if char in _BIDI_CONTROLS:
            return "bidirectional text controls"
    return None


def _single_line(value: str) -> str:
    refused = _refused_character(value, frozenset())
    if refused is not None:
        raise ValueError(f"must be one line of text without {refused}")
    return value


def _prose(value: str) -> str:
    refused = _refused_character(value, _PROSE_ALLOWED)
    if refused is not None:
        raise ValueError(f"may hold line breaks and tabs but no other {refused}")
    return value


def _identifier(value: str) -> str:
    if not ID_PATTERN.fullmatch(value):
        raise ValueError(f"must be {IDENTIFIER_RULE}")
    return value


SingleLine = Annotated[str, AfterValidator(_single_line)]
"""One line of human text; give its length with `Field(min_length=..., max_length=...)`."""

Prose = Annotated[str, AfterValidator(_prose)]
"""Human text with line breaks and tabs; give its length with `Field(...)`."""

Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=IDENTIFIER_PATTERN),
                      AfterValidator(_identifier)]
"""An id, subject or tenant: printable ASCII without spaces, at most 128 characters."""


def audit_form(prose: str, max_length: int) -> str:
    """Prose as an audit detail may hold it: line breaks and tabs folded to one space, cut to `max_length`.

    The row keeps the words as written; the audit entry keeps the same words on one line."""
    return _FOLDED.sub(" ", prose)[:max_length]


def _checked_form_text(value: str, rule: Callable[[str], str], *, field: str, max_length: int) -> str:
    value = value.strip()
    if len(value) > max_length:
        raise InvalidText(f"The {field} is longer than {max_length} characters.")
    try:
        return rule(value)
    except ValueError as refused:
        raise InvalidText(f"The {field} {refused}.") from None


def checked_single_line(value: str, *, field: str, max_length: int) -> str:
    """A console form's one-line field, stripped; InvalidText (a form error) when it may not be stored."""
    return _checked_form_text(value, _single_line, field=field, max_length=max_length)


def checked_prose(value: str, *, field: str, max_length: int) -> str:
    """A console form's textarea, stripped; InvalidText (a form error) when it may not be stored."""
    return _checked_form_text(value, _prose, field=field, max_length=max_length)


def checked_form_int(value: str | None, *, field: str, default: int, minimum: int, maximum: int) -> int:
    """A console form's whole number within bounds (absent: `default`); InvalidText otherwise."""
    text = (value or "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or not minimum <= int(text) <= maximum:
        raise InvalidText(f"The {field} must be a whole number from {minimum} to {maximum}.")
    return int(text)


class InvalidPath(AppError):
    status = 400
    code = "invalid_path"
    title = "The path holds control characters"


class ControlCharacterPathGuard:
    """ASGI middleware: an HTTP path holding a control character names nothing here, so it is a 400
    `invalid_path` before any route runs. Path ids are free text to FastAPI, and PostgreSQL refuses NUL in
    text: without this, `/tickets/a%00b` was a 500 from deep inside a query."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _refused_character(scope.get("path", ""), frozenset()) is not None:
            refused = InvalidPath("Percent-encoded control characters, line breaks and similar are not allowed "
                                  "in a path.")
            response = JSONResponse(refused.to_problem(), status_code=refused.status, media_type=PROBLEM_JSON)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
