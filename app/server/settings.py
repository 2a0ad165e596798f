"""The HTTP server's own limits (`VOICELOG_SERVER__*`): request heads and bodies, timeouts, connections per address."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LogFormat = Literal["auto", "json", "console"]  # serve's logs: JSON lines, readable, or by whether stderr is a TTY


class ServerSettings(BaseModel):
    """What one client may cost the server; an established WebSocket call is never cut by it."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    max_request_line_bytes: int = Field(
        default=8192, ge=256, le=1024 * 1024,
        description="Longest request target (path and query) of a request; longer is answered 414 and the "
        "connection closed.",
    )
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, le=16 * 1024 * 1024,
        description="Most bytes of one request head (request line and every header); more is answered 431 "
        "and the connection closed, having buffered at most one socket read beyond it. Bearer tokens, the "
        "console's cookies and a proxy's client-certificate header fit many times over.",
    )
    max_header_count: int = Field(
        default=100, ge=8, le=10_000, description="Most header fields in one request; more is answered 431.",
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, le=600,
        description="A request head must be complete this long after a connection opens (first request) or "
        "after its first byte (later requests on a kept-alive connection); otherwise the connection is closed. "
        "A connection that never sends anything is closed after this long too.",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, le=1024 * 1024 * 1024,
        description="Largest request body of any route but `POST /audit/reports/verify`: a declared "
        "Content-Length over it is answered 413 before any of the body is read, a chunked body is answered 413 "
        "(and the connection closed) as soon as it passes it. Every JSON and form body of the API and the "
        "console is a few KiB.",
    )
    max_report_body_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024,
        description="Largest body of `POST /audit/reports/verify`, a signed JSON report as voicelog generated "
        "it: a year's access review of a busy deployment (every read listed) runs to tens of MiB. The body is "
        "read before the auditor check, so this is what an unauthenticated client may make the server hold "
        "per connection there. A larger report is verified offline with `voicelog audit report verify FILE`.",
    )
    body_idle_timeout_s: float = Field(
        default=15.0, gt=0, le=600,
        description="Longest gap between two reads of a request body (from the end of the head to its first "
        "byte, then between bytes); longer is answered 408 and the connection closed (just closed if the app "
        "has already started answering). A pause voicelog makes itself, while the app has not yet taken what "
        "was read, does not count.",
    )
    body_timeout_s: float = Field(
        default=120.0, gt=0, le=3600,
        description="A request body must be complete this long after its head, however steadily it trickles; "
        "otherwise 408 and the connection closed as for `body_idle_timeout_s`. 120 s takes 1 MiB at 9 KB/s and "
        "a 64 MiB report at 4.5 Mbit/s.",
    )
    keep_alive_timeout_s: int = Field(
        default=75, ge=1, le=3600,
        description="Close a kept-alive connection idle this long between requests (uvicorn's "
        "`timeout_keep_alive`). Longer than the 60 s nginx and most load balancers keep idle upstream "
        "connections, so they never send a request on a connection voicelog is closing.",
    )
    max_http_connections_per_address: int = Field(
        default=64, ge=1, le=1_000_000,
        description="HTTP connections (anything but an established WebSocket) one client address may hold. "
        "A request that is not a WebSocket upgrade, on a connection beyond this, is answered 503 and the "
        "connection closed. WebSocket handshakes are not refused by it: a NAT'd customer's calls never "
        "depend on its HTTP traffic; see `max_open_connections_per_address`.",
    )
    max_open_connections_per_address: int = Field(
        default=256, ge=1, le=1_000_000,
        description="Connections one client address may have open that are not established WebSockets "
        "(idle, reading a head, in a request, or a handshake in flight); one more is closed as soon as it is "
        "accepted, before anything is read. The headroom above `max_http_connections_per_address` is for "
        "WebSocket handshakes. Established WebSocket calls are never counted: a call is never cut, and an "
        "address may hold any number of them.",
    )
    connection_limit_exempt: list[IPv4Network | IPv6Network] = Field(
        default_factory=list,
        description="Peer addresses (CIDRs) the per-address bounds do not apply to: the reverse proxies in "
        "front of voicelog (ingress-nginx's pod range, `127.0.0.1/32` for an nginx on the same host), through "
        "which every client arrives with the proxy's address. The proxy bounds its own clients. Head limits "
        "and timeouts still apply.",
    )

    @field_validator("connection_limit_exempt")
    @classmethod
    def _not_everyone(cls, value: list[IPv4Network | IPv6Network]) -> list[IPv4Network | IPv6Network]:
        if any(net.prefixlen == 0 for net in value):
            raise ValueError("exempting every address (/0) turns the per-address bounds off; raise them instead")
        return value

    @model_validator(mode="after")
    def _open_covers_http(self) -> ServerSettings:
        if self.max_open_connections_per_address < self.max_http_connections_per_address:
            raise ValueError("max_open_connections_per_address must be at least max_http_connections_per_address")
        if self.max_header_bytes < self.max_request_line_bytes:
            raise ValueError("max_header_bytes must be at least max_request_line_bytes")
        if self.max_report_body_bytes < self.max_body_bytes:
            raise ValueError("max_report_body_bytes must be at least max_body_bytes")
        if self.body_timeout_s < self.body_idle_timeout_s:
            raise ValueError("body_timeout_s must be at least body_idle_timeout_s")
        return self
