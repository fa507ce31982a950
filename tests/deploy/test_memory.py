"""deploy/memory.py: on glibc the arena cap and the trim reach libc (a wrong mallopt parameter
number returns 0: this test goes red); elsewhere both are no-ops that say so."""

from __future__ import annotations

import platform

import pytest

from medfed.deploy.memory import limit_arenas, release_freed


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only: elsewhere a no-op")
def test_glibc_takes_the_arena_cap_and_the_trim_runs():
    assert limit_arenas() is True
    junk = [bytearray(1 << 20) for _ in range(32)]  # 32 MB freed below: something to hand back
    del junk
    assert isinstance(release_freed(), bool)
