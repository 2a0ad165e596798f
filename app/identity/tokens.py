"""OIDC bearer-token verification (Entra ID in production, the dev issuer on a laptop): one code path.

Order matters: the algorithm is checked against the allowlist before any key is looked up, the signature
before any claim is trusted, and time comes from the Clock so tests can move it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx
import jwt
from fastapi import FastAPI

from app.audit.actions import ID_PATTERN
from app.clock import Clock, SystemClock
from app.errors import Unauthorized
from app.identity.dev_issuer import DevIssuer
from app.identity.errors import (
    AudienceMismatch,
    InvalidToken,
    IssuerMismatch,
    MissingClaim,
    TokenExpired,
    TokenNotYetValid,
    UnsupportedAlgorithm,
)
from app.identity.jwks import ALLOWED_ALGORITHMS, HttpJwksSource, JwksCache, PublicKey
from app.identity.principal import Principal, Role, TokenVerifier
from app.identity.routes import build_dev_router
from app.identity.settings import TENANT_PLACEHOLDER, IdentitySettings
from app.input_text import IDENTIFIER_RULE
from app.logs import get_logger

log = get_logger("voicelog.identity")

REQUIRED_CLAIMS = ("sub", "iss", "aud", "exp")
MAX_TOKEN_CHARS = 16 * 1024
CUSTOMER_ROLES = frozenset({Role.CUSTOMER_ADMIN})
ACCEPTED_TYPES = frozenset({"jwt", "at+jwt", "application/at+jwt"})
_KNOWN_ROLES = {r.value: r for r in Role}
_TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # Entra: a GUID; never braces or slashes


class InvalidSubject(InvalidToken):
    code = "invalid_subject"
    title = "The bearer token's subject cannot identify anyone here"


class OidcTokenVerifier:
    """Verifies RS256/ES256 JWT access tokens against one issuer's published keys (implements TokenVerifier)."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        keys: JwksCache,
        clock: Clock,
        leeway_s: float = 30.0,
        staff_tenant: str | None = None,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.keys = keys
        self._clock = clock
        self._leeway = leeway_s
        self._staff_tenant = staff_tenant

    async def verify(self, token: str) -> Principal:
        try:
            return await self._verify(token)
        except Unauthorized as exc:
            log.info("identity.token.refused", code=exc.code)
            raise

    async def _verify(self, token: str) -> Principal:
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("The bearer token is empty or too large.")
        algorithm, kid = _checked_header(token)
        key = await self.keys.key_for(kid, algorithm)
        claims = _verified_claims(token, key, algorithm, self.audience)
        self._check_issuer(claims)
        self._check_times(claims)
        return self._principal(claims)

    def _check_issuer(self, claims: Mapping[str, Any]) -> None:
        expected = self.issuer
        if TENANT_PLACEHOLDER in expected:
            tid = claims.get("tid")
            if not isinstance(tid, str) or not _TENANT_ID.fullmatch(tid):
                raise IssuerMismatch("The token has no tenant to match the multi-tenant issuer with.")
            expected = expected.replace(TENANT_PLACEHOLDER, tid)
        if claims["iss"] != expected:
            raise IssuerMismatch("The token was issued by another issuer.")

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock.now().timestamp()
        exp = _numeric_date(claims, "exp")
        if exp is not None and now > exp + self._leeway:
            raise TokenExpired("The token has expired; get a new one.")
        nbf = _numeric_date(claims, "nbf")
        if nbf is not None and now < nbf - self._leeway:
            raise TokenNotYetValid("The token is not valid yet (check the clocks).")
        iat = _numeric_date(claims, "iat")
        if iat is not None and now < iat - self._leeway:
            raise TokenNotYetValid("The token claims to be issued in the future (check the clocks).")

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject.strip():
            raise MissingClaim("The token's `sub` claim is empty.")
        if not ID_PATTERN.fullmatch(subject):
            # Decided at the edge: every audit entry names its actor by this id, so a subject that cannot be
            # one is refused here, the same way on every route (a read answers this before looking at its ID).
            raise InvalidSubject(f"The token's `sub` must be {IDENTIFIER_RULE}.")
        tenant = claims.get("tid")
        if tenant is not None and not isinstance(tenant, str):
            raise InvalidToken("The token's `tid` claim is not a string.")
        roles = _roles(claims.get("roles"))
        if self._staff_tenant is not None and tenant != self._staff_tenant and roles - CUSTOMER_ROLES:
            # A customer's tenant admin could assign our staff roles to themselves in their own tenant.
            log.warning("identity.token.foreign_staff_roles_dropped", dropped=sorted(r.value for r in roles
                                                                                      - CUSTOMER_ROLES))
            roles &= CUSTOMER_ROLES
        name = claims.get("name") or claims.get("preferred_username")
        return Principal(
            subject=subject,
            roles=frozenset(roles),
            tenant=tenant,
            name=name if isinstance(name, str) else None,
            claims=dict(claims),
        )


