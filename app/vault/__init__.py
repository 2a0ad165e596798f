"""Envelope encryption: sealed segment streams, per-recording data keys, hour-bucketed KEKs, shredding.

Knows nothing of tickets, people, HTTP or the database. docs/FORMAT.md documents every byte.
"""
