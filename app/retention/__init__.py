"""Retention: every recording and its data key gone within 30 days, provably (C7); erasure on request."""
