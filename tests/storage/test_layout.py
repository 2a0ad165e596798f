"""Object names: start hour in UTC and the request ID, nothing else (C2); parts; the rollover rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from app.storage.layout import RecordingKey, check_list_prefix, next_part_needed, parse_part_name
from app.storage.settings import StorageSettings


def test_name_is_the_utc_start_hour_then_the_request_id() -> None:
    started = datetime(2025, 1, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))  # 2024-12-31 23:30 UTC
    key = RecordingKey(request_id="rq_0123456789abcdef", started_at=started)
    assert key.name == "2024/12/31/23/rq_0123456789abcdef"
    assert key.part_name(0) == key.name
    assert key.part_name(1) == "2024/12/31/23/rq_0123456789abcdef.1"
    assert key.hour == datetime(2024, 12, 31, 23, tzinfo=UTC)


@pytest.mark.parametrize("request_id", ["short", "has.dot-in-it", "../../etc/passwd", "a" * 129, "spa ce-1234",
                                        "-leading-dash"])
def test_request_ids_that_could_escape_or_confuse_a_name_are_refused(request_id: str) -> None:
    with pytest.raises(ValueError, match="request_id"):
        RecordingKey(request_id=request_id, started_at=datetime.now(UTC))


def test_naive_start_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        RecordingKey(request_id="rq_0123456789", started_at=datetime(2025, 1, 1))


def test_stored_names_parse_back_to_recording_and_part() -> None:
    parsed = parse_part_name("2025/02/03/04/rq_0123456789.12")
    assert parsed is not None
    assert (parsed.request_id, parsed.index, parsed.hour) == ("rq_0123456789", 12,
                                                               datetime(2025, 2, 3, 4, tzinfo=UTC))
    assert parsed.key.name == "2025/02/03/04/rq_0123456789"
    for foreign in ["2025/02/03/04/rq_0123456789.0", "2025/13/03/04/rq_0123456789", "x/rq_0123456789",
                    "2025/02/03/04/rq_0123456789.tmp", "2025/02/03/04/sub/rq_0123456789"]:
        assert parse_part_name(foreign) is None


@pytest.mark.parametrize("prefix", ["", "2025/", "2025/01/", "2025/01/02/", "2025/01/02/03/"])
def test_listing_prefixes_are_whole_time_paths(prefix: str) -> None:
    assert check_list_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["2025", "2025/01", "2025/01/02/03/rq", "../", "2025/1/"])
def test_other_listing_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        check_list_prefix(prefix)


def test_rollover_rule_by_count_and_by_size() -> None:
    settings = StorageSettings(part_max_units=3, part_max_bytes=1000, max_unit_bytes=500)
    assert not next_part_needed(part_units=0, part_bytes=0, unit_bytes=500, settings=settings)
    assert not next_part_needed(part_units=2, part_bytes=400, unit_bytes=100, settings=settings)
    assert next_part_needed(part_units=3, part_bytes=300, unit_bytes=1, settings=settings)
    assert next_part_needed(part_units=1, part_bytes=600, unit_bytes=401, settings=settings)
    assert not next_part_needed(part_units=1, part_bytes=600, unit_bytes=400, settings=settings)


def test_default_limits_stay_below_the_append_blob_block_cap() -> None:
    settings = StorageSettings()
    assert settings.part_max_units < 50_000
    with pytest.raises(ValidationError):
        StorageSettings(part_max_units=50_001)
    with pytest.raises(ValidationError, match="part_max_bytes"):
        StorageSettings(part_max_bytes=1000, max_unit_bytes=2000)
