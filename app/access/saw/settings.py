"""How voicelog learns that a request comes from a SAW: which proxies it believes, and their header names."""

from __future__ import annotations

import re
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")


class SawSettings(BaseModel):
    """`VOICELOG_SAW__*`. The default trusts no proxy: no request is ever from a SAW until this is set."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    trusted_proxies: list[IPv4Network | IPv6Network] = Field(
        default_factory=list,
        description="Addresses (CIDRs) of the mutual-TLS proxies (nginx) in front of voicelog, as voicelog "
        "sees the TCP peer, e.g. `[\"10.20.0.4/32\"]` or `[\"127.0.0.1/32\"]` for an nginx on the same host. "
        "SAW headers from any other peer are ignored and stripped. Empty: never trust (the default). "
        "Keep it as narrow as possible: whoever can connect from these addresses can claim any SAW.",
    )
    fingerprint_source: Literal["cert", "fingerprint"] = Field(
        default="cert",
        description="Which header names the device. `cert`: the proxy passes the verified client certificate "
        "(`cert_header`) and voicelog computes its SHA-256; nginx needs this, its only fingerprint variable "
        "is SHA-1. `fingerprint`: the proxy passes the SHA-256 itself (`fingerprint_header`; HAProxy, "
        "Envoy). The other header is never read.",
    )
    cert_header: str = Field(
        default="X-SSL-Client-Cert",
        description="Header with the verified client certificate, URL-escaped PEM (nginx's "
        "`$ssl_client_escaped_cert`), read when `fingerprint_source` is `cert`.",
    )
    fingerprint_header: str = Field(
        default="X-SSL-Client-Fingerprint",
        description="Header with the verified client certificate's SHA-256 over its DER (64 hex digits, "
        "colons allowed), read when `fingerprint_source` is `fingerprint`.",
    )
    verify_header: str = Field(
        default="X-SSL-Client-Verify",
        description="Header carrying the proxy's verification result; it must be exactly `SUCCESS`.",
    )
    local_dev: bool = Field(
        default=False,
        description="The SAW front door is the LOCAL DEVELOPMENT nginx of `voicelog dev saw` on this host: "
        "`trusted_proxies` may then hold loopback addresses only (default `127.0.0.1/32`), and the dev "
        "issuer signs in a browser that reaches it through that nginx from this machine. Laptop only: "
        "refused next to a production issuer, as the dev issuer is.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _not_everyone(cls, value: list[IPv4Network | IPv6Network]) -> list[IPv4Network | IPv6Network]:
        if any(net.prefixlen == 0 for net in value):
            raise ValueError("trusting every address (/0) would let anyone claim any SAW")
        return value

    @model_validator(mode="before")
    @classmethod
    def _local_proxy(cls, data: Any) -> Any:
        """A local SAW's nginx runs on this host: trust it at 127.0.0.1 unless told otherwise."""
        if isinstance(data, dict) and data.get("local_dev") in (True, "true", "True", "1", 1) \
                and not data.get("trusted_proxies"):
            return {**data, "trusted_proxies": ["127.0.0.1/32"]}
        return data

    @model_validator(mode="after")
    def _local_is_loopback(self) -> SawSettings:
        if self.local_dev and not all(net.network_address.is_loopback for net in self.trusted_proxies):
            raise ValueError("a local development SAW (local_dev) trusts loopback proxies only")
        return self

    @field_validator("fingerprint_header", "cert_header", "verify_header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not _HEADER_NAME.fullmatch(value):
            raise ValueError("a header name is 1..64 letters, digits and hyphens")
        return value.lower()

    def header_names(self) -> frozenset[bytes]:
        """The SAW headers, lowercased as ASGI carries them."""
        return frozenset(h.lower().encode() for h in (self.fingerprint_header, self.cert_header, self.verify_header))


class LocalSawBesideProductionIssuer(ValueError):
    """`saw.local_dev` next to a production issuer: a laptop's SAW must never front real recordings."""


def refuse_local_saw_beside_production(saw: SawSettings, *, production_issuer: bool) -> None:
    """Start-up check (as the dev issuer's): the local development SAW only without a production issuer."""
    if saw.local_dev and production_issuer:
        raise LocalSawBesideProductionIssuer(
            "the local development SAW (saw.local_dev) cannot be enabled together with a production issuer; "
            "register a managed SAW from the SAW CA instead (docs/SAW.md)")
