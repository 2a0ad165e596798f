"""Identity settings: the dev issuer never runs beside a production issuer; production needs its parts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.identity.routes import load_dev_issuer
from app.identity.settings import IdentitySettings
from app.identity.tokens import OidcTokenVerifier, build_token_verifier

ENTRA = "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"
AUDIENCE = "00000000-aaaa-bbbb-cccc-000000000000"


@pytest.mark.parametrize(
    "production",
    [{"issuer": ENTRA, "audience": AUDIENCE},
     {"issuer": ENTRA, "audience": AUDIENCE, "jwks_url": "https://login.microsoftonline.com/common/keys"},
     {"jwks_url": "https://login.microsoftonline.com/common/discovery/v2.0/keys"},
     {"discovery_url": f"{ENTRA}/.well-known/openid-configuration"},
     {"audience": AUDIENCE},
     {"staff_tenant": "11111111-2222-3333-4444-555555555555"}],
    ids=["issuer", "issuer-jwks", "jwks-only", "discovery-only", "audience-only", "staff-tenant-only"],
)
def test_dev_issuer_together_with_a_production_issuer_is_refused(production: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="dev issuer cannot be enabled together with a production issuer"):
        IdentitySettings(dev_issuer_enabled=True, **production)


def test_dev_issuer_and_production_issuer_refused_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import Settings  # reads VOICELOG_IDENTITY__* as `voicelog serve` and the CLIs do

    monkeypatch.setenv("VOICELOG_IDENTITY__DEV_ISSUER_ENABLED", "true")
    monkeypatch.setenv("VOICELOG_IDENTITY__ISSUER", ENTRA)
    monkeypatch.setenv("VOICELOG_IDENTITY__AUDIENCE", AUDIENCE)

    with pytest.raises(ValidationError, match="dev issuer cannot be enabled"):
        Settings()


def test_production_issuer_needs_an_audience() -> None:
    with pytest.raises(ValidationError, match="needs `audience`"):
        IdentitySettings(issuer=ENTRA)


@pytest.mark.parametrize("partial", [{"jwks_url": "https://x.example/keys"}, {"audience": AUDIENCE}])
def test_production_parts_without_an_issuer_are_refused(partial: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="need `issuer`"):
        IdentitySettings(**partial)


@pytest.mark.parametrize("field", ["issuer", "jwks_url", "discovery_url"])
def test_remote_plain_http_is_refused(field: str) -> None:
    values = {"issuer": ENTRA, "audience": AUDIENCE, field: "http://login.example.com/tenant/v2.0"}

    with pytest.raises(ValidationError, match="https"):
        IdentitySettings(**values)


def test_multi_tenant_issuer_needs_an_explicit_key_location() -> None:
    template = "https://login.microsoftonline.com/{tenantid}/v2.0"
    with pytest.raises(ValidationError, match="jwks_url"):
        IdentitySettings(issuer=template, audience=AUDIENCE)

    settings = IdentitySettings(
        issuer=template, audience=AUDIENCE, staff_tenant="staff",
        discovery_url="https://login.microsoftonline.com/organizations/v2.0/.well-known/openid-configuration",
    )
    assert settings.resolved_discovery_url() == settings.discovery_url


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/oidc", "http://127.0.0.1:8000/dev/oidc/",
                                 "ftp://127.0.0.1/dev/oidc", "http://127.0.0.1/dev/oidc?x=1"])
def test_dev_issuer_url_must_point_at_the_dev_routes(url: str) -> None:
    with pytest.raises(ValidationError):
        IdentitySettings(dev_issuer_enabled=True, dev_issuer_url=url)


def test_unknown_knobs_are_refused() -> None:
    with pytest.raises(ValidationError):
        IdentitySettings(isuer=ENTRA)  # type: ignore[call-arg]


def test_defaults_configure_no_verifier(tmp_path: Path) -> None:
    settings = IdentitySettings()

    assert build_token_verifier(settings, load_dev_issuer(settings, tmp_path)) is None
    assert not settings.dev_issuer_enabled
    assert settings.dev_key_dir(tmp_path) == tmp_path / "dev-issuer"


def test_production_settings_build_a_discovery_verifier(tmp_path: Path) -> None:
    settings = IdentitySettings(issuer=ENTRA, audience=AUDIENCE)

    verifier = build_token_verifier(settings, load_dev_issuer(settings, tmp_path))

    assert isinstance(verifier, OidcTokenVerifier)
    assert verifier.issuer == ENTRA
    assert verifier.audience == AUDIENCE
    assert settings.resolved_discovery_url() == f"{ENTRA}/.well-known/openid-configuration"
    assert not (tmp_path / "dev-issuer").exists()


@pytest.fixture
def embedded_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment of `make serve`: no database URL, nothing of identity set unless a test sets it."""
    monkeypatch.setenv("VOICELOG_DATA_DIR", str(tmp_path / "data"))
    for name in [n for n in os.environ if n.startswith(("VOICELOG_IDENTITY__", "VOICELOG_DATABASE_URL"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("VOICELOG_PORT", "8123")
    return monkeypatch


def test_embedded_default_runs_the_dev_issuer_on_its_port(embedded_env: pytest.MonkeyPatch) -> None:
    from app.config import Settings

    identity = Settings().identity
    assert identity.dev_issuer_enabled
    assert identity.dev_issuer_url == "http://127.0.0.1:8123/dev/oidc"


def test_embedded_dev_issuer_combines_with_other_identity_settings(embedded_env: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """Issue 19: any VOICELOG_IDENTITY__* used to turn the dev issuer off without a word."""
    from app.config import Settings

    embedded_env.setenv("VOICELOG_IDENTITY__LEEWAY_S", "45")
    embedded_env.setenv("VOICELOG_IDENTITY__DEV_ISSUER_KEY_DIR", str(tmp_path / "keys"))
    identity = Settings().identity
    assert identity.dev_issuer_enabled
    assert identity.dev_issuer_url == "http://127.0.0.1:8123/dev/oidc"
    assert identity.leeway_s == 45
    assert identity.dev_issuer_key_dir == tmp_path / "keys"


def test_embedded_dev_issuer_url_set_explicitly_is_kept(embedded_env: pytest.MonkeyPatch) -> None:
    from app.config import Settings

    embedded_env.setenv("VOICELOG_IDENTITY__DEV_ISSUER_URL", "http://localhost:9000/dev/oidc")
    assert Settings().identity.dev_issuer_url == "http://localhost:9000/dev/oidc"


def test_embedded_dev_issuer_turned_off_stays_off(embedded_env: pytest.MonkeyPatch) -> None:
    from app.config import Settings

    embedded_env.setenv("VOICELOG_IDENTITY__DEV_ISSUER_ENABLED", "false")
    assert not Settings().identity.dev_issuer_enabled


def test_embedded_with_a_production_issuer_runs_no_dev_issuer(embedded_env: pytest.MonkeyPatch) -> None:
    from app.config import Settings

    embedded_env.setenv("VOICELOG_IDENTITY__ISSUER", ENTRA)
    embedded_env.setenv("VOICELOG_IDENTITY__AUDIENCE", AUDIENCE)
    identity = Settings().identity
    assert not identity.dev_issuer_enabled
    assert identity.issuer == ENTRA


def test_with_a_database_url_the_dev_issuer_needs_turning_on(embedded_env: pytest.MonkeyPatch) -> None:
    from app.config import Settings

    embedded_env.setenv("VOICELOG_DATABASE_URL", "postgresql+asyncpg://127.0.0.1/voicelog")
    embedded_env.setenv("VOICELOG_IDENTITY__LEEWAY_S", "45")
    assert not Settings().identity.dev_issuer_enabled
