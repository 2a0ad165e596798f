"""Token verification: what a valid token yields, and every way a forged or stale one is refused."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from app.errors import AppError
from app.identity.dev_issuer import DevIssuer
from app.identity.errors import (
    AudienceMismatch,
    InvalidToken,
    IssuerMismatch,
    MissingClaim,
    TokenExpired,
    TokenNotYetValid,
    UnknownKey,
    UnsupportedAlgorithm,
)
from app.identity.principal import Principal, Role, TokenVerifier
from tests.fixtures.identity import TEST_AUDIENCE, MintToken, OidcServer, b64url, new_key, unsigned_token


async def refused(verifier: TokenVerifier, token: str, error: type[AppError]) -> AppError:
    """Assert `token` is refused with exactly `error`, as a 401 that does not echo the token."""
    with pytest.raises(AppError) as info:
        await verifier.verify(token)
    exc = info.value
    assert type(exc) is error, f"{type(exc).__name__}: {exc.detail}"
    assert exc.status == 401
    problem = str(exc.to_problem())
    for part in (p for p in {token, *token.split(".")} if len(p) >= 8):
        assert part not in problem
        assert part not in str(exc)
    return exc


# --- accepted ------------------------------------------------------------------------------------------------


async def test_dev_issuer_token_gives_principal_with_roles_tenant_and_name(
    mint_token: MintToken, token_verifier: TokenVerifier
) -> None:
    token = mint_token("alice", [Role.CUSTOMER_ADMIN, Role.ENGINEER], tenant="tenant-42", name="Alice A.")

    principal = await token_verifier.verify(token)

    assert principal == Principal(subject="alice", roles=frozenset({Role.CUSTOMER_ADMIN, Role.ENGINEER}),
                                  tenant="tenant-42", name="Alice A.")
    assert principal.has(Role.ENGINEER)
    assert not principal.has(Role.ADMIN)
    assert principal.claims["sub"] == "alice"


async def test_unknown_role_names_are_ignored(mint_token: MintToken, token_verifier: TokenVerifier) -> None:
    principal = await token_verifier.verify(mint_token("bob", ["manager", "Global.Admin", "ADMIN", "root"]))

    assert principal.roles == frozenset({Role.MANAGER})
    assert principal.tenant is None


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
async def test_production_issuer_accepts_both_allowed_algorithms(oidc_server: OidcServer, algorithm: str) -> None:
    key = oidc_server.add_key(algorithm)
    verifier = oidc_server.verifier()

    principal = await verifier.verify(oidc_server.token("carol", ["auditor"], key=key, tid="staff"))

    assert principal.subject == "carol"
    assert principal.roles == frozenset({Role.AUDITOR})
    assert principal.tenant == "staff"


async def test_expiry_within_leeway_is_accepted(oidc_server: OidcServer) -> None:
    verifier = oidc_server.verifier(leeway_s=30)
    token = oidc_server.token()
    oidc_server.clock.advance(timedelta(hours=1, seconds=29))

    assert (await verifier.verify(token)).subject == "alice"


# --- algorithm attacks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
async def test_alg_none_is_refused_before_any_key_lookup(oidc_server: OidcServer, alg: str) -> None:
    verifier = oidc_server.verifier()
    token = unsigned_token({"alg": alg, "typ": "JWT", "kid": oidc_server.keys[0].kid}, oidc_server.claims())

    await refused(verifier, token, UnsupportedAlgorithm)
    await refused(verifier, token.rstrip("."), InvalidToken)  # two-part form is not even a JWS
    assert oidc_server.hits["jwks"] == 0


async def test_hs256_signed_with_the_public_key_as_secret_is_refused(oidc_server: OidcServer) -> None:
    """The classic confusion attack: HMAC keyed with the issuer's public key, which anyone can fetch."""
    rsa_key = oidc_server.add_key("RS256")
    verifier = oidc_server.verifier()
    await verifier.verify(oidc_server.token(key=rsa_key))  # keys are cached and the public key is known
    public_pem = rsa_key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for alg, digest in (("HS256", hashlib.sha256), ("HS384", hashlib.sha384), ("HS512", hashlib.sha512)):
        for secret in (public_pem, public_pem.strip(), str(rsa_key.public_jwk()).encode()):
            head = b64url(f'{{"alg":"{alg}","typ":"JWT","kid":"{rsa_key.kid}"}}'.encode())
            body = unsigned_token({}, oidc_server.claims("mallory", ["admin"])).split(".")[1]
            signature = hmac.new(secret, f"{head}.{body}".encode(), digest).digest()

            await refused(verifier, f"{head}.{body}.{b64url(signature)}", UnsupportedAlgorithm)
    assert oidc_server.hits["jwks"] == 1


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256", "ES384", "ES512", "EdDSA", "ES256K", "rs256", "es256"])
async def test_algorithms_off_the_allowlist_are_refused(oidc_server: OidcServer, alg: str) -> None:
    token = unsigned_token({"alg": alg, "kid": oidc_server.keys[0].kid}, oidc_server.claims(), b"x" * 64)

    await refused(oidc_server.verifier(), token, UnsupportedAlgorithm)
    assert oidc_server.hits["jwks"] == 0


