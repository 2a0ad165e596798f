"""Settings: every knob of voicelog, read from `VOICELOG_*` environment variables.

The defaults are the embedded ones: one command runs the whole service on a laptop with a SQLite file,
local blob directories for two regions, a local keyring and the built-in stand-in upstream. Production
overrides them (PostgreSQL, Azure Blob Storage per region, Key Vault, Entra ID).
"""

from __future__ import annotations

import inspect
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from app.access.saw.settings import SawSettings, refuse_local_saw_beside_production
from app.access.settings import AccessSettings
from app.audit.settings import AuditSettings
from app.capture.settings import CaptureSettings
from app.console.settings import ConsoleSettings
from app.identity.settings import IdentitySettings
from app.regions import RegionSettings
from app.relay.settings import RelaySettings
from app.relay.standin.settings import StandinSettings
from app.resources.settings import ResourceSettings
from app.retention.settings import RetentionSettings
from app.secret_files import SecretFilesSource
from app.server.settings import LogFormat, ServerSettings
from app.storage.settings import StorageSettings
from app.tickets.settings import ConsentSettings
from app.tracing.settings import TracingSettings
from app.vault.settings import VaultSettings


def _default_regions() -> list[RegionSettings]:
    return [RegionSettings(name="eastus"), RegionSettings(name="westeurope")]


