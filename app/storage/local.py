"""LocalDirStore: the embedded default. One directory per region, one file per part, fsynced appends.

Files are 0600 and directories 0700. One process writes a region's directory (the embedded default runs
one); appends to one recording are serialized in it. The layout of each recording is kept in memory and
checked against the files on every call; all file I/O runs on the store's threads, under the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import re
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from app.clock import Clock, SystemClock
from app.logs import get_logger
from app.storage.errors import Conflict, NotFound, StoreUnavailable, deadline
from app.storage.layout import (
    RecordingKey,
    StoredObject,
    check_list_prefix,
    check_part_budget,
    check_unit,
    next_part_needed,
    parse_part_name,
)
from app.storage.local_file import (
    DIR_MODE,
    PartFile,
    StaleLayout,
    append_unit,
    create_part_file,
    fsync_dir,
    open_part_file,
    read_created_at,
    read_payload,
)
from app.storage.settings import StorageSettings

log = get_logger("voicelog.storage")

T = TypeVar("T")
_TIME_DIR = (re.compile(r"\d{4}"), re.compile(r"\d{2}"), re.compile(r"\d{2}"), re.compile(r"\d{2}"))


@dataclass(eq=False)
class _Recording:
    """A recording's parts as indexed in memory; `parts` is None until first opened."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    parts: list[PartFile] | None = None
    evicted: bool = False