async def test_rs256_header_on_an_ec_key_is_refused(oidc_server: OidcServer) -> None:
    ec_key = oidc_server.keys[0]
    impostor = new_key("RS256", kid=ec_key.kid)

    await refused(oidc_server.verifier(), oidc_server.token(key=impostor), InvalidToken)


async def test_token_signed_by_another_key_under_a_published_kid_is_refused(oidc_server: OidcServer) -> None:
    impostor = new_key("ES256", kid=oidc_server.keys[0].kid)

    await refused(oidc_server.verifier(), oidc_server.token("mallory", ["admin"], key=impostor), InvalidToken)


async def test_payload_changed_after_signing_is_refused(oidc_server: OidcServer) -> None:
    head, _, signature = oidc_server.token("bob", ["engineer"]).split(".")
    forged_body = unsigned_token({}, oidc_server.claims("bob", ["engineer", "admin"])).split(".")[1]

    await refused(oidc_server.verifier(), f"{head}.{forged_body}.{signature}", InvalidToken)


async def test_embedded_jwk_header_is_not_trusted(oidc_server: OidcServer) -> None:
    attacker = new_key("ES256", kid="attacker")
    token = oidc_server.token("mallory", ["admin"], key=attacker, headers={"jwk": attacker.public_jwk()})

    await refused(oidc_server.verifier(), token, UnknownKey)


@pytest.mark.parametrize(
    "header",
    [{"crit": ["exp"]}, {"typ": "id+jwt"}, {"typ": "logout+jwt"}, {"kid": ""}, {"kid": None}],
    ids=["crit", "typ-id", "typ-logout", "empty-kid", "no-kid"],
)
async def test_unusual_headers_are_refused(oidc_server: OidcServer, header: dict[str, object]) -> None:
    token = oidc_server.token(headers=header)

    await refused(oidc_server.verifier(), token, InvalidToken)


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "....", "eyJhbGciOiJFUzI1NiJ9.e30.", "x" * 20_000])
async def test_malformed_tokens_are_refused(oidc_server: OidcServer, token: str) -> None:
    await refused(oidc_server.verifier(), token, InvalidToken)
    assert oidc_server.hits["jwks"] == 0


# --- claims --------------------------------------------------------------------------------------------------


async def test_wrong_issuer_is_refused(oidc_server: OidcServer) -> None:
    await refused(oidc_server.verifier(), oidc_server.token(iss="https://login.microsoftonline.com/evil/v2.0"),
                  IssuerMismatch)


async def test_issuer_is_compared_exactly(oidc_server: OidcServer) -> None:
    await refused(oidc_server.verifier(), oidc_server.token(iss=oidc_server.issuer + "/"), IssuerMismatch)


@pytest.mark.parametrize("aud", ["api://other", ["api://other", "x"], "API://VOICELOG-TEST"])
async def test_wrong_audience_is_refused(oidc_server: OidcServer, aud: object) -> None:
    await refused(oidc_server.verifier(), oidc_server.token(aud=aud), AudienceMismatch)


async def test_audience_list_naming_us_is_accepted(oidc_server: OidcServer) -> None:
    principal = await oidc_server.verifier().verify(oidc_server.token(aud=["api://other", TEST_AUDIENCE]))

    assert principal.subject == "alice"


async def test_expired_token_is_refused(oidc_server: OidcServer) -> None:
    verifier = oidc_server.verifier(leeway_s=30)
    token = oidc_server.token()
    oidc_server.clock.advance(timedelta(hours=1, seconds=31))

    await refused(verifier, token, TokenExpired)


