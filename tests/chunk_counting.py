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
