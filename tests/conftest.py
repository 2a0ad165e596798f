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


def pytest_collection_modifyitems(items: list) -> None:  # type: ignore[type-arg]
    """Modules holding a `slow` test run first (module order otherwise kept, and each module's tests kept
    together, so module fixtures are set up once): with two xdist workers the long tests then overlap the
    many short ones instead of one worker finishing alone on a multi-minute test at the end of the run."""
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_files)
