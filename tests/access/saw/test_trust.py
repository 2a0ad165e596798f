"""Which requests are believed to come from a SAW: only a trusted proxy's, with one verified certificate."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.requests import HTTPConnection
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.access.saw.settings import SawSettings
from app.access.saw.trust import (
    SawHeaderGuard,
    fingerprint_of_cert_header,
    is_trusted_peer,
    normalize_fingerprint,
    saw_fingerprint,
)
from tests.fixtures.saw import Issued

PROXY = SawSettings.model_validate({"trusted_proxies": ["10.0.0.5/32", "fd00::5/128"]})
Device = Callable[[str], Issued]


def request_from(peer: str | None, headers: Mapping[str, str] | list[tuple[str, str]]) -> HTTPConnection:
    items = list(headers.items()) if isinstance(headers, Mapping) else headers
    scope: dict[str, Any] = {
        "type": "http", "method": "GET", "path": "/", "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in items],
        "client": (peer, 40000) if peer else None,
    }
    return HTTPConnection(scope)


def test_a_trusted_proxys_verified_certificate_gives_its_sha256(saw_device: Device) -> None:
    device = saw_device("SAW-1")

    assert saw_fingerprint(request_from("10.0.0.5", device.headers), PROXY) == device.sha256
    assert saw_fingerprint(request_from("fd00::5", device.headers), PROXY) == device.sha256


def test_an_ipv4_proxy_seen_on_a_dual_stack_listener_is_the_same_proxy(saw_device: Device) -> None:
    device = saw_device("SAW-1")

    assert saw_fingerprint(request_from("::ffff:10.0.0.5", device.headers), PROXY) == device.sha256
    assert saw_fingerprint(request_from("::ffff:10.0.0.6", device.headers), PROXY) is None
    assert not is_trusted_peer("::ffff:10.0.0.5", ["10.0.0.5"], PROXY.trusted_proxies)


@pytest.mark.parametrize("peer", ["10.0.0.6", "127.0.0.1", "fd00::6", None, "not-an-ip"])
def test_headers_from_any_other_peer_are_ignored(saw_device: Device, peer: str | None) -> None:
    assert saw_fingerprint(request_from(peer, saw_device("SAW-1").headers), PROXY) is None


def test_nothing_is_trusted_by_default(saw_device: Device) -> None:
    assert saw_fingerprint(request_from("127.0.0.1", saw_device("SAW-1").headers), SawSettings()) is None


def test_trusting_everyone_is_refused() -> None:
    for everyone in ("0.0.0.0/0", "::/0"):
        with pytest.raises(ValidationError, match="anyone"):
            SawSettings.model_validate({"trusted_proxies": [everyone]})
    with pytest.raises(ValidationError):
        SawSettings.model_validate({"trusted_proxies": ["10.0.0.1/24"]})  # host bits set: a typo


@pytest.mark.parametrize("verify", [None, "FAILED:certificate revoked", "NONE", "success", "SUCCESS "])
def test_the_proxy_must_report_success(saw_device: Device, verify: str | None) -> None:
    headers = dict(saw_device("SAW-1").headers)
    headers.pop("x-ssl-client-verify")
    if verify is not None:
        headers["x-ssl-client-verify"] = verify

    assert saw_fingerprint(request_from("10.0.0.5", headers), PROXY) is None


def test_repeated_headers_are_refused(saw_device: Device) -> None:
    one, other = saw_device("SAW-1"), saw_device("SAW-2")
    doubled_cert = [*one.headers.items(), ("x-ssl-client-cert", other.headers["x-ssl-client-cert"])]
    doubled_verify = [*one.headers.items(), ("x-ssl-client-verify", "SUCCESS")]

    assert saw_fingerprint(request_from("10.0.0.5", doubled_cert), PROXY) is None
    assert saw_fingerprint(request_from("10.0.0.5", doubled_verify), PROXY) is None


def test_a_peer_named_in_x_forwarded_for_is_not_believed(saw_device: Device) -> None:
    """uvicorn rewrites the peer from X-Forwarded-For; a forged one naming the proxy must not pass for it."""
    headers = {**saw_device("SAW-1").headers, "x-forwarded-for": "10.0.0.5"}

    assert saw_fingerprint(request_from("10.0.0.5", headers), PROXY) is None
    assert not is_trusted_peer("10.0.0.5", ["203.0.113.9, 10.0.0.5"], PROXY.trusted_proxies)
    assert not is_trusted_peer("10.0.0.5", ["10.0.0.5:443"], PROXY.trusted_proxies)
    assert not is_trusted_peer("fd00::5", ["[fd00::5]:443"], PROXY.trusted_proxies)
    assert not is_trusted_peer("fd00::5", ["fd00::5"], PROXY.trusted_proxies)
    assert is_trusted_peer("10.0.0.5", ["203.0.113.9"], PROXY.trusted_proxies)


async def test_uvicorn_proxy_headers_trusting_everyone_cannot_make_a_forged_request_look_proxied(
    saw_device: Device,
) -> None:
    app = FastAPI()

    @app.get("/probe")
    async def probe(request: Request) -> dict[str, str | None]:
        return {"peer": request.client.host if request.client else None,
                "saw": saw_fingerprint(request, PROXY)}

    # What uvicorn does with FORWARDED_ALLOW_IPS=*: the peer becomes the first X-Forwarded-For address.
    spoofable = ProxyHeadersMiddleware(app, trusted_hosts="*")  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=spoofable, client=("198.51.100.7", 5555))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/probe", headers={**saw_device("SAW-1").headers, "x-forwarded-for": "10.0.0.5"})

    assert response.json() == {"peer": "10.0.0.5", "saw": None}


def test_the_certificate_header_must_hold_exactly_one_pem_certificate(saw_device: Device) -> None:
    device, other = saw_device("SAW-1"), saw_device("SAW-2")

    assert fingerprint_of_cert_header(quote(device.pem)) == device.sha256
    assert fingerprint_of_cert_header(quote(device.pem + other.pem)) is None
    assert fingerprint_of_cert_header(quote("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")) is None
    assert fingerprint_of_cert_header("") is None
    assert fingerprint_of_cert_header("x" * 20000) is None


def test_fingerprint_mode_reads_only_the_fingerprint_header(saw_device: Device) -> None:
    device = saw_device("SAW-1")
    settings = SawSettings.model_validate({"trusted_proxies": ["10.0.0.5/32"], "fingerprint_source": "fingerprint"})
    colons = ":".join(device.sha256[i:i + 2] for i in range(0, 64, 2)).upper()

    assert saw_fingerprint(request_from("10.0.0.5", {"x-ssl-client-fingerprint": colons,
                                                     "x-ssl-client-verify": "SUCCESS"}), settings) == device.sha256
    assert saw_fingerprint(request_from("10.0.0.5", device.headers), settings) is None  # the cert header is not read
    assert saw_fingerprint(request_from("10.0.0.5", device.headers), PROXY) == device.sha256
    assert normalize_fingerprint("zz" * 32) is None
    assert normalize_fingerprint(device.sha256[:-2]) is None


async def test_the_guard_strips_saw_headers_from_untrusted_peers(saw_device: Device) -> None:
    seen: list[dict[str, str]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guarded = SawHeaderGuard(inner, PROXY)
    headers = {**saw_device("SAW-1").headers, "x-ssl-client-fingerprint": "ab" * 32, "x-other": "kept"}
    for peer in ("198.51.100.7", "10.0.0.5"):
        transport = httpx.ASGITransport(app=guarded, client=(peer, 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.get("/", headers=headers)

    stripped, kept = seen
    assert not {"x-ssl-client-cert", "x-ssl-client-verify", "x-ssl-client-fingerprint"} & set(stripped)
    assert stripped["x-other"] == "kept"
    assert {"x-ssl-client-cert", "x-ssl-client-verify", "x-ssl-client-fingerprint"} <= set(kept)
