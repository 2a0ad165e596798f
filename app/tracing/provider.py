"""One tracer per app: the SDK's provider with a batch OTLP exporter, or the no-op tracer when off.

Nothing global: the provider is not installed as OpenTelemetry's global one, so tests can build many apps,
each exporting to its own collector, and libraries that trace on their own (none here) stay silent.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterable

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app.logs import get_logger
from app.tracing.settings import TracingSettings

log = get_logger("voicelog.tracing")

INSTRUMENTATION = "voicelog"
_PROPAGATOR = TraceContextTextMapPropagator()
_ROOT = Context()  # an empty context: a span started in it is a new trace, whatever is current


class Tracing:
    """The app's tracer, and the parent a request's spans hang from (the caller's, only when trusted)."""

    def __init__(self, settings: TracingSettings, *, version: str) -> None:
        self.settings = settings
        self._provider: TracerProvider | None = None
        if settings.otlp_endpoint is None:
            self.tracer: trace.Tracer = trace.NoOpTracer()
            return
        resource = Resource.create({
            "service.name": settings.service_name,
            "service.version": version,
            "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
        })
        sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
        self._provider = TracerProvider(resource=resource, sampler=sampler)
        exporter = OTLPSpanExporter(
            endpoint=settings.otlp_endpoint,
            headers={k: v.get_secret_value() for k, v in settings.otlp_headers.items()},
            timeout=settings.export_timeout_s,
        )
        timeout_ms = int(settings.export_timeout_s * 1000)
        self._provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=2048,
                                                             export_timeout_millis=timeout_ms))
        self.tracer = self._provider.get_tracer(INSTRUMENTATION, version)

    @property
    def enabled(self) -> bool:
        return self._provider is not None

    def parent(self, headers: Iterable[tuple[bytes, bytes]]) -> Context:
        """The context a server span starts in: the caller's `traceparent` if accepted, else a new trace."""
        if not self.settings.accept_parent:
            return _ROOT
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers
                   if k in (b"traceparent", b"tracestate")}
        return _PROPAGATOR.extract(carrier, context=_ROOT) if carrier else _ROOT

    async def shutdown(self) -> None:
        """Flush what is queued (bounded by the export timeout) and stop the exporter thread."""
        if self._provider is None:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(self._provider.shutdown), self.settings.export_timeout_s + 1)
        except Exception as exc:  # spans lost at shutdown must never keep the process from stopping
            log.warning("tracing.shutdown_incomplete", error=type(exc).__name__)
