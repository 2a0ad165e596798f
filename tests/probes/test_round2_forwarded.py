"""Round-2 probes of the local development SAW and forwarded headers (issue 19): who may reach the dev
issuer with `saw.local_dev`, which forwarded origin the console believes, and whether `local_dev` can run
beside a production issuer (SAW.md: "refused beside a production issuer").
"""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.requests import Request

from app.access.saw.settings import SawSettings
from app.config import Settings
from app.console.dev_login import _from_loopback
from app.console.security import public_origin

ENTRA = "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"
AUDIENCE = "00000000-aaaa-bbbb-cccc-000000000000"
LOCAL = SawSettings(local_dev=True)
PROXY = "127.0.0.1"
SAW_HEADERS = [("x-forwarded-proto", "https"), ("x-forwarded-host", "127.0.0.1:8443"), ("x-real-ip", "127.0.0.1")]


def request(peer: str, headers: list[tuple[str, str]], host: str = "127.0.0.1") -> Request:
    raw = [(b"host", host.encode())] + [(k.encode(), v.encode("latin-1")) for k, v in headers]
    return Request({"type": "http", "method": "GET", "path": "/console/login", "raw_path": b"/console/login",
                    "query_string": b"", "headers": raw, "client": (peer, 50000), "server": ("127.0.0.1", 8000),
                    "scheme": "http", "root_path": ""})


@pytest.mark.parametrize(("peer", "headers"), [
    ("10.0.0.5", []),  # another machine, straight to voicelog
    ("10.0.0.5", [("x-real-ip", "127.0.0.1")]),  # ... claiming a loopback browser
    ("10.0.0.5", SAW_HEADERS),  # ... dressed as the local SAW's nginx
    ("::ffff:10.0.0.5", [("x-real-ip", "127.0.0.1")]),
    ("192.168.1.20", [("x-real-ip", "::1"), ("x-forwarded-proto", "https")]),
    (PROXY, [("x-real-ip", "10.0.0.5")]),  # the nginx reports another machine's browser
    (PROXY, [("x-real-ip", "127.0.0.1, 10.0.0.5")]),
    (PROXY, [("x-real-ip", "127.0.0.1"), ("forwarded", "for=10.0.0.5")]),
    (PROXY, [("x-real-ip", "127.0.0.1"), ("x-forwarded-for", "10.0.0.5")]),
    (PROXY, [("x-real-ip", "")]),
    ("localhost", []),  # not an address
    ("0.0.0.0", []),  # noqa: S104 (a peer address, not a bind)
])
def test_the_dev_issuer_is_never_reached_from_another_machine_with_local_dev(
        peer: str, headers: list[tuple[str, str]]) -> None:
    assert not _from_loopback(request(peer, headers), LOCAL)


@pytest.mark.parametrize("headers", [
    [("x-forwarded-proto", "https"), ("x-forwarded-host", "evil.example")],
    [("x-forwarded-proto", "https"), ("x-forwarded-host", "evil.example"), ("x-forwarded-for", "127.0.0.1")],
    [("forwarded", "proto=https;host=evil.example")],
    [("x-forwarded-host", "evil.example:443"), ("x-forwarded-port", "443"), ("x-forwarded-scheme", "https")],
])
@pytest.mark.parametrize("peer", ["10.0.0.5", "127.0.0.2", "::1"])
def test_an_untrusted_peer_cannot_move_the_sign_in_origin_by_forwarded_headers(
        peer: str, headers: list[tuple[str, str]]) -> None:
    assert public_origin(request(peer, headers), LOCAL.trusted_proxies) == "http://127.0.0.1"


@pytest.mark.parametrize("host", [
    "127.0.0.1:8443\r\nSet-Cookie: a=b",  # header injection into the redirect
    "127.0.0.1:8443\nx",
    "evil.example/console",
    "evil.example?x=",
    "evil.example#x",
    "a@evil.example",
    "evil.example\\@127.0.0.1",
    "%65vil.example",
    "\u00e9vil.example",
    "evil.example, 127.0.0.1:8443",
    "",
    "[::1",
    "127.0.0.1:8443:1",
])
def test_a_malformed_forwarded_host_from_the_trusted_proxy_is_ignored(host: str) -> None:
    headers = [("x-forwarded-proto", "https"), ("x-forwarded-host", host), ("x-real-ip", "127.0.0.1")]
    assert public_origin(request(PROXY, headers), LOCAL.trusted_proxies) == "http://127.0.0.1"


def test_local_dev_beside_a_production_issuer_is_refused_before_serving(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SAW.md: `VOICELOG_SAW__LOCAL_DEV=true` ... is refused beside a production issuer. `voicelog dev saw` and
    the demo refuse it; the service itself must too (its settings, or at the latest when the app is built)."""
    from app.main import create_app

    monkeypatch.setenv("VOICELOG_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("VOICELOG_DATABASE_URL", raising=False)
    monkeypatch.setenv("VOICELOG_SAW__LOCAL_DEV", "true")
    monkeypatch.setenv("VOICELOG_IDENTITY__ISSUER", ENTRA)
    monkeypatch.setenv("VOICELOG_IDENTITY__AUDIENCE", AUDIENCE)
    with pytest.raises(ValueError, match=r"(?i)local"):
        create_app(Settings())
