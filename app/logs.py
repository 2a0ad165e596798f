"""Structured logs: JSON lines for machines, coloured lines for a person at a terminal. Events, ids and sizes
only: never frame content, never credentials."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO
from urllib.parse import unquote_plus

import structlog
from structlog.typing import Processor

from app.server.settings import LogFormat

SECRET_KEYS = frozenset(
    {"api-key", "api_key", "apikey", "authorization", "token", "access_token", "password", "secret",
     "key", "cookie", "set-cookie", "x-api-key", "sig", "signature", "client_secret"}
)
REDACTED = "[redacted]"


def redact_query(query: str) -> str:
    """A raw query string with every credential-looking parameter's value replaced; the rest untouched."""
    parts = []
    for part in query.split("&"):
        key, sep, _value = part.partition("=")
        parts.append(f"{key}={REDACTED}" if sep and unquote_plus(key).lower() in SECRET_KEYS else part)
    return "&".join(parts)


def redact_path(path: str) -> str:
    """`/p?api-key=x` -> `/p?api-key=[redacted]`; a string without a query is returned as is."""
    base, sep, query = path.partition("?")
    return f"{base}?{redact_query(query)}" if sep else path


class RedactQueryStrings(logging.Filter):
    """uvicorn logs WebSocket paths with their query (`... "WebSocket /x?api-key=..." [accepted]`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_path(a) if isinstance(a, str) and "?" in a else a for a in record.args)
        if isinstance(record.msg, str) and "?" in record.msg and "=" in record.msg:
            record.msg = " ".join(redact_path(w) if "?" in w else w for w in record.msg.split(" "))
        return True


def _redact_secrets(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if key.lower() in SECRET_KEYS:
            event[key] = REDACTED
    return event



def resolved_log_format(log_format: LogFormat, stream: TextIO) -> Literal["json", "console"]:
    """`auto`: coloured lines for a person (the log stream is a terminal), JSON lines for anything else."""
    if log_format != "auto":
        return log_format
    return "console" if stream.isatty() else "json"


class SchedulerRunsAtDebug(logging.Filter):
    """APScheduler logs every job run, add and removal at INFO (a dozen lines a minute on an idle service);
    ours log what a run did. Its INFO lines become DEBUG, shown only when the service logs at DEBUG. On the
    handler, so it sees every `apscheduler.*` logger whatever the executor's or job store's alias."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.name.startswith("apscheduler"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def configure_logging(level: str = "INFO", log_format: LogFormat = "json", stream: TextIO | None = None) -> None:
    """The service's logs on stderr (or `stream`) through stdlib logging, so uvicorn's and ours share one
    format: JSON lines, or (`console`, or `auto` on a terminal) coloured human-readable lines."""
    stream = stream or sys.stderr
    if resolved_log_format(log_format, stream) == "console":
        _configure(level, [structlog.dev.ConsoleRenderer(colors=stream.isatty())], stream)
        return
    _configure(level, [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()], stream)


def configure_cli_logging(level: str = "INFO") -> None:
    """A command's logs, human-readable, on stderr: its stdout carries only its output (`--json`, CSV, a
    report), so `voicelog audit verify --json | jq` works. Unconfigured, structlog would print on stdout.

    The process's own stderr: a command run in-process by a test harness (typer's CliRunner) swaps
    `sys.stderr` for the command's duration only, and a handler kept on that stream would lose later logs."""
    stream = sys.__stderr__ or sys.stderr
    _configure(level, [structlog.dev.ConsoleRenderer(colors=stream.isatty())], stream)


def _configure(level: str, rendering: list[Processor], stream: TextIO) -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(SchedulerRunsAtDebug())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log prints full paths with query strings (credentials); ours is redacted.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        uv_logger = logging.getLogger(name)
        uv_logger.handlers[:] = []
        uv_logger.propagate = True
        if not any(isinstance(f, RedactQueryStrings) for f in uv_logger.filters):
            uv_logger.addFilter(RedactQueryStrings())
    # Protocol-level debug lines of websockets (ours and uvicorn's, which logs through uvicorn.error)
    # print handshake headers and URLs, i.e. credentials: never below INFO, whatever the level.
    for noisy in ("websockets", "azure", "aiosqlite", "asyncio", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("uvicorn.error").setLevel(max(logging.INFO, root.level))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