# The domain bases are listed in the reverse of their rows' order in docs/CONFIGURATION.md: pydantic takes
# the last base's fields first.
class Settings(RelaySettings, StandinSettings, ConsentSettings, ResourceSettings, AccessSettings, BaseSettings):
    """All of voicelog's configuration; one instance is built at start and passed down, never global.

    A domain's flat knobs (`VOICELOG_RESOURCE_REFRESH_S`, ...) are declared by its settings model, inherited
    here so the variable names stay flat; nested ones (`VOICELOG_AUDIT__*`, ...) are fields below."""

    # hide_input_in_errors: a value that fails validation may be a secret; the error names the setting only.
    model_config = SettingsConfigDict(env_prefix="VOICELOG_", env_nested_delimiter="__", extra="ignore",
                                      hide_input_in_errors=True)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment first, then the files of `VOICELOG_SECRETS_DIR` (app/secret_files.py)."""
        return init_settings, env_settings, SecretFilesSource(settings_cls), dotenv_settings, file_secret_settings

    # --- where things live -------------------------------------------------------------------------
    secrets_dir: Path | None = Field(
        default=None,
        description="A directory of files named like these variables (`VOICELOG_DATABASE_URL`, "
        "`VOICELOG_AUDIT__SIGNING_KEY`, ...), each holding its value: secrets mounted by the CSI driver are read "
        "from there and never copied into a Kubernetes Secret or the environment. A variable set in the "
        "environment wins over its file. Environment only.",
    )
    data_dir: Path = Field(
        default=Path(".voicelog"),
        description="Everything the embedded default writes: SQLite file, blob directories, keyring.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy async URL (`postgresql+asyncpg://...`); unset = SQLite in the data dir.",
    )
    database_pool_size: int = Field(
        default=10, ge=1, le=100,
        description="PostgreSQL connections each process keeps open (serve, worker). Every replica of every "
        "region shares one server: replicas x (pool size + overflow) must stay under its max_connections.",
    )
    database_service_role: str | None = Field(
        default=None,
        description="`voicelog db upgrade` only (run as the owner role): the PostgreSQL role the service "
        "connects as, granted exactly its privileges after migrating (docs/AUDIT.md, Database roles).",
    )
    database_max_overflow: int = Field(
        default=20, ge=0, le=200, description="PostgreSQL connections a process may open beyond the pool at peaks.",
    )
    database_connect_timeout_s: float = Field(
        default=10.0, gt=0, le=120,
        description="A new PostgreSQL connection of background work (recorder, jobs) gives up after this long; "
        "API requests give up after the shorter of this and the request timeout.",
    )
    database_request_timeout_s: float = Field(
        default=2.0, gt=0, le=60,
        description="API requests only: each statement (client command timeout and PostgreSQL "
        "statement_timeout), the wait for a pooled connection and a new connection give up after this long, "
        "and the route answers 503 `database_unavailable` with Retry-After. Background jobs are not cut.",
    )
    database_request_pool_size: int = Field(
        default=5, ge=1, le=100,
        description="PostgreSQL connections each serving process keeps for API requests, beside the pool of "
        "background work: replicas x (pool size + overflow + request pool size) must stay under max_connections.",
    )
    regions: list[RegionSettings] = Field(
        default_factory=_default_regions,
        description="Configured regions (JSON list). A resource's region must be one of these (C3).",
    )

    # --- HTTP server -------------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Address `voicelog serve` binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `voicelog serve` binds.")
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for /admin/*. Unset: the embedded default generates one into the "
        "data dir (file `admin-token`, mode 0600); with a database URL set, /admin/* is closed.",
    )
    log_level: str = Field(default="INFO", description="Log level of the service's logs (`DEBUG` adds "
                           "APScheduler's line per job run).")
    log_format: LogFormat = Field(
        default="auto", description="`voicelog serve`'s and `voicelog worker`'s logs on stderr: `json` (one JSON "
        "object a line), `console` (human-readable, coloured on a terminal), or `auto`: `console` when stderr "
        "is a terminal, `json` otherwise (a pipe, a file, a container's log). Other commands log human-readably.",
    )
    server: ServerSettings = Field(
        default_factory=ServerSettings,
        description="The HTTP server's limits: request head sizes, head and keep-alive timeouts, connections "
        "per client address (`VOICELOG_SERVER__*`).",
    )
    identity: IdentitySettings = Field(
        default_factory=IdentitySettings,
        description="Bearer-token verification: the Entra ID issuer or the built-in dev issuer "
        "(`VOICELOG_IDENTITY__*`). The embedded default runs the dev issuer unless a production issuer is set "
        "or `VOICELOG_IDENTITY__DEV_ISSUER_ENABLED=false`; other identity settings combine with it.",
    )

    workers: int | None = Field(
        default=None, ge=1, description="Processes `voicelog serve` runs, sharing its port: one event loop uses one "
        "core, so a pod with N cores runs N. Unset: one per CPU this process may run on (`sched_getaffinity`; in "
        "a container that is the node's, not the pod's: set it there) on PostgreSQL, 1 on SQLite. More than 1 on "
        "SQLite is refused at start: its job locks are in-process only. Pools and session limits are per process.",
    )

    vault: VaultSettings = Field(
        default_factory=VaultSettings,
        description="Envelope keys: bucket lifetime, local keyring, Key Vault key type (`VOICELOG_VAULT__*`).",
    )

    saw: SawSettings = Field(
        default_factory=SawSettings,
        description="Secure access workstations: which mutual-TLS proxies to believe (`VOICELOG_SAW__*`).",
    )
    audit: AuditSettings = Field(
        default_factory=AuditSettings,
        description="The audit trail: checkpoint cadence, signing keys, export (`VOICELOG_AUDIT__*`).",
    )
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings,
        description="The scheduler: purge cadence, orphan sweep, reports, job cadences (`VOICELOG_RETENTION__*`).",
    )
    tracing: TracingSettings = Field(
        default_factory=TracingSettings,
        description="OpenTelemetry tracing (`VOICELOG_TRACING__*`); off unless an OTLP endpoint is set.",
    )
    console: ConsoleSettings = Field(
        default_factory=ConsoleSettings, description="The web console at /console (`VOICELOG_CONSOLE__*`)."
    )
    storage: StorageSettings = Field(
        default_factory=StorageSettings,
        description="Blob stores: timeouts, part limits, service API version (`VOICELOG_STORAGE__*`).",
    )
    capture: CaptureSettings = Field(
        default_factory=CaptureSettings,
        description="The recorder: segment cadence, memory caps, failure deadlines (`VOICELOG_CAPTURE__*`).",
    )

    @field_validator("regions")
    @classmethod
    def _unique_regions(cls, regions: list[RegionSettings]) -> list[RegionSettings]:
        names = [r.name for r in regions]
        if len(set(names)) != len(names):
            raise ValueError("region names must be unique")
        if not regions:
            raise ValueError("at least one region must be configured")
        return regions

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        for region in self.regions:
            if region.blob_backend == "local" and region.blob_path is None:
                region.blob_path = self.data_dir / "blobs" / region.name
        if self.embedded:  # the laptop default signs people in with the dev issuer; production sets an issuer
            self.identity = self.identity.for_embedded_default(self.port)
        refuse_local_saw_beside_production(self.saw, production_issuer=self.identity.production)
        return self

    @property
    def embedded(self) -> bool:
        """True when running on the embedded SQLite default (laptop/demo mode)."""
        return self.database_url is None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'voicelog.db').resolve()}"

    def region(self, name: str) -> RegionSettings | None:
        return next((r for r in self.regions if r.name == name), None)

    @property
    def region_names(self) -> list[str]:
        return [r.name for r in self.regions]


def _type_name(annotation: object) -> str:
    text = str(annotation).replace("typing.", "").replace("pathlib.", "").replace("pydantic.types.", "")
    text = text.replace("<class '", "").replace("'>", "").replace("app.config.", "")
    return text.replace("|", "\\|")


def settings_reference() -> str:
    """docs/CONFIGURATION.md, generated from the models so the documentation cannot drift (a test checks)."""
    lines = [
        "# Configuration",
        "",
        "Every setting is an environment variable with the `VOICELOG_` prefix; nested models use `__`",
        "(e.g. `VOICELOG_AUDIT__CHECKPOINT_EVERY`), lists and models can also be given as JSON",
        "(e.g. `VOICELOG_REGIONS='[{\"name\": \"eastus\", \"blob_backend\": \"azure\", ...}]'`).",
        "Defaults are the embedded ones: `make serve` needs none of these.",
        "",
        "This file is generated by `voicelog config reference`; a test fails when it differs from the code.",
        "",
    ]

    def table(model: type[BaseModel], prefix: str) -> list[str]:
        rows = ["| Variable | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
        nested: list[tuple[str, type[BaseModel]]] = []
        own = vars(model).get("__annotations__", {})
        # The model's own fields first, then those its domain bases declare (pydantic lists bases' first).
        for name, field in sorted(model.model_fields.items(), key=lambda item: item[0] not in own):
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                nested.append((name, annotation))
                continue
            if field.default_factory is not None:
                default = "see below" if name == "regions" else "(computed)"
            else:
                default = "(unset)" if field.default is None else f"`{field.default}`"
            description = (field.description or "").replace("|", "\\|").replace("\n", " ")
            rows.append(f"| `{prefix}{name.upper()}` | `{_type_name(annotation)}` | {default} | {description} |")
        out = [*rows, ""]
        for name, sub in nested:
            out += [f"### `{prefix}{name.upper()}__*`", "", inspect.cleandoc(sub.__doc__ or ""), ""]
            out += table(sub, f"{prefix}{name.upper()}__")
        return out

    lines += ["## Service", "", *table(Settings, "VOICELOG_")]
    lines += ["## Regions (`VOICELOG_REGIONS`, a JSON list of objects)", "",
              (RegionSettings.__doc__ or "").strip(), "",
              "Default: `eastus` and `westeurope`, both `local` under `<data_dir>/blobs/<name>`.", ""]
    rows = ["| Field | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
    for name, field in RegionSettings.model_fields.items():
        unset = "(unset)" if field.default is None else f"`{field.default}`"
        default = "(required)" if field.is_required() else unset
        rows.append(f"| `{name}` | `{_type_name(field.annotation)}` | {default} | {field.description or ''} |")
    lines += [*rows, ""]
    return "\n".join(lines)
