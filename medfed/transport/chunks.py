"""Safetensors bytes cut into chunks and put back together, within limits.

No single protobuf message holds a model (protobuf messages stop at 2 GB, gRPC's default at 4 MB):
a state of any size travels as a header that announces its size, then chunks of at most
CHUNK_BYTES. The receiver refuses a header announcing more than its limit before any chunk
arrives, and a chunk that would overrun what was announced.
"""

from __future__ import annotations

from collections.abc import Iterator

from medfed.errors import IncompatibleUpdate

CHUNK_BYTES = 1 << 20  # 1 MiB of model per message
MESSAGE_LIMIT = 4 << 20  # the largest gRPC message either side accepts (a chunk plus headers)


def split(blob: bytes | memoryview, chunk_bytes: int = CHUNK_BYTES) -> Iterator[memoryview]:
    view = memoryview(blob)
    for start in range(0, len(view), chunk_bytes):
        yield view[start:start + chunk_bytes]


class Assembly:
    """The chunks of one announced state, collected into a preallocated buffer."""

    def __init__(self, size: int, limit: int) -> None:
        if size > limit:
            raise IncompatibleUpdate(f"announced {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self._buffer = bytearray(size)
        self._filled = 0

    @property
    def complete(self) -> bool:
        return self._filled == self.size

    def add(self, data: bytes) -> None:
        end = self._filled + len(data)
        if end > self.size:
            raise IncompatibleUpdate(f"chunks overrun the announced {self.size} bytes")
        self._buffer[self._filled:end] = data
        self._filled = end

    def result(self) -> bytes:
        if not self.complete:
            raise IncompatibleUpdate(f"got {self._filled} of the announced {self.size} bytes")
        return bytes(self._buffer)
