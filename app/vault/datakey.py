"""The per-recording data key (DEK): 32 random bytes, held in one zeroable buffer as briefly as possible."""

from __future__ import annotations

import hmac
import os
from types import TracebackType

DATA_KEY_SIZE = 32

BytesLike = bytes | bytearray | memoryview


class DataKey:
    """A 256-bit DEK. Use it as a context manager, or call `destroy()`, to zero it once the segment key is
    derived (sealing) or the stream is opened (reading). Python may still hold transient copies made by
    the crypto library; this keeps the long-lived one short-lived."""

    __slots__ = ("_destroyed", "_material")

    def __init__(self, material: BytesLike) -> None:
        if len(material) != DATA_KEY_SIZE:
            raise ValueError(f"a data key is {DATA_KEY_SIZE} bytes")
        self._material = bytearray(material)
        self._destroyed = False

    @classmethod
    def generate(cls) -> DataKey:
        """A fresh DEK from the operating system's CSPRNG."""
        return cls(os.urandom(DATA_KEY_SIZE))

    @property
    def destroyed(self) -> bool:
        return self._destroyed

    def material(self) -> memoryview:
        """A read-only view of the key bytes; valid until `destroy()`."""
        if self.destroyed:
            raise ValueError("the data key has been destroyed")
        return memoryview(self._material).toreadonly()

    def same_as(self, other: DataKey) -> bool:
        """Constant-time equality (tests and consistency checks)."""
        return hmac.compare_digest(self._material, other._material)

    def destroy(self) -> None:
        """Overwrite the key bytes with zeros and drop them."""
        self._material[:] = bytes(len(self._material))  # in place: views handed out see zeros too
        self._destroyed = True

    def __enter__(self) -> DataKey:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return "DataKey(destroyed)" if self.destroyed else "DataKey(<redacted>)"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("data keys are not serializable")