async def test_not_yet_valid_token_is_refused(oidc_server: OidcServer) -> None:
    now = int(oidc_server.clock.now().timestamp())
    verifier = oidc_server.verifier(leeway_s=30)

    await refused(verifier, oidc_server.token(nbf=now + 31), TokenNotYetValid)
    await refused(verifier, oidc_server.token(iat=now + 300), TokenNotYetValid)
    assert (await verifier.verify(oidc_server.token(nbf=now + 29))).subject == "alice"


@pytest.mark.parametrize("claim", ["sub", "iss", "aud", "exp"])
async def test_token_missing_a_required_claim_is_refused(oidc_server: OidcServer, claim: str) -> None:
    claims = {k: v for k, v in oidc_server.claims().items() if k != claim}

    exc = await refused(oidc_server.verifier(), oidc_server.sign(claims), MissingClaim)

    assert claim in exc.detail


@pytest.mark.parametrize("claims", [{"sub": ""}, {"sub": "   "}, {"sub": 42}, {"exp": "tomorrow"}, {"exp": True},
                                    {"roles": "admin"}, {"tid": 7}])
async def test_malformed_claims_are_refused(oidc_server: OidcServer, claims: dict[str, object]) -> None:
    with pytest.raises(InvalidToken):
        await oidc_server.verifier().verify(oidc_server.sign({**oidc_server.claims(), **claims}))


async def test_dev_token_is_refused_by_a_production_verifier(oidc_server: OidcServer, dev_issuer: DevIssuer) -> None:
    await refused(oidc_server.verifier(), dev_issuer.mint("alice", ["admin"]), UnknownKey)


async def test_dev_verifier_refuses_alg_none_and_foreign_keys(
    token_verifier: TokenVerifier, dev_issuer: DevIssuer
) -> None:
    claims = {"iss": dev_issuer.issuer, "aud": dev_issuer.audience, "sub": "mallory", "exp": 2**40,
              "roles": ["admin"]}
    await refused(token_verifier, unsigned_token({"alg": "none", "kid": dev_issuer.kid}, claims), UnsupportedAlgorithm)
    impostor = new_key("ES256", kid=dev_issuer.kid)
    import jwt

    forged = jwt.encode(claims, impostor.private_key, algorithm="ES256", headers={"kid": dev_issuer.kid})
    await refused(token_verifier, forged, InvalidToken)
    await refused(token_verifier, dev_issuer.sign({**claims, "aud": "api://voicelog-test"}), AudienceMismatch)


# --- tenants -------------------------------------------------------------------------------------------------


async def test_staff_roles_from_a_foreign_tenant_are_dropped(oidc_server: OidcServer) -> None:
    verifier = oidc_server.verifier(staff_tenant="contoso-staff")

    staff = await verifier.verify(oidc_server.token("eve", ["engineer", "admin"], tid="contoso-staff"))
    customer = await verifier.verify(oidc_server.token("cust", ["admin", "engineer", "customer_admin"],
                                                       tid="fabrikam"))
    no_tenant = await verifier.verify(oidc_server.token("who", ["admin"]))

    assert staff.roles == frozenset({Role.ENGINEER, Role.ADMIN})
    assert customer.roles == frozenset({Role.CUSTOMER_ADMIN})
    assert customer.tenant == "fabrikam"
    assert no_tenant.roles == frozenset()


async def test_multi_tenant_issuer_template_matches_the_tokens_own_tenant(oidc_server: OidcServer) -> None:
    template = oidc_server.issuer + "/{tenantid}/v2.0"
    verifier = oidc_server.verifier(issuer=template)

    ok = await verifier.verify(oidc_server.token(iss=f"{oidc_server.issuer}/fabrikam/v2.0", tid="fabrikam"))
    assert ok.tenant == "fabrikam"
    await refused(verifier, oidc_server.token(iss=f"{oidc_server.issuer}/fabrikam/v2.0", tid="contoso"),
                  IssuerMismatch)
    await refused(verifier, oidc_server.token(iss=f"{oidc_server.issuer}/fabrikam/v2.0"), IssuerMismatch)
    await refused(verifier, oidc_server.token(iss=template, tid="{tenantid}"), IssuerMismatch)
