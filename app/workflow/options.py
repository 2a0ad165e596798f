"""Options every workflow verb takes (where, as whom, output form), and how a verb prints and fails."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from app.workflow.client import DEFAULT_URL, ApiTarget, WorkflowError
from app.workflow.table import render_table

T = TypeVar("T")

UrlOption = Annotated[str, typer.Option("--url", envvar="VOICELOG_URL", help="The voicelog service.")]
TokenOption = Annotated[str | None, typer.Option(
    "--token", envvar="VOICELOG_TOKEN", show_default=False,
    help="Bearer token (OIDC; on a laptop `voicelog dev token`).")]
CertOption = Annotated[Path | None, typer.Option(
    "--cert", envvar="VOICELOG_CERT", dir_okay=False, help="SAW client certificate (PEM), for the SAW front door.")]
KeyOption = Annotated[Path | None, typer.Option(
    "--key", envvar="VOICELOG_KEY", dir_okay=False, help="Its private key (PEM).")]
CacertOption = Annotated[Path | None, typer.Option(
    "--cacert", envvar="VOICELOG_CACERT", dir_okay=False, help="CA that signed the server's certificate.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Clean JSON on stdout instead of a table.")]
DEFAULT = DEFAULT_URL


def target(url: str, token: str | None, cert: Path | None = None, key: Path | None = None,
           cacert: Path | None = None) -> ApiTarget:
    return ApiTarget(url=url, token=token, cert=cert, key=key, cacert=cacert)


def run(work: Callable[[], T]) -> T:
    """Run a verb; a refusal or failure is one line on stderr and exit code 1 (2: could not reach or ask)."""
    try:
        return work()
    except WorkflowError as exc:
        typer.echo(exc.line(), err=True)
        raise typer.Exit(1 if exc.status is not None else 2) from None


def emit(data: Any, as_json: bool, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """`--json`: the API's answer as JSON, alone on stdout. Otherwise a table."""
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        typer.echo(render_table(headers, rows))
