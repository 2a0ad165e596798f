"""Round-2 probes of the workflow CLI (issue 19): the bearer token never reaches stdout or stderr, however
the call fails, and a refused `recordings get` writes no file (nor a `.part`) and leaves an existing one alone.

A tiny HTTP server on a thread plays the API (a problem+json 404 for every read, 401 for a bad token); the
CLI runs in-process (typer's CliRunner), so each case takes milliseconds.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli

SECRET = "eyJSECRET.probe-token-7c1f"
REQUEST_ID = "0123456789abcdef0123456789abcdef"


class _Api(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/moved/recordings/"):  # a front door that sends the client elsewhere
            page = b"<html><head><title>301 Moved Permanently</title></head></html>"
            self.send_response(301)
            self.send_header("location", "https://saw.example" + self.path)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        if self.path.startswith("/recordings/"):
            status, body = 404, {"type": "about:blank", "title": "No recording you may read has this request ID",
                                 "status": 404, "code": "recording_not_available"}
        else:
            status, body = 401, {"title": "The bearer token is not valid", "status": 401, "code": "invalid_token"}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/problem+json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _run(args: list[str], monkeypatch: pytest.MonkeyPatch, token: str) -> tuple[int, str]:
    monkeypatch.setenv("VOICELOG_TOKEN", token)
    result = CliRunner().invoke(cli, args)
    everything = result.output + (result.stderr if result.stderr_bytes is not None else "")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        everything += f"Traceback ... {type(result.exception).__name__}: {result.exception}"  # what a terminal shows
    return result.exit_code, everything


@pytest.mark.parametrize("token", [
    SECRET,
    SECRET + "\r",  # a token file saved with CRLF, read by `VOICELOG_TOKEN=$(cat token.txt)`
    SECRET + "\n",
    SECRET + " trailing",
])
@pytest.mark.parametrize("verb", [["tickets", "show", "T-1"], ["recordings", "get", REQUEST_ID, "--part", "turns"]])
def test_the_bearer_token_is_never_printed(
    api: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, token: str, verb: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, printed = _run([*verb, "--url", api], monkeypatch, token)
    assert code != 0
    assert "SECRET.probe-token" not in printed, printed
    assert "eyJ" not in printed, printed


def test_the_bearer_token_is_not_printed_when_the_service_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    code, printed = _run(["tickets", "show", "T-1", "--url", "http://127.0.0.1:9"], monkeypatch, SECRET + "\r")
    assert code == 2
    assert "SECRET.probe-token" not in printed, printed


@pytest.mark.parametrize("part", ["stereo", "turns", "bundle"])
def test_a_refused_read_writes_no_file_and_keeps_an_existing_one(
    api: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, part: str
) -> None:
    monkeypatch.chdir(tmp_path)
    code, printed = _run(["recordings", "get", REQUEST_ID, "--part", part, "--url", api], monkeypatch, SECRET)
    assert code == 1
    assert "recording_not_available" in printed
    assert list(tmp_path.iterdir()) == []  # neither the default name nor a .part

    kept = tmp_path / "mine.bin"
    kept.write_bytes(b"an earlier download")
    code, _ = _run(["recordings", "get", REQUEST_ID, "--part", part, "-o", str(kept), "--url", api],
                   monkeypatch, SECRET)
    assert code == 1
    assert kept.read_bytes() == b"an earlier download"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.bin"]


@pytest.mark.parametrize("token", [SECRET.replace("SECRET", "SECR\u00c9T"), SECRET + "\u00a0"])
def test_a_token_that_cannot_be_sent_is_one_line_without_a_traceback(
    api: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, token: str
) -> None:
    """CLI.md: bad input is one line and an exit code, never a traceback (a non-ASCII character pasted into
    the token, e.g. a no-break space, cannot go in an HTTP header)."""
    monkeypatch.chdir(tmp_path)
    code, printed = _run(["tickets", "show", "T-1", "--url", api], monkeypatch, token)
    assert code in (1, 2), printed
    assert "Traceback" not in printed
    assert "UnicodeEncodeError" not in printed, printed
    assert "probe-token" not in printed, printed


def test_a_redirect_is_not_a_read_and_writes_nothing(api: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """CLI.md: a part is written only once the read is allowed. A 301 from the front door (http to https, a
    moved service) is not an allowed read: no file, a non-zero exit."""
    monkeypatch.chdir(tmp_path)
    code, printed = _run(["recordings", "get", REQUEST_ID, "--part", "stereo", "--url", f"{api}/moved"],
                         monkeypatch, SECRET)
    assert code != 0, printed
    assert list(tmp_path.iterdir()) == [], printed
