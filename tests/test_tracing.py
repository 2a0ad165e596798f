"""OpenTelemetry tracing: what an operator sees in their collector, and what must never reach it.

A real OTLP/HTTP receiver on a loopback port takes the relay's exports (protobuf, as any collector would)
and decodes them with the OpenTelemetry protocol's own message types.
"""

from __future__ import annotations

import gzip
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.ai.voicelive.aio import connect as voicelive_connect
from azure.core.credentials import AzureKeyCredential
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.proto.trace.v1.trace_pb2 import Status as StatusProto
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app.identity.settings import IdentitySettings
from app.tracing.settings import TracingSettings
from tests.fixtures.identity import MintToken
from tests.fixtures.recording import recording_stack
from tests.fixtures.relay import STANDIN_API_KEY, TEST_ADMIN_TOKEN, StandinHandle, relay_for

ECHO = "/voice-live/realtime?api-version=2026-07-15&x-standin-mode=echo"
MARKER = "TRACE-CONTENT-MARKER-7f3e1c"
KEY = {"api-key": STANDIN_API_KEY}


@dataclass
class ExportedSpan:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status: int
    resource: dict[str, Any]


def _value(value: AnyValue) -> Any:
    return getattr(value, value.WhichOneof("value") or "string_value")


class Collector:
    """An OTLP/HTTP traces receiver: keeps every raw body it is sent, decodes them on demand."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.paths: list[str] = []
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                collector.bodies.append(body)
                collector.paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def raw(self) -> bytes:
        return b"".join(self.bodies)

    def spans(self) -> list[ExportedSpan]:
        out = []
        for body in self.bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        out.append(ExportedSpan(
                            name=span.name, kind=span.kind, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status=span.status.code, resource=resource))
        return out

    def named(self, name: str) -> list[ExportedSpan]:
        return [s for s in self.spans() if s.name == name]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    try:
        yield receiver
    finally:
        receiver.close()


def traced(collector: Collector, **overrides: Any) -> TracingSettings:
    return TracingSettings(otlp_endpoint=collector.url, **overrides)


async def test_a_recorded_session_and_api_calls_are_traced_without_content(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
    collector: Collector,
) -> None:
    frames = [json.dumps({"type": "conversation.item.create", "item": {"text": f"{MARKER} {i}"}}) for i in range(5)]
    async with recording_stack(tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
                               identity=identity_settings, mint_token=mint_token,
                               tracing=traced(collector)) as stack:
        url = f"{stack.relay.ws}/resources/{stack.resource}{ECHO}&api-key={STANDIN_API_KEY}"
        async with connect(url, additional_headers={"api-key": STANDIN_API_KEY}) as ws:
            request_id = ws.response.headers["x-ms-request-id"] if ws.response else ""
            for frame in frames:
                await ws.send(frame)
                assert await ws.recv() == frame
        assert (await stack.recording(request_id)).state == "complete"
        shown = await stack.api("GET", f"/tickets/{stack.ticket_id}", stack.ticketing)
        missing = await stack.api("GET", "/tickets/no-such-ticket", stack.ticketing)
        assert (shown.status_code, missing.status_code) == (200, 404)
    # the relay has shut down, which flushes every queued span to the collector

    (session,) = [s for s in collector.named("relay.session") if s.attributes.get("voicelog.request_id") == request_id]
    assert session.kind == SpanProto.SPAN_KIND_SERVER
    assert session.attributes == {
        "voicelog.resource": stack.resource, "voicelog.relay.path": "/voice-live/realtime",
        "voicelog.request_id": request_id, "voicelog.region": "westeurope", "voicelog.recording": True,
        "voicelog.relay.ended_by": "client", "voicelog.relay.client_close_code": 1000,
        "voicelog.relay.frames_c2s": 5, "voicelog.relay.frames_s2c": 5,
        "voicelog.relay.bytes_c2s": sum(map(len, frames)), "voicelog.relay.bytes_s2c": sum(map(len, frames)),
    }
    assert session.resource["service.name"] == "voicelog"
    children = {s.name: s for s in collector.spans() if s.parent_span_id == session.span_id}
    assert set(children) == {"relay.upstream.connect", "capture.open"}
    upstream = children["relay.upstream.connect"]
    assert upstream.kind == SpanProto.SPAN_KIND_CLIENT
    assert upstream.attributes == {"server.address": "127.0.0.1", "server.port": standin.port}
    assert upstream.trace_id == session.trace_id

    api = {(s.name, s.attributes["http.response.status_code"]) for s in collector.spans()
           if s.kind == SpanProto.SPAN_KIND_SERVER and "http.route" in s.attributes}
    assert {("POST /tickets", 201), ("GET /tickets/{ticket_id}", 200), ("GET /tickets/{ticket_id}", 404),
            ("POST /customer/resources/{resource}/consents", 201)} <= api

    exported = collector.raw()
    for secret in (MARKER, STANDIN_API_KEY, TEST_ADMIN_TOKEN, *stack.ticketing.values(), *stack.customer.values()):
        assert secret.encode() not in exported, secret
    assert stack.ticket_id.encode() not in exported  # routes are templates, never the concrete path
    assert b"api-version" not in exported  # nor query strings


async def test_sdk_session_and_refusals_are_traced_with_their_outcome(
    tmp_path: Path, standin: StandinHandle, collector: Collector,
) -> None:
    # Bound but never listening, and held until the relay is done: connecting is refused, and no other test
    # can take the port meanwhile (as it could once a closed probe socket let it go).
    with socket.socket() as refusing:
        refusing.bind(("127.0.0.1", 0))
        closed_port = refusing.getsockname()[1]
        async with relay_for(tmp_path, standin, tracing=traced(collector)) as relay:
            await relay.add_resource("dead", f"ws://127.0.0.1:{closed_port}")
            async with voicelive_connect(endpoint=relay.endpoint("acme"),
                                         credential=AzureKeyCredential(STANDIN_API_KEY), model="gpt-4o") as conn:
                async for event in conn:
                    assert event.type == "session.created"
                    break
            for resource, status in (("nobody", 404), ("dead", 502)):
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(f"{relay.ws}/resources/{resource}{ECHO}"):
                        pass
                assert refused.value.response.status_code == status

    sessions = {s.attributes.get("voicelog.resource", "(none)"): s for s in collector.named("relay.session")}
    assert set(sessions) == {"acme", "(none)", "dead"}  # a name that is no resource is never exported
    sdk = sessions["acme"]
    assert sdk.attributes["voicelog.recording"] is False
    assert sdk.attributes["voicelog.relay.frames_s2c"] >= 1  # session.created at least
    assert sdk.status == StatusProto.STATUS_CODE_UNSET
    unknown = sessions["(none)"]
    assert (unknown.attributes["voicelog.relay.refused"], unknown.attributes["http.response.status_code"]) == (
        "resource_not_found", 404)
    assert "voicelog.request_id" not in unknown.attributes  # no session was made
    assert unknown.status == StatusProto.STATUS_CODE_UNSET  # a client error, not ours
    dead = sessions["dead"]
    assert (dead.attributes["voicelog.relay.refused"], dead.attributes["http.response.status_code"]) == (
        "upstream_unreachable", 502)
    assert dead.status == StatusProto.STATUS_CODE_ERROR
    (connect_span,) = [s for s in collector.named("relay.upstream.connect") if s.parent_span_id == dead.span_id]
    assert connect_span.attributes["error.type"] == "upstream_unreachable"
    assert connect_span.status == StatusProto.STATUS_CODE_ERROR
    assert STANDIN_API_KEY.encode() not in collector.raw()

    # The scheduler's catch-up runs at start are traced too, each its own trace (a job has no caller).
    jobs = {s.attributes["voicelog.job"]: s for s in collector.named("scheduler.job")}
    assert {"retention.purge", "retention.orphan_sweep", "access_grants"} <= set(jobs)
    assert all(s.attributes["voicelog.job.outcome"] == "ok" and s.parent_span_id == "" for s in jobs.values())


@pytest.mark.parametrize("accept_parent", [False, True])
async def test_a_callers_trace_is_continued_only_when_configured(
    tmp_path: Path, standin: StandinHandle, collector: Collector, accept_parent: bool,
) -> None:
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    traceparent = {"traceparent": f"00-{caller_trace}-{caller_span}-01"}
    async with relay_for(tmp_path, standin, tracing=traced(collector, accept_parent=accept_parent)) as relay:
        async with httpx.AsyncClient(base_url=relay.http) as client:
            assert (await client.get("/admin/resources/acme", headers={
                **traceparent, "Authorization": f"Bearer {TEST_ADMIN_TOKEN}"})).status_code == 200
        async with connect(f"{relay.ws}/resources/acme{ECHO}",
                           additional_headers={**traceparent, "api-key": STANDIN_API_KEY}) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"

    (api,) = collector.named("GET /admin/resources/{name}")
    (session,) = collector.named("relay.session")
    for span in (api, session):
        if accept_parent:
            assert (span.trace_id, span.parent_span_id) == (caller_trace, caller_span)
        else:
            assert span.trace_id != caller_trace
            assert span.parent_span_id == ""


async def test_a_collector_that_is_down_never_harms_a_session(tmp_path: Path, standin: StandinHandle) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nowhere = sock.getsockname()[1]
    settings = TracingSettings(otlp_endpoint=f"http://127.0.0.1:{nowhere}/v1/traces", export_timeout_s=1.0)
    async with relay_for(tmp_path, standin, tracing=settings) as relay:
        for _ in range(3):
            async with connect(f"{relay.ws}/resources/acme{ECHO}", additional_headers=KEY) as ws:
                for i in range(50):
                    await ws.send(f"frame {i}")
                    assert await ws.recv() == f"frame {i}"
        async with httpx.AsyncClient(base_url=relay.http) as client:
            assert (await client.get("/healthz")).status_code == 200
    # leaving the block shut the relay down: the exporter gave up within its timeout instead of hanging


async def test_tracing_is_off_unless_voicelog_is_given_an_endpoint(
    tmp_path: Path, standin: StandinHandle, collector: Collector, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ambient OpenTelemetry variables (an operator's sidecar injects them) do not switch tracing on."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.removesuffix("/v1/traces"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.url)
    async with relay_for(tmp_path, standin) as relay:
        assert relay.app.state.ctx.tracing.enabled is False
        async with connect(f"{relay.ws}/resources/acme{ECHO}", additional_headers=KEY) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
        async with httpx.AsyncClient(base_url=relay.http) as client:
            assert (await client.get("/healthz")).status_code == 200
    assert collector.bodies == []


async def test_a_request_target_the_upstream_cannot_take_is_a_clean_refusal_without_the_key_anywhere(
    tmp_path: Path, standin: StandinHandle, collector: Collector, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A `#` in the query makes no valid upstream URL; the library's error quotes the URL, credentials too."""
    import asyncio
    import base64
    import logging
    import os

    caplog.set_level(logging.DEBUG)
    secret = "CLIENT-KEY-" + os.urandom(6).hex()
    async with relay_for(tmp_path, standin, tracing=traced(collector)) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /resources/acme/voice-live/realtime?api-key={secret}#x HTTP/1.1\r\n"
                      f"Host: 127.0.0.1:{relay.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
    assert status_line.split()[1] == b"400"
    (span,) = collector.named("relay.session")
    assert span.attributes["voicelog.relay.refused"] == "bad_request_target"
    out, err = capfd.readouterr()
    for where in (collector.raw(), (caplog.text + out + err).encode()):
        assert secret.encode() not in where
