"""Fixtures live in tests/fixtures/ by concern; this file only registers them."""

pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.relay",
    "tests.fixtures.blob",
    "tests.fixtures.keys",
    "tests.fixtures.audit",
    "tests.fixtures.identity",
    "tests.fixtures.recording",
    "tests.fixtures.saw",
]
