"""Ordering for in-memory views that are reloaded from the database while requests read them.

Reloads overlap (a refresh loop, an explicit reload, a reload on a miss), and a slow one may finish after
a newer one, or after this replica dropped a key it had just changed in the database. Without ordering,
such a stale read would bring back a withdrawn consent or a removed resource, or hide a fresh one.
"""

from __future__ import annotations

from typing import TypeVar

V = TypeVar("V")


class SnapshotGuard:
    """Numbers each reload when it starts. A snapshot older than the one in force is refused, and a key
    dropped after a reload started is dropped from that reload's snapshot too."""

    def __init__(self) -> None:
        self._started = 0
        self._in_force = 0  # the start number of the snapshot in force
        self._dropped: dict[str, int] = {}  # key -> reloads started when it was dropped

    def begin(self) -> int:
        """Call before reading the database; pass the number to `accept`."""
        self._started += 1
        return self._started

    def drop(self, key: str) -> None:
        """This replica just committed a change that removes `key`; reads already in flight may predate it."""
        self._dropped[key] = self._started

    def accept(self, number: int, snapshot: dict[str, V]) -> bool:
        """False if a newer snapshot is in force; else removes from `snapshot` (in place) every key dropped
        after this read may have begun, and the caller puts it in force."""
        if number < self._in_force:
            return False
        for key, dropped_at in list(self._dropped.items()):
            if dropped_at >= number:  # the read may have begun before the change was committed
                snapshot.pop(key, None)
            else:  # the read began after the commit: the database has the final word
                del self._dropped[key]
        self._in_force = number
        return True
