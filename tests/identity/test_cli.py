"""`voicelog dev token`: prints a token the running service (same settings, same key dir) accepts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from app.identity.cli import dev_cli
from app.identity.principal import Role
from app.identity.routes import load_dev_issuer
from app.identity.settings import IdentitySettings
from app.identity.tokens import build_token_verifier

runner = CliRunner()


async def invoke_outside_the_loop(args: list[str]) -> Result:
    """The command as a shell runs it, with no event loop of its own running (it runs its context in one); the
    async tests await the service's verifier afterwards."""
    return await asyncio.to_thread(runner.invoke, dev_cli, args)


@pytest.fixture
def dev_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VOICELOG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VOICELOG_IDENTITY__DEV_ISSUER_ENABLED", "true")
    return tmp_path / "data"


async def test_dev_token_is_accepted_by_the_service_verifier(dev_env: Path) -> None:
    result = await invoke_outside_the_loop(["token", "--as", "alice", "--role", "engineer", "--role", "manager",
                                            "--tenant", "fabrikam"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()

    identity = IdentitySettings(dev_issuer_enabled=True)
    verifier = build_token_verifier(identity, load_dev_issuer(identity, dev_env))
    assert verifier is not None
    principal = await verifier.verify(token)

    assert principal.subject == "alice"
    assert principal.roles == frozenset({Role.ENGINEER, Role.MANAGER})
    assert principal.tenant == "fabrikam"
    assert (dev_env / "dev-issuer" / "signing-key.pem").exists()


def test_unknown_role_is_a_usage_error(dev_env: Path) -> None:
    result = runner.invoke(dev_cli, ["token", "--as", "alice", "--role", "root"])

    assert result.exit_code == 2
    assert not (dev_env / "dev-issuer").exists()


def test_refuses_when_the_dev_issuer_is_off(dev_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICELOG_IDENTITY__DEV_ISSUER_ENABLED", "false")

    result = runner.invoke(dev_cli, ["token", "--as", "alice"])

    assert result.exit_code == 2
    assert "not enabled" in result.output
    assert not (dev_env / "dev-issuer").exists()


def test_refuses_beside_a_production_issuer(dev_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICELOG_IDENTITY__ISSUER", "https://login.microsoftonline.com/t/v2.0")
    monkeypatch.setenv("VOICELOG_IDENTITY__AUDIENCE", "api://voicelog")

    result = runner.invoke(dev_cli, ["token", "--as", "alice", "--role", "admin"])

    assert result.exit_code == 2
    assert "dev issuer cannot be enabled" in result.output
    assert "eyJ" not in result.output


async def test_dev_token_on_the_embedded_default_with_another_identity_setting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make serve` with VOICELOG_IDENTITY__LEEWAY_S set still runs the dev issuer on its port: the CLI's token
    carries that issuer and the service's own settings verify it (issue 19: the dev issuer used to go off)."""
    from app.config import Settings

    monkeypatch.setenv("VOICELOG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("VOICELOG_DATABASE_URL", raising=False)
    monkeypatch.delenv("VOICELOG_IDENTITY__DEV_ISSUER_ENABLED", raising=False)
    monkeypatch.setenv("VOICELOG_PORT", "8124")
    monkeypatch.setenv("VOICELOG_IDENTITY__LEEWAY_S", "45")
    result = await invoke_outside_the_loop(["token", "--as", "alice", "--role", "engineer"])
    assert result.exit_code == 0, result.output

    settings = Settings()
    verifier = build_token_verifier(settings.identity, load_dev_issuer(settings.identity, settings.data_dir))
    assert verifier is not None
    principal = await verifier.verify(result.stdout.strip())
    assert principal.subject == "alice"
