"""A zarr 3 store wrapper that counts reads per key, to prove that opening or viewing reads only what it should."""

from __future__ import annotations

from collections import Counter
from typing import Any

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

METADATA_FILES = {"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"}


class CountingStore(WrapperStore[Any]):
    """Wraps any zarr Store (e.g. LocalStore) and counts ``get`` / ``get_partial_values`` calls per key."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.counts: Counter[str] = Counter()

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        self.counts[key] += 1
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Any
    ) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        for key, _ in key_ranges:
            self.counts[key] += 1
        return await self._store.get_partial_values(prototype, key_ranges)

    def chunk_reads(self, array_path: str) -> int:
        """Reads of chunk (not metadata) keys of the array at array_path, e.g. "s0" or "labels/cells/0"."""
        prefix = array_path.strip("/") + "/"
        return sum(
            n for key, n in self.counts.items()
            if key.startswith(prefix) and key.rsplit("/", 1)[-1] not in METADATA_FILES
        )

    def reset(self) -> None:
        """Forget the reads counted so far."""
        self.counts.clear()


class ProcessReads:
    """Bytes this process reads through ``read`` system calls inside a ``with`` block (Linux ``/proc/self/io``).

    For readers that open files themselves (tifffile): warm them up first (a first read imports modules), then the
    count is the bytes of the tiles read plus a few bytes of metadata.
    """

    def __enter__(self) -> "ProcessReads":
        self.bytes = 0
        self._start = self._rchar()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bytes = self._rchar() - self._start

    @staticmethod
    def _rchar() -> int:
        with open("/proc/self/io", encoding="ascii") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))
