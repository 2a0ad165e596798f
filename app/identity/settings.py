"""Identity knobs: the production OIDC issuer (Entra ID) or the built-in dev issuer, never both."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TENANT_PLACEHOLDER = "{tenantid}"
DEV_ISSUER_PATH = "/dev/oidc"


def check_fetch_url(url: str, *, allow_insecure_http: bool = False) -> str:
    """An issuer, discovery or JWKS URL must be https; plain http only for loopback (tests, dev)."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError("the URL needs a host")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and (allow_insecure_http or _is_loopback(parts.hostname)):
        return url
    raise ValueError("the URL must use https (plain http is accepted only for loopback addresses)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class IdentitySettings(BaseModel):
    """How bearer tokens are verified: a production OIDC issuer (`issuer`, `audience`, ...) or the built-in dev
    issuer, never both. On the embedded default (no `VOICELOG_DATABASE_URL`, as `make serve`) the dev issuer runs
    unless `issuer` is set or `dev_issuer_enabled` is set to false, at `http://127.0.0.1:<VOICELOG_PORT>/dev/oidc`
    unless `dev_issuer_url` is set; every other setting here combines with it (a longer `leeway_s`, another key
    directory). With a database URL it runs only when `dev_issuer_enabled` is true. Neither issuer: no
    verifier, every authenticated API answers 401."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- production issuer (Entra ID) -----------------------------------------------------------------
    issuer: str | None = Field(
        default=None,
        description="The OIDC issuer exactly as tokens carry it in `iss`. Entra ID v2 tokens: "
        "`https://login.microsoftonline.com/<tenant-id>/v2.0`. A multi-tenant app may use the literal "
        "placeholder `{tenantid}`; the token's `tid` is then put in its place before comparing.",
    )
    audience: str | None = Field(
        default=None,
        description="The `aud` tokens must carry: the voicelog API app registration's client ID "
        "(v2 tokens) or its Application ID URI. Required with `issuer`.",
    )
    jwks_url: str | None = Field(
        default=None,
        description="The issuer's JWKS URL. Unset: found through OIDC discovery at `discovery_url`.",
    )
    discovery_url: str | None = Field(
        default=None,
        description="OIDC discovery document (default `{issuer}/.well-known/openid-configuration`); its "
        "`issuer` must equal `issuer`. Required for a `{tenantid}` issuer unless `jwks_url` is set.",
    )
    staff_tenant: str | None = Field(
        default=None,
        description="When set, staff roles (engineer, manager, auditor, admin, ticketing) count only in "
        "tokens whose `tid` is this tenant; a token from any other tenant keeps at most `customer_admin`. "
        "Set it whenever customers sign in from their own tenants (a `{tenantid}` issuer).",
    )

    # --- verification ------------------------------------------------------------------------------------
    leeway_s: float = Field(
        default=30.0, ge=0, le=300, description="Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds."
    )
    jwks_cache_s: float = Field(
        default=3600.0, ge=10, le=86400, description="How long fetched signing keys are used before a refresh."
    )
    jwks_min_refresh_s: float = Field(
        default=60.0, ge=1, le=3600,
        description="Minimum time between two JWKS fetches, whatever triggers them (TTL or an unknown "
        "`kid`): a flood of tokens with random `kid`s cannot hammer the issuer.",
    )
    jwks_max_stale_s: float = Field(
        default=86400.0, ge=0,
        description="After a failed refresh, how long past `jwks_cache_s` the last good keys stay usable.",
    )
    jwks_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="Timeout of each discovery or JWKS HTTP request."
    )

    # --- built-in dev issuer ------------------------------------------------------------------------------
    dev_issuer_enabled: bool = Field(
        default=False,
        description="Run the built-in dev issuer (laptop and tests only): it signs any identity with any role "
        "for anyone who can reach it. Refused together with any production issuer setting. Unset on the "
        "embedded default: on unless `issuer` is set (see above).",
    )
    dev_issuer_key_dir: Path | None = Field(
        default=None,
        description="Where the dev issuer keeps its signing key (`signing-key.pem`, mode 0600); default "
        "`<data_dir>/dev-issuer`. `voicelog dev token` reads the same directory.",
    )
    dev_issuer_url: str = Field(
        default="http://127.0.0.1:8000/dev/oidc",
        description="The dev issuer's `iss`, and where its routes are (path must be `/dev/oidc`). The service "
        "reads the dev keys in-process through these routes; set it to the URL the service is reachable at "
        "only if outside tools should discover it. Unset on the embedded default: the port follows "
        "`VOICELOG_PORT`.",
    )
    dev_audience: str = Field(default="voicelog-dev", min_length=1, description="The `aud` of dev tokens.")

    @field_validator("issuer", "audience", "jwks_url", "discovery_url", "staff_tenant")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("jwks_url", "discovery_url")
    @classmethod
    def _fetchable(cls, value: str | None) -> str | None:
        return None if value is None else check_fetch_url(value)

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_fetch_url(value.replace(TENANT_PLACEHOLDER, "tenant"))
        return value  # compared byte for byte with `iss`: never normalised

    @field_validator("dev_issuer_url")
    @classmethod
    def _dev_issuer_url(cls, value: str) -> str:
        check_fetch_url(value, allow_insecure_http=True)
        parts = urlsplit(value)
        if parts.path != DEV_ISSUER_PATH or parts.query or parts.fragment or parts.username:
            raise ValueError(f"the dev issuer URL must be `<scheme>://<host>[:port]{DEV_ISSUER_PATH}`")
        return value

    @model_validator(mode="after")
    def _one_issuer(self) -> IdentitySettings:
        production = {
            name: getattr(self, name)
            for name in ("issuer", "audience", "jwks_url", "discovery_url", "staff_tenant")
            if getattr(self, name) is not None
        }
        if self.dev_issuer_enabled and production:
            raise ValueError(
                "the dev issuer cannot be enabled together with a production issuer "
                f"(set: {', '.join(sorted(production))}); it would let anyone mint staff tokens"
            )
        if production and self.issuer is None:
            raise ValueError(f"{', '.join(sorted(production))} need `issuer`")
        if self.issuer is not None and self.audience is None:
            raise ValueError("`issuer` needs `audience` (the voicelog API's client ID or Application ID URI)")
        if (self.issuer is not None and TENANT_PLACEHOLDER in self.issuer
                and self.jwks_url is None and self.discovery_url is None):
            raise ValueError(f"an issuer with {TENANT_PLACEHOLDER} needs `jwks_url` or `discovery_url`")
        return self

    @property
    def production(self) -> bool:
        return self.issuer is not None

    def for_embedded_default(self, port: int) -> IdentitySettings:
        """The embedded default's rule (class docstring): the dev issuer on unless a production issuer is set or
        it was turned off, its URL on `port` unless set; whatever else was set is kept, never dropped."""
        chosen = self.model_fields_set
        if self.production or ("dev_issuer_enabled" in chosen and not self.dev_issuer_enabled):
            return self
        values = self.model_dump(exclude_unset=True)
        values["dev_issuer_enabled"] = True
        values.setdefault("dev_issuer_url", f"http://127.0.0.1:{port}{DEV_ISSUER_PATH}")
        return IdentitySettings.model_validate(values)

    def resolved_discovery_url(self) -> str | None:
        """Where the production verifier finds the JWKS URL; None when `jwks_url` is set."""
        if self.issuer is None or self.jwks_url is not None:
            return None
        return self.discovery_url or f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"

    def dev_key_dir(self, data_dir: Path) -> Path:
        return self.dev_issuer_key_dir or data_dir / "dev-issuer"
