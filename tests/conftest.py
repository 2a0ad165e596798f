"""Fixtures live in tests/fixtures/ by concern; this file registers them and orders and places the run."""

import os
import tempfile
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.relay",
    "tests.fixtures.blob",
    "tests.fixtures.keys",
    "tests.fixtures.audit",
    "tests.fixtures.identity",
    "tests.fixtures.recording",
    "tests.fixtures.saw",
    "tests.fixtures.environment",
]


def pytest_collection_modifyitems(items: list) -> None:  # type: ignore[type-arg]
    """Modules holding a `slow` test run first (module order otherwise kept, and each module's tests kept
    together, so module fixtures are set up once): with two xdist workers the long tests then overlap the
    many short ones instead of one worker finishing alone on a multi-minute test at the end of the run."""
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_files)


_UNGROUPED = pytest.StashKey[set[str]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Note the tests whose `xdist_group` mark xdist's loadgroup ignored (pytest-dev/pytest-xdist#1386): the
    groups keep the scale-out tests off each other and run checkov and the demo once."""
    grouped = getattr(session.config.option, "loadgroup", False)  # an xdist worker of a --dist loadgroup run
    session.config.stash[_UNGROUPED] = {
        item.nodeid for item in session.items
        if grouped and item.get_closest_marker("xdist_group") is not None
        and "@" not in item.nodeid.rsplit("]", 1)[-1]
    }


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Such a test fails, with the reason, rather than run spread over the workers."""
    if item.nodeid in item.config.stash.get(_UNGROUPED, set()):
        pytest.fail("this pytest/pytest-xdist pair ignores xdist_group marks (pytest-dev/pytest-xdist#1386): "
                    "pin pytest as pyproject.toml does", pytrace=False)


LOADED_MACHINE_REQUEST_TIMEOUT_S = "10"
"""`database_request_timeout_s` for every app and server a test builds, unless the test sets its own: on the loaded
2-core CI machine an API request's first PostgreSQL connection has missed the product's 2 s bound when another
worker's outage test ended its outage and its relay reconnected and flushed at once (503 `database_unavailable`
in an unrelated fixture, PostgreSQL logging no error). The 2 s bound itself is tested where it is set
(tests/test_database_outage.py)."""


def pytest_configure() -> None:
    """The request timeout above, through the environment, so settings built in the test processes and the
    servers they start read it; an explicit one is kept.

    Temporary files (SQLite databases, local blob stores, the servers' data dirs) on tmpfs where the machine
    has one: every commit and append fsyncs, ~4 ms each on this disk and ~0 on tmpfs. Set before pytest picks
    its base temp dir, and through TMPDIR for the servers the tests start. An explicit TMPDIR is kept."""
    shm = Path("/dev/shm")  # noqa: S108 - pytest makes its own 0700 pytest-of-<user> dir inside
    if "TMPDIR" not in os.environ and shm.is_dir() and os.access(shm, os.W_OK):
        os.environ["TMPDIR"] = str(shm)
        tempfile.tempdir = None  # recomputed from TMPDIR on next use
    os.environ.setdefault("VOICELOG_DATABASE_REQUEST_TIMEOUT_S", LOADED_MACHINE_REQUEST_TIMEOUT_S)
