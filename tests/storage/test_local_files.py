"""The local store's files: private modes, fsynced appends, torn writes cut back on open, damage refused."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.storage import local_file as local_file_module
from app.storage.errors import Corrupt, StoreUnavailable
from app.storage.layout import RecordingKey
from app.storage.local import LocalDirStore
from app.storage.local_file import FILE_HEADER, FRAME_HEADER
from tests.storage.samples import REGION, new_key, small_settings, unit

FRAME = FRAME_HEADER.size + 300  # a framed 300-byte unit


def _store(root: Path) -> LocalDirStore:
    return LocalDirStore(region=REGION, root=root, settings=small_settings(part_max_units=100))


async def _recording(root: Path, count: int) -> tuple[RecordingKey, list[bytes], Path]:
    store = _store(root)
    key = new_key()
    await store.create(key)
    units = [unit(i) for i in range(count)]
    offset = 0
    for data in units:
        offset = await store.append(key, data, offset=offset)
    await store.close()
    return key, units, root.joinpath(*key.name.split("/"))


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)  # modes must not depend on the process umask
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("open_umask")
async def test_files_are_0600_and_directories_0700(tmp_path: Path) -> None:
    root = tmp_path / "blobs" / REGION
    store = LocalDirStore(region=REGION, root=root, settings=small_settings(part_max_units=1))
    key = new_key()
    await store.create(key)
    await store.append(key, unit(0), offset=0)
    await store.append(key, unit(1), offset=300)  # a second part file
    await store.close()
    dirs = [root, *[p for p in root.rglob("*") if p.is_dir()]]
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(dirs) == 5
    assert len(files) == 2
    assert {oct(p.stat().st_mode & 0o777) for p in dirs} == {"0o700"}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o600"}


async def test_every_append_is_fsynced_before_it_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    key = new_key()
    await store.create(key)
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(local_file_module.os, "fsync", counting_fsync)
    await store.append(key, unit(0), offset=0)
    assert len(synced) == 1
    await store.close()


async def test_a_unit_torn_mid_write_is_cut_back_to_the_last_whole_unit(tmp_path: Path) -> None:
    key, units, path = await _recording(tmp_path, 5)
    whole = FILE_HEADER.size + 5 * FRAME
    assert path.stat().st_size == whole
    os.truncate(path, whole - 120)  # the crash hit the middle of the fifth unit
    store = _store(tmp_path)
    assert await store.length(key) == 4 * 300
    assert await store.read(key) == b"".join(units[:4])
    assert path.stat().st_size == whole - 120  # a read never writes: the torn bytes stay until a writer comes
    assert await store.append(key, units[4], offset=1200) == 1500  # the writer re-sends what was lost
    assert await store.read(key) == b"".join(units)
    await store.close()


async def test_a_torn_frame_header_is_cut(tmp_path: Path) -> None:
    key, units, path = await _recording(tmp_path, 3)
    with path.open("ab") as handle:
        handle.write(b"\x00\x00\x01")  # three bytes of the next frame's header
    store = _store(tmp_path)
    assert await store.read(key) == b"".join(units)
    assert path.stat().st_size == FILE_HEADER.size + 3 * FRAME + 3  # read-only
    assert await store.append(key, unit(3), offset=900) == 1200  # the writer cuts it first
    assert path.stat().st_size == FILE_HEADER.size + 4 * FRAME
    await store.close()


async def test_a_last_unit_of_full_length_but_wrong_bytes_is_cut(tmp_path: Path) -> None:
    key, units, path = await _recording(tmp_path, 3)
    with path.open("r+b") as handle:  # the length made it to disk, the payload did not (zeros)
        handle.seek(FILE_HEADER.size + 2 * FRAME + FRAME_HEADER.size + 100)
        handle.write(bytes(200))
    store = _store(tmp_path)
    assert await store.length(key) == 600
    assert await store.read(key) == b"".join(units[:2])
    await store.close()


async def test_damage_before_the_last_unit_is_refused_not_cut(tmp_path: Path) -> None:
    key, _units, path = await _recording(tmp_path, 4)
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.seek(FILE_HEADER.size + FRAME)  # the second frame's length field
        handle.write(b"\x00\x00\x00\x00")
    store = _store(tmp_path)
    with pytest.raises(Corrupt):
        await store.length(key)
    assert path.stat().st_size == size  # nothing was cut
    await store.close()


async def test_a_flipped_bit_inside_the_recording_fails_its_read(tmp_path: Path) -> None:
    key, units, path = await _recording(tmp_path, 4)
    with path.open("r+b") as handle:
        handle.seek(FILE_HEADER.size + FRAME_HEADER.size + 10)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))
    store = _store(tmp_path)
    assert await store.length(key) == 1200  # only the last unit is checked on open
    assert await store.read(key, offset=300, length=900) == b"".join(units[1:])
    with pytest.raises(Corrupt):
        await store.read(key, offset=0, length=20)
    await store.close()


async def test_a_torn_create_leaves_an_empty_recording(tmp_path: Path) -> None:
    key = new_key()
    path = tmp_path.joinpath(*key.name.split("/"))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"VLBL")  # the header never made it whole
    store = _store(tmp_path)
    assert await store.length(key) == 0
    assert await store.read(key) == b""
    assert path.read_bytes() == b"VLBL"  # reads leave it as it is
    assert await store.append(key, unit(0), offset=0) == 300
    await store.close()


@pytest.mark.parametrize("stored", [b"", b"VLBLOB"])
async def test_reading_an_empty_or_torn_header_part_never_writes(tmp_path: Path, stored: bytes) -> None:
    key = new_key()
    path = tmp_path.joinpath(*key.name.split("/"))
    path.parent.mkdir(parents=True)
    path.write_bytes(stored)
    os.utime(path, (1_700_000_000, 1_700_000_000))
    store = _store(tmp_path)
    assert await store.length(key) == 0
    assert [chunk async for chunk in store.stream(key)] == []
    assert await store.read(key) == b""
    assert path.read_bytes() == stored
    assert path.stat().st_mtime == 1_700_000_000
    await store.close()


async def test_a_failed_write_is_unavailable_and_leaves_no_partial_unit(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    key = new_key()
    await store.create(key)
    await store.append(key, unit(0), offset=0)
    real_pwrite = os.pwrite

    def disk_full_after_100_bytes(fd: int, buffers: list[bytes], offset: int) -> int:
        real_pwrite(fd, b"".join(buffers)[:100], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(local_file_module.os, "pwritev", disk_full_after_100_bytes)
        with pytest.raises(StoreUnavailable, match="ENOSPC"):
            await store.append(key, unit(1), offset=300)
    path = tmp_path.joinpath(*key.name.split("/"))
    assert path.stat().st_size == FILE_HEADER.size + FRAME
    second = unit(1)
    assert await store.append(key, second, offset=300) == 600
    await store.close()


async def test_a_short_write_is_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    key = new_key()
    await store.create(key)
    real_pwrite = os.pwrite

    def short_write(fd: int, buffers: list[bytes], offset: int) -> int:
        return real_pwrite(fd, b"".join(buffers)[:50], offset)  # the kernel may write less than asked

    data = unit(0)
    with monkeypatch.context() as patch:
        patch.setattr(local_file_module.os, "pwritev", short_write)
        assert await store.append(key, data, offset=0) == 300
    await store.close()
    reopened = _store(tmp_path)
    assert await reopened.read(key) == data
    await reopened.close()
