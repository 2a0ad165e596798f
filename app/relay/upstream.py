"""Connecting to the real pipeline with the client's own credentials; typed refusals, never a hang."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.typing import Subprotocol

from app.request_id import RequestId

# Hop-by-hop and handshake headers are the relay's own; everything else (api-key, Authorization,
# User-Agent, OpenAI-Beta, ...) passes through untouched.
_NOT_FORWARDED = frozenset(
    {
        "host", "connection", "upgrade", "content-length", "transfer-encoding", "keep-alive", "te",
        "proxy-authorization", "proxy-connection", "sec-websocket-key", "sec-websocket-version",
        "sec-websocket-extensions", "sec-websocket-protocol", "sec-websocket-accept", "origin",
        "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip", "forwarded",
        "x-ms-client-request-id", "x-ssl-client-fingerprint", "x-saw-fingerprint", "cookie",
    }
)


class _connect_without_redirects(connect):
    """Redirects are refused, never followed: following one would forward the client's credentials."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


@dataclass(frozen=True)
class UpstreamTarget:
    url: str
    headers: list[tuple[str, str]]
    subprotocols: list[str]


class UpstreamError(Exception):
    """The upstream could not be reached or refused; `status` is what the client's handshake gets."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def build_target(
    *, endpoint: str, suffix: str, query: bytes, client_headers: Iterable[tuple[bytes, bytes]], request_id: RequestId
) -> UpstreamTarget:
    """Upstream URL = resource endpoint + the path after /resources/{name} + the client's query as is."""
    url = endpoint + suffix
    if query:
        url += "?" + query.decode("latin-1")
    headers: list[tuple[str, str]] = []
    subprotocols: list[str] = []
    for raw_name, raw_value in client_headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name == "sec-websocket-protocol":
            subprotocols.extend(p.strip() for p in value.split(",") if p.strip())
        elif name not in _NOT_FORWARDED:
            headers.append((name, value))
    headers.append(("x-ms-client-request-id", request_id))
    return UpstreamTarget(url=url, headers=headers, subprotocols=subprotocols)


async def open_upstream(
    target: UpstreamTarget,
    *,
    connect_timeout: float,
    max_message_bytes: int,
    max_queue: int,
    ping_interval: float | None,
) -> ClientConnection:
    """Open the upstream WebSocket. No redirects are followed (the SDK refuses them too)."""
    try:
        return await _connect_without_redirects(
            target.url,
            additional_headers=target.headers,
            subprotocols=[Subprotocol(p) for p in target.subprotocols] or None,
            user_agent_header=None if any(n == "user-agent" for n, _ in target.headers) else "voicelog",
            compression=None,
            proxy=None,
            open_timeout=connect_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_interval,
            close_timeout=5,
            max_size=max_message_bytes,
            max_queue=max_queue,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        if 300 <= status < 400:
            raise UpstreamError("upstream_redirect_refused", 502) from exc
        raise UpstreamError("upstream_refused", status if 400 <= status < 600 else 502) from exc
    except TimeoutError as exc:
        raise UpstreamError("upstream_timeout", 504) from exc
    except InvalidHandshake as exc:
        raise UpstreamError("upstream_bad_handshake", 502) from exc
    except OSError as exc:
        raise UpstreamError("upstream_unreachable", 502) from exc
    except InvalidURI as exc:  # the client's query made no valid URL (e.g. a `#`): its message holds the query
        raise UpstreamError("bad_request_target", 400) from exc
    except Exception as exc:  # anything else the library raises: a refusal, never a traceback with the URL
        raise UpstreamError("upstream_failed", 502) from exc
