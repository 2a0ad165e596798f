"""What `voicelog serve` tells a person at a terminal once it listens: where things are, what to run next."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from app import __version__
from app.config import Settings

_WILDCARDS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 (compared, never bound)


class PortInUse(Exception):
    """A port voicelog must bind is taken: one line naming the setting to change, never a traceback."""

    def __init__(self, what: str, host: str, port: int, setting: str) -> None:
        super().__init__(
            f"error: {what} port {port} on {host} is already in use (another voicelog?); stop what holds it "
            f"or set {setting} to a free port"
        )


def check_port_free(what: str, host: str, port: int, setting: str) -> None:
    """Bind and release at once: a start-up check, so a taken port fails before migrations and workers."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(what, host, port, setting) from exc
            raise


def port_in_use(exc: OSError, what: str, host: str, port: int, setting: str) -> PortInUse | None:
    """The `PortInUse` an OSError of a bind stands for, or None when it is another failure."""
    return PortInUse(what, host, port, setting) if exc.errno == errno.EADDRINUSE else None


@dataclass(frozen=True)
class Listening:
    host: str
    port: int
    workers: int


def _http_base(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in _WILDCARDS else host
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{port}"


def serve_banner(settings: Settings, at: Listening) -> str:
    """A dozen lines; only what this configuration runs (no dev-token line next to a production issuer)."""
    from app.main import DEMO_RESOURCE, DEMO_TENANT  # the app's own names; imported when serving anyway

    base = _http_base(at.host, at.port)
    database = f"SQLite in {settings.data_dir}" if settings.embedded else "PostgreSQL"
    worker_text = "1 worker" if at.workers == 1 else f"{at.workers} workers"
    lines = [f"voicelog {__version__} listening on {base} ({worker_text}, {database})", ""]
    lines.append(f"  API docs     {base}/docs")
    if settings.console.enabled:
        lines.append(f"  Console      {base}/console")
    if settings.demo_resource and settings.standin_enabled:
        lines.append(f"  Demo relay   {base.replace('http', 'ws', 1)}/resources/{DEMO_RESOURCE}/voice-live/realtime"
                     f"  (resource `{DEMO_RESOURCE}`, tenant `{DEMO_TENANT}`, region {settings.regions[0].name})")
    if settings.standin_enabled:
        lines.append(f"  Stand-in     ws://{settings.standin_host}:{settings.standin_port}"
                     "  (the built-in upstream, VOICELOG_STANDIN_PORT)")
    if settings.admin_token is None and settings.embedded:
        lines.append(f"  Admin token  {settings.data_dir / 'admin-token'}  (Bearer for /admin/*)")
    if settings.identity.dev_issuer_enabled:
        lines += [
            "  Dev tokens   voicelog dev token --as alice --role engineer",
            f"               voicelog dev token --as cara --role customer_admin --tenant {DEMO_TENANT}",
            "               (staff roles count with a staff record too: docs/IDENTITY.md)",
        ]
    lines += ["", "Logs follow (VOICELOG_LOG_FORMAT=json for JSON lines). Ctrl+C stops.", ""]
    return "\n".join(lines)
