"""Who is calling: OIDC bearer tokens verified against the configured issuer (or the dev issuer)."""
