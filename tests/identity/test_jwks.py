"""The signing-key cache against a real JWKS endpoint: TTL, rotation, rate limit, discovery, outages."""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from app.identity.errors import KeysUnavailable, UnknownKey
from app.identity.jwks import HttpJwksSource, JwksCache, JwksUnavailable, parse_jwks
from tests.fixtures.identity import OidcServer, new_key


async def test_keys_are_fetched_once_and_cached(oidc_server: OidcServer) -> None:
    verifier = oidc_server.verifier()

    for _ in range(5):
        await verifier.verify(oidc_server.token())

    assert oidc_server.hits == {"jwks": 1}


async def test_unknown_kid_triggers_exactly_one_refresh_then_succeeds_after_rotation(
    oidc_server: OidcServer,
) -> None:
    verifier = oidc_server.verifier(min_refresh_s=60)
    await verifier.verify(oidc_server.token())
    oidc_server.clock.advance(timedelta(seconds=61))
    new = oidc_server.rotate("RS256")

    principal = await verifier.verify(oidc_server.token("dave", ["manager"], key=new))

    assert principal.subject == "dave"
    assert oidc_server.hits["jwks"] == 2
    await verifier.verify(oidc_server.token(key=new))
    assert oidc_server.hits["jwks"] == 2


async def test_a_flood_of_random_kids_costs_the_issuer_one_fetch_per_interval(oidc_server: OidcServer) -> None:
    verifier = oidc_server.verifier(min_refresh_s=60)
    await verifier.verify(oidc_server.token())
    oidc_server.clock.advance(timedelta(seconds=61))
    attacker = new_key("ES256")

    async def attempt() -> None:
        with pytest.raises(UnknownKey):
            await verifier.verify(oidc_server.token(headers={"kid": secrets.token_hex(8)}, key=attacker))

    await asyncio.gather(*(attempt() for _ in range(50)))
    assert oidc_server.hits["jwks"] == 2  # the 50 concurrent unknown kids shared one refresh
    for _ in range(50):
        await attempt()
    assert oidc_server.hits["jwks"] == 2  # and within the interval no more

    oidc_server.clock.advance(timedelta(seconds=61))
    await attempt()
    assert oidc_server.hits["jwks"] == 3
    assert (await verifier.verify(oidc_server.token())).subject == "alice"


async def test_rotation_within_the_refresh_interval_waits_for_the_interval(oidc_server: OidcServer) -> None:
    verifier = oidc_server.verifier(min_refresh_s=60)
    await verifier.verify(oidc_server.token())
    new = oidc_server.rotate()

    with pytest.raises(UnknownKey):
        await verifier.verify(oidc_server.token(key=new))
    oidc_server.clock.advance(timedelta(seconds=60))

    assert (await verifier.verify(oidc_server.token(key=new))).subject == "alice"
    assert oidc_server.hits["jwks"] == 2


async def test_keys_are_refreshed_after_the_ttl(oidc_server: OidcServer) -> None:
    verifier = oidc_server.verifier(ttl_s=600)
    await verifier.verify(oidc_server.token())
    oidc_server.clock.advance(timedelta(seconds=599))
    await verifier.verify(oidc_server.token())
    assert oidc_server.hits["jwks"] == 1

    oidc_server.clock.advance(timedelta(seconds=1))
    await verifier.verify(oidc_server.token())
    assert oidc_server.hits["jwks"] == 2


async def test_a_key_removed_from_the_jwks_stops_verifying_after_refresh(oidc_server: OidcServer) -> None:
    verifier = oidc_server.verifier(ttl_s=600)
    old = oidc_server.keys[0]
    await verifier.verify(oidc_server.token(key=old))
    oidc_server.rotate()
    oidc_server.clock.advance(timedelta(seconds=600))

    with pytest.raises(UnknownKey):
        await verifier.verify(oidc_server.token(key=old))


async def test_discovery_finds_the_jwks(oidc_server: OidcServer) -> None:
    verifier = oidc_server.verifier(discovery=True, ttl_s=600)

    await verifier.verify(oidc_server.token())
    oidc_server.clock.advance(timedelta(seconds=600))
    await verifier.verify(oidc_server.token())

    assert oidc_server.hits == {"discovery": 1, "jwks": 2}


@pytest.mark.parametrize(
    "override",
    [{"issuer": "https://login.microsoftonline.com/evil/v2.0"}, {"jwks_uri": "http://203.0.113.9/keys"},
     {"jwks_uri": None}, {"jwks_uri": 7}],
    ids=["other-issuer", "plain-http-remote-jwks", "no-jwks-uri", "jwks-uri-not-a-string"],
)
async def test_untrustworthy_discovery_documents_are_refused(
    oidc_server: OidcServer, override: dict[str, object]
) -> None:
    oidc_server.discovery_overrides = override

    with pytest.raises(KeysUnavailable) as info:
        await oidc_server.verifier(discovery=True).verify(oidc_server.token())

    assert info.value.status == 401
    assert oidc_server.hits["jwks"] == 0


@pytest.mark.parametrize("status", [404, 500, 302])
async def test_jwks_endpoint_errors_leave_no_usable_keys(oidc_server: OidcServer, status: int) -> None:
    oidc_server.jwks_status = status

    with pytest.raises(KeysUnavailable):
        await oidc_server.verifier().verify(oidc_server.token())


