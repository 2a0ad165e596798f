"""The workflow CLI's HTTP side: one bearer-token client for a running voicelog, problem+json made one line.

From a SAW the CLI talks to the SAW front door (nginx, mutual TLS) with the SAW's client certificate, as
`curl --cert` would; recording reads are refused anywhere else (C5), with the API's one 404.
"""

from __future__ import annotations

import json
import re
import ssl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

DEFAULT_URL: Final = "http://127.0.0.1:8000"
TIMEOUT: Final = httpx.Timeout(30.0, connect=10.0)
_HTML_TITLE: Final = re.compile(r"<title>([^<]{1,200})</title>", re.IGNORECASE)
_BEARER: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class WorkflowError(Exception):
    """A refusal or failure, printed as one line: `error: <code>: <message>`."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def line(self) -> str:
        where = "" if self.status is None else f" ({self.status})"
        return f"error: {self.code}{where}: {self.message}"


@dataclass(frozen=True)
class ApiTarget:
    """Where and as whom: the service URL, the bearer token, and for a SAW the client certificate."""

    url: str
    token: str | None
    cert: Path | None = None
    key: Path | None = None
    cacert: Path | None = None

    def headers(self) -> dict[str, str]:
        if not self.token:
            raise WorkflowError("no_token", "Pass --token or set VOICELOG_TOKEN (on a laptop: "
                                "`voicelog dev token --as alice --role engineer`).")
        if not _BEARER.fullmatch(self.token):  # never sent, never echoed (an HTTP library's error would quote it)
            raise WorkflowError("malformed_token", "The token is not a bearer token (RFC 6750: letters, digits and "
                                "-._~+/ only): a line ending or a space from a file or a paste? It was not sent.")
        return {"authorization": f"Bearer {self.token}", "accept": "application/json"}


def _problem(response: httpx.Response) -> WorkflowError:
    """The API's problem+json as a WorkflowError; anything else as the HTTP status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        message = str(body.get("detail") or body.get("title") or "")
        errors = body.get("errors")
        if isinstance(errors, list) and errors:  # 422: name the fields, never echo values
            fields = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'body'}: {e.get('msg', '')}"
                               for e in errors if isinstance(e, dict))
            message = f"{message} {fields}".strip()
        return WorkflowError(body["code"], message, status=response.status_code)
    if response.is_redirect:  # never followed: a token and a SAW certificate go to the --url given, nowhere else
        return WorkflowError(f"http_{response.status_code}", "The service answered with a redirect to "
                             f"{response.headers.get('location', '(none)')[:200]!r}, which is not followed: use "
                             "that address as --url if it is the service.", status=response.status_code)
    # Not voicelog's answer: a proxy's page (nginx: "400 No required SSL certificate was sent"). Its title says why.
    title = _HTML_TITLE.search(response.text[:2000])
    return WorkflowError(f"http_{response.status_code}", title.group(1).strip() if title else
                         (response.reason_phrase or "HTTP error"), status=response.status_code)


def tls_context(target: ApiTarget) -> ssl.SSLContext:
    """Trust the system's CAs or `--cacert`; present the SAW certificate (its key in `--key` or the same file)."""
    context = ssl.create_default_context(cafile=None if target.cacert is None else str(target.cacert))
    if target.cert is not None:
        context.load_cert_chain(str(target.cert), None if target.key is None else str(target.key))
    return context


@contextmanager
def api_client(target: ApiTarget) -> Iterator[httpx.Client]:
    """An httpx client for `target`; connection failures become one clear line."""
    try:
        with httpx.Client(base_url=target.url.rstrip("/"), headers=target.headers(), timeout=TIMEOUT,
                          verify=tls_context(target)) as client:
            yield client
    except httpx.TransportError as exc:
        raise WorkflowError("unreachable", f"Cannot reach {target.url}: {exc or type(exc).__name__}. Is "
                            "`voicelog serve` running there (--url, VOICELOG_URL)?") from None
    except (OSError, ssl.SSLError) as exc:  # an unreadable or mismatched certificate or key file
        raise WorkflowError("client_certificate", f"{exc.strerror or exc}: {exc.filename or ''}".strip()) from None


def call_json(client: httpx.Client, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One API call whose answer is JSON; a non-2xx answer raises its problem as a WorkflowError."""
    response = client.request(method, path, json=body)
    if not response.is_success:
        raise _problem(response)
    try:
        return response.json()
    except json.JSONDecodeError:
        raise WorkflowError("bad_response", f"{method} {path} did not answer JSON.") from None


@dataclass(frozen=True)
class Download:
    status: int
    bytes: int
    headers: dict[str, str]


def download(client: httpx.Client, path: str, target: Path | None) -> Download:
    """Stream a response body to `target` (stdout's buffer when None), written only once the API said yes."""
    with client.stream("GET", path, headers={"accept": "*/*"}) as response:
        if not response.is_success:  # a redirect too: its body is not the part (the front door is --url)
            response.read()
            raise _problem(response)
        size = 0
        if target is None:
            for chunk in response.iter_bytes():
                sys.stdout.buffer.write(chunk)
                size += len(chunk)
            sys.stdout.buffer.flush()
        else:
            partial = target.with_name(target.name + ".part")
            with partial.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    size += len(chunk)
            partial.replace(target)
        return Download(response.status_code, size, dict(response.headers))
