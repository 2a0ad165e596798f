"""TracingSettings: OpenTelemetry export knobs, nested into the app's Settings as `tracing`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class TracingSettings(BaseModel):
    """Where spans go and how many are kept. Unset endpoint: no spans are made at all (the no-op tracer)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP (protobuf) traces endpoint, e.g. `http://otel-collector:4318/v1/traces`. Unset: "
        "tracing is off. Spans carry identifiers, routes, status codes, close codes and counts, never frame "
        "content, query strings or credentials.",
    )
    otlp_headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Headers sent with every export (JSON object), e.g. a collector's API key. Never logged.",
    )
    service_name: str = Field(default="voicelog", min_length=1, description="`service.name` of every span.")
    sample_ratio: float = Field(
        default=1.0, ge=0.0, le=1.0,
        description="Share of traces kept (trace-ID ratio). A continued trace (see `accept_parent`) follows "
        "its parent's decision instead.",
    )
    accept_parent: bool = Field(
        default=False,
        description="Continue a caller's W3C `traceparent` (API requests and relay handshakes). Off by default: "
        "the relay faces customers, who would otherwise choose the trace and the sampling of our spans. Turn "
        "it on when every caller is inside your own tracing domain.",
    )
    export_timeout_s: float = Field(
        default=10.0, gt=0, le=60,
        description="Timeout of one export call; spans wait in a bounded queue (2048) and are dropped, never "
        "blocking a call, when the collector is slow or down.",
    )
