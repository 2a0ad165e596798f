"""Console knobs (`VOICELOG_CONSOLE__*` once wired as `Settings.console`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class ConsoleSettings(BaseModel):
    """The web console: session cookie, session lifetimes, and the OIDC client it signs people in with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=True, description="Serve the web console under `/console`.")
    cookie_secure: bool = Field(
        default=True,
        description="Mark the session cookie `Secure`. Chromium and Firefox keep Secure cookies on "
        "http://127.0.0.1 and http://localhost, so the embedded default needs no change; turn it off only "
        "for another browser on plain-HTTP loopback. Never off behind a real host name.",
    )
    session_idle_minutes: int = Field(default=30, ge=1, le=480, description="Sign out after this much idle time.")
    session_max_hours: float = Field(default=8.0, gt=0, le=24, description="Sign out after this long, whatever.")
    max_sessions: int = Field(
        default=10_000, ge=10, description="Rows kept in the database per kind (signed-in sessions; used-once "
        "markers of sign-ins that came back): past it, each new one deletes those closest to expiry. Expired "
        "rows are deleted anyway.")
    client_id: str = Field(default="voicelog-console", min_length=1,
                           description="The console's OIDC client ID (Entra: the console app registration).")
    client_secret: SecretStr | None = Field(
        default=None, description="Confidential-client secret for the token endpoint (production); the dev "
        "issuer needs none (PKCE only).")
    authorization_endpoint: str | None = Field(
        default=None, description="Production: the issuer's authorization endpoint (Entra: "
        "`https://login.microsoftonline.com/<tenant>/oauth2/v2.0/authorize`). Dev issuer: unused.")
    token_endpoint: str | None = Field(
        default=None, description="Production: the issuer's token endpoint (Entra: `.../oauth2/v2.0/token`).")
    scope: str = Field(default="openid profile", description="Scopes asked for; production adds the API's "
                       "scope (e.g. `api://voicelog/.default`) so the access token's audience is voicelog.")
    public_url: str | None = Field(
        default=None, description="Production: the console's external base URL (e.g. `https://voicelog.example`); "
        "the OIDC redirect URI is `<public_url>/console/callback`. Unset: taken from the request (dev only).")
