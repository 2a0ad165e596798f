"""`voicelog recordings get REQUEST_ID --part PART -o FILE`: one part of one recording, through the API.

A read like any other (C4, C5): it names one request ID, needs an approved grant, and must come from your
registered SAW: point --url at the SAW front door and give the SAW's certificate (--cert, --key). Every
refusal is the API's one 404, `recording_not_available`. Each read is audited by the service.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Final
from urllib.parse import quote

import typer

from app.workflow.client import Download, api_client, download
from app.workflow.options import (
    DEFAULT,
    CacertOption,
    CertOption,
    JsonOption,
    KeyOption,
    TokenOption,
    UrlOption,
    emit,
    run,
    target,
)

recordings_cli = typer.Typer(help="Read one recording part, from a SAW, under a grant.", no_args_is_help=True)


class Part(StrEnum):
    STEREO = "stereo"
    CALLER = "caller"
    SERVICE = "service"
    EVENTS = "events"
    TURNS = "turns"
    TRANSCRIPT = "transcript"
    BUNDLE = "bundle"


# The API's path and a file name suffix for each part (docs: /recordings/{id}/... in the OpenAPI document).
PART_PATHS: Final = {
    Part.STEREO: ("audio/session.wav", "session.wav"), Part.CALLER: ("audio/caller.wav", "caller.wav"),
    Part.SERVICE: ("audio/service.wav", "service.wav"), Part.EVENTS: ("events", "events.ndjson"),
    Part.TURNS: ("turns", "turns.json"), Part.TRANSCRIPT: ("transcript", "transcript.json"),
    Part.BUNDLE: ("bundle", "bundle.zip"),
}
STATE_HEADERS: Final = {"state": "x-voicelog-recording-state", "incomplete_reason": "x-voicelog-incomplete-reason",
                        "stored_bytes": "x-voicelog-stored-bytes", "gaps": "x-voicelog-gaps"}


@recordings_cli.command("get")
def get(
    request_id: Annotated[str, typer.Argument(help="The session's request ID (32 hex digits).")],
    part: Annotated[Part, typer.Option("--part", "-p", help="Which part to read.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", dir_okay=False,
        help="Where to write it (`-` for stdout); default <request id>-<part file name> here.")] = None,
    url: UrlOption = DEFAULT, token: TokenOption = None, cert: CertOption = None, key: KeyOption = None,
    cacert: CacertOption = None, as_json: JsonOption = False,
) -> None:
    """Download one part. The file is written only once the read was allowed; what it says of the recording
    (state, gaps) is printed as a table, or as JSON with --json (then -o - is refused: stdout is the JSON)."""
    path, suffix = PART_PATHS[part]
    to_stdout = output is not None and str(output) == "-"
    if to_stdout and as_json:
        raise typer.BadParameter("--json prints the summary on stdout: write the part to a file with -o FILE")
    destination = None if to_stdout else (output or Path(f"{request_id}-{suffix}"))

    def work() -> Download:
        with api_client(target(url, token, cert, key, cacert)) as client:
            return download(client, f"/recordings/{quote(request_id, safe='')}/{path}", destination)

    got = run(work)
    summary: dict[str, object] = {"request_id": request_id, "part": part.value, "bytes": got.bytes,
                                  "file": None if destination is None else str(destination)}
    summary.update({name: got.headers.get(header) for name, header in STATE_HEADERS.items()})
    if to_stdout:  # the part went to stdout: the summary goes beside it, to stderr
        typer.echo(" ".join(f"{k}={v}" for k, v in summary.items() if v is not None), err=True)
        return
    emit(summary, as_json, ("REQUEST ID", "PART", "BYTES", "FILE", "STATE", "GAPS"),
         [[request_id, part.value, got.bytes, summary["file"], summary["state"], summary["gaps"]]])
