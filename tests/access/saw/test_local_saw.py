"""The local development SAW: `voicelog dev saw` writes and registers it, it is refused beside a production
issuer, and what it relaxes (forwarded headers for the sign-in's origin, the dev issuer behind its nginx) is
believed from trusted proxies only. The end-to-end path (real nginx, Chromium) is in tests/test_demo.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from pydantic import ValidationError
from starlette.requests import Request
from typer.testing import CliRunner

from app import migrate
from app.access.saw.cli import saw_cli
from app.access.saw.settings import (
    LocalSawBesideProductionIssuer,
    SawSettings,
    refuse_local_saw_beside_production,
)
from app.config import Settings
from app.console.dev_login import _from_loopback
from app.console.security import public_origin
from app.identity.cli import dev_cli
from app.identity.staff.cli import staff_cli
from tests.fixtures.saw import nginx_binary

cli = typer.Typer()
cli.add_typer(staff_cli, name="staff")
cli.add_typer(saw_cli, name="saw")
cli.add_typer(dev_cli, name="dev")
LOCAL = SawSettings(local_dev=True)
PROXY = "127.0.0.1"
SAW_HEADERS = [("x-forwarded-proto", "https"), ("x-forwarded-host", "127.0.0.1:8443"), ("x-real-ip", "127.0.0.1")]


def request(peer: str, headers: list[tuple[str, str]], host: str = "127.0.0.1") -> Request:
    """A request as voicelog's server sees it: the TCP peer, the Host nginx sent, the headers."""
    raw = [(b"host", host.encode())] + [(k.encode(), v.encode()) for k, v in headers]
    return Request({"type": "http", "method": "GET", "path": "/console/login", "raw_path": b"/console/login",
                    "query_string": b"", "headers": raw, "client": (peer, 50000), "server": ("127.0.0.1", 8000),
                    "scheme": "http", "root_path": ""})


def test_the_sign_in_origin_follows_the_trusted_proxy() -> None:
    assert public_origin(request(PROXY, SAW_HEADERS), LOCAL.trusted_proxies) == "https://127.0.0.1:8443"


@pytest.mark.parametrize(("peer", "headers"), [
    ("127.0.0.2", SAW_HEADERS),  # not the proxy
    (PROXY, [*SAW_HEADERS, ("x-forwarded-for", "127.0.0.1")]),  # the "proxy" came from a forwarding header
    (PROXY, [*SAW_HEADERS, ("x-forwarded-host", "evil.example")]),  # sent twice
    (PROXY, [("x-forwarded-proto", "https"), ("x-forwarded-host", "evil.example/@x")]),  # not a host
    (PROXY, [("x-forwarded-proto", "javascript"), ("x-forwarded-host", "127.0.0.1:8443")]),
])
def test_forwarded_origin_headers_count_only_from_a_trusted_proxy_and_well_formed(
        peer: str, headers: list[tuple[str, str]]) -> None:
    trusted = SawSettings.model_validate({"trusted_proxies": ["127.0.0.1/32"]}).trusted_proxies
    assert public_origin(request(peer, headers), trusted) == "http://127.0.0.1"


def test_the_dev_issuer_signs_in_through_the_local_saw_only() -> None:
    assert _from_loopback(request(PROXY, SAW_HEADERS), LOCAL)
    # The same proxied request without local_dev, or reporting another machine's browser, or from elsewhere:
    assert not _from_loopback(request(PROXY, SAW_HEADERS), SawSettings(trusted_proxies=LOCAL.trusted_proxies))
    assert not _from_loopback(request(PROXY, [*SAW_HEADERS[:2], ("x-real-ip", "10.1.2.3")]), LOCAL)
    assert not _from_loopback(request("127.0.0.2", SAW_HEADERS), LOCAL)
    assert not _from_loopback(request(PROXY, [*SAW_HEADERS, ("x-forwarded-for", "127.0.0.1")]), LOCAL)
    assert not _from_loopback(request(PROXY, [*SAW_HEADERS, ("x-real-ip", "127.0.0.1")]), LOCAL)  # twice


def test_local_dev_trusts_the_loopback_nginx_only() -> None:
    assert [str(n) for n in LOCAL.trusted_proxies] == ["127.0.0.1/32"]
    with pytest.raises(ValidationError, match="loopback proxies only"):
        SawSettings.model_validate({"local_dev": True, "trusted_proxies": ["10.20.0.4/32"]})


def test_local_dev_is_refused_beside_a_production_issuer() -> None:
    refuse_local_saw_beside_production(LOCAL, production_issuer=False)
    refuse_local_saw_beside_production(SawSettings(), production_issuer=True)
    with pytest.raises(LocalSawBesideProductionIssuer, match="production issuer"):
        refuse_local_saw_beside_production(LOCAL, production_issuer=True)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("VOICELOG_DATABASE_URL", "VOICELOG_IDENTITY__ISSUER", "VOICELOG_IDENTITY__AUDIENCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VOICELOG_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    migrate.upgrade(Settings().resolved_database_url)
    return tmp_path / "data"


def test_dev_saw_writes_registers_and_prints_the_nginx_command(data_dir: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["staff", "add", "alice", "--name", "Alice", "--role", "engineer"]).exit_code == 0
    result = runner.invoke(cli, ["dev", "saw", "--owner", "alice", "--port", "18443"])
    assert result.exit_code == 0, result.output
    saw_dir = data_dir / "local-saw"
    cert = x509.load_pem_x509_certificate((saw_dir / "saw.crt").read_bytes())
    (row,) = json.loads(runner.invoke(cli, ["saw", "list", "--json"]).output)
    assert (row["owner_subject"], row["label"], row["cert_sha256"]) == (
        "alice", "LOCAL-DEV-SAW-alice", cert.fingerprint(hashes.SHA256()).hex())
    assert "LOCAL DEVELOPMENT" in cert.issuer.rfc4514_string()
    assert f"-c {saw_dir / 'nginx.conf'}" in result.output
    assert str(saw_dir / "saw.p12") in result.output
    assert "VOICELOG_SAW__LOCAL_DEV=true" in result.output
    assert {p.name: p.stat().st_mode & 0o777 for p in saw_dir.glob("*.key")} == {"server.key": 0o600, "saw.key": 0o600}
    checked = subprocess.run([nginx_binary(), "-t", "-p", str(saw_dir), "-c", str(saw_dir / "nginx.conf"),
                              "-e", str(saw_dir / "error.log")], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr


def test_dev_saw_for_an_unknown_person_says_so(data_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["dev", "saw", "--owner", "nobody"])
    assert result.exit_code == 2
    assert "saw_owner_invalid" in result.output


def test_dev_saw_is_refused_beside_a_production_issuer(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICELOG_DATABASE_URL", "postgresql+asyncpg://voicelog@127.0.0.1/never-reached")
    monkeypatch.setenv("VOICELOG_IDENTITY__ISSUER", "https://login.microsoftonline.com/t/v2.0")
    monkeypatch.setenv("VOICELOG_IDENTITY__AUDIENCE", "api://voicelog")
    result = CliRunner().invoke(cli, ["dev", "saw", "--owner", "alice"])
    assert result.exit_code == 2
    assert "production issuer" in result.output
    assert not (data_dir / "local-saw").exists()
