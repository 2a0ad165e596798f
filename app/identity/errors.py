"""Why a bearer token was refused: one 401 class per reason, each with a stable code.

A detail names the reason and never the token, nor any value taken from it (both are the caller's input
and may be a credential).
"""

from __future__ import annotations

from app.errors import Unauthorized


class InvalidToken(Unauthorized):
    code = "invalid_token"
    title = "The bearer token is not valid"


class UnsupportedAlgorithm(InvalidToken):
    code = "unsupported_algorithm"
    title = "The bearer token is signed with an algorithm that is not accepted"


class MissingClaim(InvalidToken):
    code = "missing_claim"
    title = "The bearer token lacks a required claim"


class TokenExpired(InvalidToken):
    code = "token_expired"
    title = "The bearer token has expired"


class TokenNotYetValid(InvalidToken):
    code = "token_not_yet_valid"
    title = "The bearer token is not valid yet"


class IssuerMismatch(InvalidToken):
    code = "issuer_mismatch"
    title = "The bearer token was not issued by the configured issuer"


class AudienceMismatch(InvalidToken):
    code = "audience_mismatch"
    title = "The bearer token was not issued for this service"


class UnknownKey(InvalidToken):
    code = "unknown_key"
    title = "The bearer token is signed with a key the issuer does not publish"


class KeysUnavailable(Unauthorized):
    code = "issuer_keys_unavailable"
    title = "The identity issuer's signing keys cannot be fetched"
