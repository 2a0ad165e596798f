"""Auditors' reports computed from the audit entries alone: access review and retention audit (C6, C7).

Each is computed at one chain head (entries with seq <= head only), so it can be recomputed later and
compared, and each is signed with the audit signing key (`signing.py`).
"""