class LocalDirStore:
    """A region's recordings as files under `root/{yyyy}/{mm}/{dd}/{hh}/{request_id}[.{part}]`."""

    def __init__(
        self,
        *,
        region: str,
        root: Path,
        settings: StorageSettings,
        clock: Clock | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self._region = region
        self._root = root
        self._settings = settings
        self._clock = clock or SystemClock()
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=settings.local_io_threads, thread_name_prefix=f"blob-{region}"
        )
        self._cache: OrderedDict[str, _Recording] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._dirs_lock = threading.Lock()
        self._closed = False

    @property
    def region(self) -> str:
        return self._region

    @property
    def root(self) -> Path:
        return self._root

    # --- the BlobStore calls -------------------------------------------------------------------------

    async def prepare(self) -> None:
        await self._call("prepare", self._ensure_root)

    async def create(self, key: RecordingKey) -> None:
        await self._call("create", lambda: self._create(key))

    async def append(self, key: RecordingKey, unit: bytes, *, offset: int) -> int:
        check_unit(unit, offset, self._settings)
        return await self._call("append", lambda: self._append(key, unit, offset))

    async def read(self, key: RecordingKey, *, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must be >= 0")
        return await self._call("read", lambda: self._read(key, offset, length))

    async def stream(self, key: RecordingKey) -> AsyncIterator[bytes]:
        total = await self.length(key)
        position = 0
        while position < total:
            chunk = await self.read(key, offset=position, length=min(self._settings.stream_chunk_bytes,
                                                                       total - position))
            if not chunk:
                return
            position += len(chunk)
            yield chunk

    async def length(self, key: RecordingKey) -> int:
        return await self._call("length", lambda: self._length(key))

    async def exists(self, key: RecordingKey) -> bool:
        return await self._call("exists", lambda: self._part_path(key, 0).is_file())

    async def delete(self, key: RecordingKey) -> bool:
        return await self._call("delete", lambda: self._delete(key))

    async def list_objects(self, *, prefix: str = "") -> AsyncIterator[StoredObject]:
        check_list_prefix(prefix)
        hours = await self._call("list", lambda: self._hour_dirs(prefix))
        for hour in hours:
            for found in await self._call("list", functools.partial(self._objects_in, hour)):
                yield found

    async def check(self) -> None:
        def probe() -> None:
            if not self._root.is_dir() or not os.access(self._root, os.W_OK | os.X_OK):
                raise StoreUnavailable(f"region {self._region}: blob directory missing or not writable")

        await self._call("check", probe)

    async def free_bytes(self) -> int:
        """Bytes this process may still write on the filesystem of the region's directory (readiness)."""
        def probe() -> int:
            stats = os.statvfs(self._root)
            return stats.f_bavail * stats.f_frsize

        return await self._call("check", probe)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_executor:
            await asyncio.to_thread(self._executor.shutdown, True)

    # --- plumbing ---------------------------------------------------------------------------------------

    async def _call(self, what: str, work: Callable[[], T]) -> T:
        """Run blocking file work on the I/O threads under the deadline; OS errors become typed errors."""
        if self._closed:
            raise StoreUnavailable(f"{what} in region {self._region}: store closed")
        loop = asyncio.get_running_loop()
        try:
            async with deadline(self._settings.timeout_s, f"{what} in region {self._region}"):
                return await loop.run_in_executor(self._executor, work)
        except FileNotFoundError as exc:
            raise NotFound(f"{what} in region {self._region}: object vanished") from exc
        except OSError as exc:
            reason = errno.errorcode.get(exc.errno or 0, "OSError")
            raise StoreUnavailable(f"{what} in region {self._region}: {reason}") from exc

    @contextlib.contextmanager
    def _locked(self, key: RecordingKey) -> Iterator[_Recording]:
        """The recording's in-memory state, held under its lock (one writer at a time per recording)."""
        while True:
            with self._cache_lock:
                recording = self._cache.get(key.name)
                if recording is None:
                    recording = self._cache[key.name] = _Recording()
                    self._evict_idle()
                else:
                    self._cache.move_to_end(key.name)
            with recording.lock:
                if recording.evicted:
                    continue
                yield recording
                return

    def _evict_idle(self) -> None:
        """Forget the least recently used layouts past the cache size; never one in use."""
        excess = len(self._cache) - self._settings.writer_cache_size
        for name in list(self._cache)[:-1]:
            if excess <= 0:
                return
            candidate = self._cache[name]
            if candidate.lock.acquire(blocking=False):
                candidate.evicted = True
                del self._cache[name]
                candidate.lock.release()
                excess -= 1

    def _forget(self, key: RecordingKey, recording: _Recording) -> None:
        recording.parts = None
        recording.evicted = True
        with self._cache_lock:
            if self._cache.get(key.name) is recording:
                del self._cache[key.name]

    def _part_path(self, key: RecordingKey, index: int) -> Path:
        return self._root.joinpath(*key.part_name(index).split("/"))

    def _ensure_root(self) -> None:
        self._root.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            self._root.mkdir(mode=DIR_MODE)
        os.chmod(self._root, DIR_MODE)

    def _make_dirs(self, directory: Path) -> None:
        """Create the time directories below the root, each 0700, each entry fsynced."""
        missing: list[Path] = []
        probe = directory
        while probe != self._root and not probe.is_dir():
            missing.append(probe)
            probe = probe.parent
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=DIR_MODE)
                fsync_dir(path.parent)

    def _load(self, key: RecordingKey, recording: _Recording, *, verify: bool = True,
              repair: bool = True) -> list[PartFile]:
        """Open the recording's parts; NotFound if it has no first part.

        Writers (`repair`) cut a torn tail or rewrite a torn header; readers never write: they skip the torn
        bytes and keep such a layout out of the cache, so the next writer opens (and repairs) it afresh.
        The layout in memory is re-read when the files moved on without us (another store on the same
        directory), which two stat calls tell; appends skip them and check the size of the file they write.
        """
        if verify and recording.parts is not None and not self._layout_current(key, recording.parts):
            recording.parts = None
        if recording.parts is None:
            paths: list[Path] = []
            while (path := self._part_path(key, len(paths))).is_file():
                paths.append(path)
            if not paths:
                raise NotFound(f"no recording {key.request_id} in region {self._region}")
            parts = [open_part_file(path, repair=repair) for path in paths]
            if any(part.torn for part in parts):
                return parts
            recording.parts = parts
        return recording.parts

    def _layout_current(self, key: RecordingKey, parts: list[PartFile]) -> bool:
        try:
            size = os.stat(parts[-1].path).st_size
        except FileNotFoundError:
            return False
        return size == parts[-1].file_end and not self._part_path(key, len(parts)).exists()

    # --- the calls' work (on the I/O threads) -------------------------------------------------------

    def _create(self, key: RecordingKey) -> None:
        self._ensure_root()
        with self._locked(key) as recording:
            try:
                parts = self._load(key, recording)
            except NotFound:
                path = self._part_path(key, 0)
                with self._dirs_lock:
                    self._make_dirs(path.parent)
                    recording.parts = [create_part_file(path, self._clock.now())]
                return
            if len(parts) == 1 and parts[0].units == 0:
                return  # a retried create
            raise Conflict(f"recording {key.request_id} already holds data in region {self._region}")

    def _append(self, key: RecordingKey, unit: bytes, offset: int) -> int:
        with self._locked(key) as recording:
            for attempt in range(2):
                parts = self._load(key, recording, verify=attempt > 0)
                length = _total(parts)
                if length != offset:
                    return self._confirm_landed(key, parts, unit, offset, length)
                part = parts[-1]
                if next_part_needed(part_units=part.units, part_bytes=part.payload_bytes,
                                    unit_bytes=len(unit), settings=self._settings):
                    check_part_budget(len(parts), self._settings)
                    part = self._open_next_part(key, len(parts))
                    parts.append(part)
                try:
                    append_unit(part, unit)
                except StaleLayout:
                    recording.parts = None
                    continue
                return length + len(unit)
        raise Conflict(f"append to {key.request_id}: its files keep changing under this store")

    def _open_next_part(self, key: RecordingKey, index: int) -> PartFile:
        path = self._part_path(key, index)
        try:
            part = create_part_file(path, self._clock.now())
        except FileExistsError:
            part = open_part_file(path)
            if part.units:
                raise Conflict(f"recording {key.request_id}: part {index} already holds data") from None
        log.info("storage.part.opened", region=self._region, request_id=key.request_id, part=index)
        return part

    def _confirm_landed(self, key: RecordingKey, parts: list[PartFile], unit: bytes, offset: int,
                        length: int) -> int:
        """A retry of the last append succeeds if its unit is exactly the recording's tail; else Conflict."""
        end = offset + len(unit)
        if end == length and _read_range(parts, offset, end) == unit:
            log.info("storage.append.already_landed", region=self._region, request_id=key.request_id,
                     offset=offset, bytes=len(unit))
            return end
        raise Conflict(f"append to {key.request_id} at offset {offset}, but it holds {length} bytes")

    def _read(self, key: RecordingKey, offset: int, length: int | None) -> bytes:
        with self._locked(key) as recording:
            parts = self._load(key, recording, repair=False)
            total = _total(parts)
            end = total if length is None else min(total, offset + length)
            return _read_range(parts, offset, end)

    def _length(self, key: RecordingKey) -> int:
        with self._locked(key) as recording:
            return _total(self._load(key, recording, repair=False))

    def _delete(self, key: RecordingKey) -> bool:
        with self._locked(key) as recording:
            directory = self._part_path(key, 0).parent
            victims = sorted(self._parts_on_disk(key, directory), reverse=True)
            for _index, path in victims:
                path.unlink()
            if victims:
                fsync_dir(directory)
            self._forget(key, recording)
        if victims:
            self._remove_empty_dirs(directory)
            log.info("storage.recording.deleted", region=self._region, request_id=key.request_id,
                     parts=len(victims))
        return bool(victims)

    def _parts_on_disk(self, key: RecordingKey, directory: Path) -> list[tuple[int, Path]]:
        if not directory.is_dir():
            return []
        hour = directory.relative_to(self._root).as_posix()
        found: list[tuple[int, Path]] = []
        for entry in os.scandir(directory):
            parsed = parse_part_name(f"{hour}/{entry.name}")
            if parsed is not None and parsed.request_id == key.request_id:
                found.append((parsed.index, Path(entry.path)))
        return found

    def _remove_empty_dirs(self, directory: Path) -> None:
        with self._dirs_lock:
            while directory != self._root and self._root in directory.parents:
                try:
                    directory.rmdir()
                except OSError:
                    return  # not empty (or already gone): stop climbing
                fsync_dir(directory.parent)
                directory = directory.parent

    def _hour_dirs(self, prefix: str) -> list[str]:
        fixed = [piece for piece in prefix.split("/") if piece]
        found: list[str] = []

        def walk(rel: list[str]) -> None:
            depth = len(rel)
            if depth == len(_TIME_DIR):
                found.append("/".join(rel))
                return
            here = self._root.joinpath(*rel)
            names = [fixed[depth]] if depth < len(fixed) else sorted(os.listdir(here))
            for name in names:
                if _TIME_DIR[depth].fullmatch(name) and (here / name).is_dir():
                    walk([*rel, name])

        if self._root.is_dir():
            walk([])
        return found

    def _objects_in(self, hour: str) -> list[StoredObject]:
        directory = self._root.joinpath(*hour.split("/"))
        parts: dict[str, dict[int, Path]] = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(directory):
                parsed = parse_part_name(f"{hour}/{entry.name}")
                if parsed is not None:
                    parts.setdefault(parsed.request_id, {})[parsed.index] = Path(entry.path)
        found: list[StoredObject] = []
        for request_id in sorted(parts):
            by_index = parts[request_id]
            with contextlib.suppress(FileNotFoundError):
                created_at: datetime = read_created_at(by_index[min(by_index)])
                parsed = parse_part_name(f"{hour}/{request_id}")
                assert parsed is not None  # noqa: S101 - built from a name that parsed above
                found.append(StoredObject(name=f"{hour}/{request_id}", request_id=request_id, hour=parsed.hour,
                                          created_at=created_at, parts=len(by_index)))
        return found


def _total(parts: list[PartFile]) -> int:
    return sum(part.payload_bytes for part in parts)


def _read_range(parts: list[PartFile], start: int, end: int) -> bytes:
    """Logical bytes `[start, end)` across the parts."""
    pieces: list[bytes] = []
    base = 0
    for part in parts:
        size = part.payload_bytes
        if start < base + size and end > base:
            pieces.append(read_payload(part, max(start, base) - base, min(end, base + size) - base))
        base += size
        if base >= end:
            break
    return b"".join(pieces)
