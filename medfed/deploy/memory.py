"""Keeping a long-running server's resident memory flat on glibc (Linux); no-ops elsewhere.

A server runs for days while sites send it models, chunks and (if hostile) garbage. Measured with
benchmarks/fuzz_protocol.py, its Python heap hardly grows (tracemalloc: about 1 MB over 10,000
hostile messages) but its resident memory did: glibc gives each of gRPC's worker threads its own
malloc arena, and the freed buffers of large messages stay mapped in them. Two standard remedies:

- cap the arenas (what MALLOC_ARENA_MAX=2 does), before the gRPC server starts its threads;
- after each round, hand freed memory back to the system (malloc_trim), which costs a few
  milliseconds per round.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h
ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _libc()  # None on musl, macOS and Windows: both functions below do nothing there


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (threads started later share them); True if it took effect."""
    return bool(_LIBC is not None and _LIBC.mallopt(M_ARENA_MAX, arenas))


def release_freed() -> bool:
    """Return freed heap pages to the system; True if any were released."""
    return bool(_LIBC is not None and _LIBC.malloc_trim(0))
