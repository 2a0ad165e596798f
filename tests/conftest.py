"""Fixtures live in tests/fixtures/ by concern; this file only registers them."""

pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.relay",
]