def _checked_header(token: str) -> tuple[str, str]:
    """(alg, kid) from the unverified header, refusing any algorithm off the allowlist before key lookup."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidToken("The bearer token is not a well-formed JWT.") from None
    algorithm = header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in ALLOWED_ALGORITHMS:
        raise UnsupportedAlgorithm(f"Tokens must be signed with one of: {', '.join(sorted(ALLOWED_ALGORITHMS))}.")
    if "crit" in header:
        raise InvalidToken("The token uses critical header extensions, which are not supported.")
    token_type = header.get("typ")
    if token_type is not None and (not isinstance(token_type, str) or token_type.lower() not in ACCEPTED_TYPES):
        raise InvalidToken("The token is not an access token (header `typ`).")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > 256:
        raise InvalidToken("The token's header names no signing key (`kid`).")
    return algorithm, kid


def _verified_claims(token: str, key: PublicKey, algorithm: str, audience: str) -> dict[str, Any]:
    """The payload, once signature, required claims and audience hold. Time is checked by the caller."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=[algorithm],
            audience=audience,
            options={
                "require": list(REQUIRED_CLAIMS),
                "verify_signature": True,
                "verify_aud": True,
                "verify_iss": False,  # checked by the verifier: a multi-tenant issuer is a template
                "verify_exp": False,  # checked against the Clock, not the host's time
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise InvalidToken("The token's signature does not verify.") from None
    except jwt.MissingRequiredClaimError as exc:
        claim = exc.claim if exc.claim in REQUIRED_CLAIMS else "a required claim"
        raise MissingClaim(f"The token lacks `{claim}`.") from None
    except jwt.InvalidAudienceError:
        raise AudienceMismatch("The token was issued for another audience.") from None
    except jwt.InvalidAlgorithmError:
        raise UnsupportedAlgorithm("The token's algorithm is not accepted.") from None
    except jwt.PyJWTError:
        raise InvalidToken("The bearer token is not valid.") from None
    return claims


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"The token's `{name}` claim is not a NumericDate.")
    return float(value)


def _roles(value: Any) -> set[Role]:
    """App roles from the `roles` claim; names voicelog does not know are ignored."""
    if value is None:
        return set()
    if not isinstance(value, list):
        raise InvalidToken("The token's `roles` claim is not a list.")
    return {_KNOWN_ROLES[name] for name in value if isinstance(name, str) and name in _KNOWN_ROLES}


def build_token_verifier(
    identity: IdentitySettings,
    dev_issuer: DevIssuer | None,
    *,
    clock: Clock | None = None,
) -> TokenVerifier | None:
    """The verifier the settings describe: production issuer, the dev issuer (loaded once by the context's
    builder, `load_dev_issuer`), or None (every API answers 401)."""
    clock = clock or SystemClock()
    if identity.issuer is not None:
        assert identity.audience is not None  # noqa: S101 - the settings validator requires it
        source = HttpJwksSource(
            issuer=identity.issuer,
            jwks_url=identity.jwks_url,
            discovery_url=identity.resolved_discovery_url(),
            timeout_s=identity.jwks_timeout_s,
        )
        return _verifier(identity, source, identity.issuer, identity.audience, clock, identity.staff_tenant)
    if dev_issuer is None:
        return None
    # Same verification, same discovery and JWKS fetch as production; only the transport is in-process, so
    # the service never calls itself over the network (and works before it listens, or on port 0).
    dev_app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    dev_app.include_router(build_dev_router(dev_issuer))
    transport = httpx.ASGITransport(app=dev_app)
    source = HttpJwksSource(
        issuer=dev_issuer.issuer,
        discovery_url=f"{dev_issuer.issuer}/.well-known/openid-configuration",
        timeout_s=identity.jwks_timeout_s,
        client_factory=lambda: httpx.AsyncClient(transport=transport),
        allow_insecure_http=True,
    )
    return _verifier(identity, source, dev_issuer.issuer, dev_issuer.audience, clock, None)


def _verifier(
    identity: IdentitySettings,
    source: HttpJwksSource,
    issuer: str,
    audience: str,
    clock: Clock,
    staff_tenant: str | None,
) -> OidcTokenVerifier:
    keys = JwksCache(
        source,
        clock=clock,
        ttl_s=identity.jwks_cache_s,
        min_refresh_s=identity.jwks_min_refresh_s,
        max_stale_s=identity.jwks_max_stale_s,
    )
    return OidcTokenVerifier(
        issuer=issuer, audience=audience, keys=keys, clock=clock, leeway_s=identity.leeway_s,
        staff_tenant=staff_tenant,
    )
