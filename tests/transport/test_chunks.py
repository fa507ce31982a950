"""Chunking: any size round-trips; announced sizes over the limit and overruns are refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medfed.errors import IncompatibleUpdate
from medfed.transport import chunks


@given(st.binary(max_size=5000), st.integers(1, 700))
def test_split_and_assemble_round_trip(blob: bytes, size: int):
    pieces = list(chunks.split(blob, size))
    assert all(0 < len(p) <= size for p in pieces)
    assembly = chunks.Assembly(len(blob), limit=len(blob))
    for piece in pieces:
        assembly.add(bytes(piece))
    assert assembly.complete and assembly.result() == blob


def test_a_model_bigger_than_any_message_travels_in_many_messages():
    blob = bytes(range(256)) * (3 * chunks.CHUNK_BYTES // 256 + 7)
    pieces = list(chunks.split(blob))
    assert len(pieces) == 4 and max(map(len, pieces)) == chunks.CHUNK_BYTES < chunks.MESSAGE_LIMIT


def test_over_the_limit_overrun_and_short_are_refused():
    with pytest.raises(IncompatibleUpdate, match="over the limit"):
        chunks.Assembly(11, limit=10)
    assembly = chunks.Assembly(4, limit=10)
    assembly.add(b"abc")
    with pytest.raises(IncompatibleUpdate, match="got 3 of the announced 4"):
        assembly.result()
    with pytest.raises(IncompatibleUpdate, match="overrun"):
        assembly.add(b"de")