async def test_a_slow_jwks_endpoint_times_out(oidc_server: OidcServer) -> None:
    oidc_server.jwks_delay_s = 3.0
    verifier = oidc_server.verifier(timeout_s=0.2)

    async with asyncio.timeout(2):
        with pytest.raises(KeysUnavailable):
            await verifier.verify(oidc_server.token())


async def test_a_slow_drip_jwks_endpoint_hits_the_overall_deadline(oidc_server: OidcServer) -> None:
    oidc_server.jwks_drip_s = 0.05  # each byte well inside the per-read timeout, the whole far beyond it
    verifier = oidc_server.verifier(timeout_s=0.5)

    async with asyncio.timeout(2):
        with pytest.raises(KeysUnavailable):
            await verifier.verify(oidc_server.token())


async def test_known_keys_keep_verifying_while_a_slow_refresh_is_in_flight(oidc_server: OidcServer) -> None:
    verifier = oidc_server.verifier(ttl_s=600, timeout_s=5)
    await verifier.verify(oidc_server.token())
    oidc_server.jwks_delay_s = 1.0
    oidc_server.clock.advance(timedelta(seconds=600))

    refreshing = asyncio.create_task(verifier.verify(oidc_server.token("first")))
    while oidc_server.hits["jwks"] < 2:
        await asyncio.sleep(0.01)
    async with asyncio.timeout(0.5):
        assert (await verifier.verify(oidc_server.token("second"))).subject == "second"

    assert not refreshing.done()
    assert (await refreshing).subject == "first"
    assert oidc_server.hits["jwks"] == 2


async def test_a_refused_refresh_keeps_serving_the_last_good_keys_for_max_stale(oidc_server: OidcServer) -> None:
    verifier = oidc_server.verifier(ttl_s=600, max_stale_s=300)
    await verifier.verify(oidc_server.token())
    oidc_server.jwks_status = 503

    oidc_server.clock.advance(timedelta(seconds=600))
    assert (await verifier.verify(oidc_server.token())).subject == "alice"
    assert oidc_server.hits["jwks"] == 2

    oidc_server.clock.advance(timedelta(seconds=300))
    with pytest.raises(KeysUnavailable):
        await verifier.verify(oidc_server.token())

    oidc_server.jwks_status = 200
    oidc_server.clock.advance(timedelta(seconds=60))
    assert (await verifier.verify(oidc_server.token())).subject == "alice"


async def test_failed_fetches_are_rate_limited_too(oidc_server: OidcServer) -> None:
    oidc_server.jwks_status = 500
    verifier = oidc_server.verifier(min_refresh_s=60)

    for _ in range(20):
        with pytest.raises(KeysUnavailable):
            await verifier.verify(oidc_server.token())

    assert oidc_server.hits["jwks"] == 1


async def test_oversized_or_malformed_jwks_is_refused(oidc_server: OidcServer) -> None:
    verifier = oidc_server.verifier()
    oidc_server.jwks_body = b'{"keys": [' + b'{"kty": "oct", "k": "' + b"A" * (1024 * 1024) + b'"}]}'
    with pytest.raises(KeysUnavailable):
        await verifier.verify(oidc_server.token())

    for body in (b"<html>", b"[]", b'{"keys": {}}', b'{"keys": []}'):
        oidc_server.jwks_body = body
        oidc_server.clock.advance(timedelta(seconds=61))
        with pytest.raises(KeysUnavailable):
            await verifier.verify(oidc_server.token())


def test_parse_jwks_keeps_only_strong_signing_keys() -> None:
    good_ec, good_rsa = new_key("ES256", kid="ec"), new_key("RS256", kid="rsa")
    weak = new_key("RS256", kid="weak", rsa_bits=1024)
    jwks = {"keys": [
        good_ec.public_jwk(),
        good_rsa.public_jwk(),
        weak.public_jwk(),
        {**new_key("ES256").public_jwk(), "kid": "enc", "use": "enc"},
        {**new_key("ES256").public_jwk(), "kid": "mislabelled", "alg": "RS256"},
        {**new_key("ES256").public_jwk(), "kid": None},
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        "not-a-key",
    ]}

    keys = parse_jwks(jwks)

    assert sorted(keys) == ["ec", "rsa"]
    assert keys["ec"].algorithm == "ES256"
    assert keys["rsa"].algorithm == "RS256"


def test_private_members_in_a_jwks_are_never_loaded_as_private_keys() -> None:
    from jwt.algorithms import ECAlgorithm

    private = new_key("ES256", kid="leaky").private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    private_jwk = {**json.loads(ECAlgorithm.to_jwk(private)), "kid": "leaky"}

    loaded = parse_jwks({"keys": [private_jwk]})["leaky"].key

    assert not hasattr(loaded, "sign")


@pytest.mark.parametrize("url", ["http://login.example.com/keys", "ftp://127.0.0.1/keys", "https:///keys"])
def test_remote_plain_http_jwks_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        HttpJwksSource(issuer="https://issuer.example", jwks_url=url)


async def test_cache_refuses_to_work_without_a_source_answer() -> None:
    from app.clock import SystemClock

    class Down:
        async def fetch(self) -> object:
            raise JwksUnavailable("down")

    with pytest.raises(KeysUnavailable):
        await JwksCache(Down(), clock=SystemClock()).key_for("kid", "ES256")
