"""Model states as safetensors bytes: exact round trip, metadata carried, garbage refused
cleanly."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open

from medfed.errors import IncompatibleUpdate
from medfed.transport.codec import decode_metadata, decode_state, encode_state


def sample_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "head.weight": torch.randn(5, 2, generator=g).t(),  # not contiguous
        "bn.running_var": torch.rand(4, generator=g, dtype=torch.float64),
        "bn.num_batches_tracked": torch.tensor(17),  # 0-dim int64
        "half": torch.randn(3, generator=g).to(torch.bfloat16),
        "mask": torch.tensor([True, False]),
        "tiny": torch.tensor([float("-0.0"), 1e-45, 3.4e38]),
    }


def header(blob: bytes) -> dict:
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + length])


def test_round_trip_is_exact_in_values_shapes_and_dtypes():
    state = sample_state()
    decoded = decode_state(encode_state(state))
    assert decoded.keys() == state.keys()
    for key, value in state.items():
        assert decoded[key].dtype == value.dtype and decoded[key].shape == value.shape
        assert torch.equal(decoded[key], value), key
    # bit-exact, -0.0 and subnormals included
    assert torch.equal(decoded["tiny"].view(torch.int32), state["tiny"].view(torch.int32))


def test_decoded_tensors_share_no_memory_with_the_original():
    state = {"w": torch.zeros(3)}
    decoded = decode_state(encode_state(state))
    decoded["w"].fill_(1.0)
    assert state["w"].tolist() == [0.0, 0.0, 0.0]


def test_metadata_is_carried_as_json(tmp_path):
    meta = {"n_samples": 12, "metrics": {"train_loss": 0.25}, "site": None, "names": ["a", "b"]}
    blob = encode_state({"w": torch.ones(2)}, meta)
    assert json.loads(header(blob)["__metadata__"]["medfed"]) == meta
    path = tmp_path / "m.safetensors"
    path.write_bytes(blob)
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["medfed"]) == meta
        assert list(f.keys()) == ["w"]


def test_no_metadata_is_an_empty_object():
    assert json.loads(header(encode_state({"w": torch.ones(1)}))["__metadata__"]["medfed"]) == {}
    assert decode_metadata(encode_state({"w": torch.ones(1)})) == {}


def test_decode_metadata_reads_back_what_encode_state_wrote():
    meta = {"n_samples": 12, "n_steps": 3, "metrics": {"train_loss": 0.25}}
    assert decode_metadata(encode_state({"w": torch.ones(2)}, meta)) == meta


@pytest.mark.parametrize("blob", [b"", b"garbage" * 3, struct.pack("<Q", 4) + b"[1]\n"])
def test_decode_metadata_of_garbage_is_an_incompatible_update(blob):
    with pytest.raises(IncompatibleUpdate):
        decode_metadata(blob)


HEADER_WITHOUT_DATA = b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'


@pytest.mark.parametrize("blob", [
    b"", b"garbage", b"\x00" * 8, b"\xff" * 16,
    struct.pack("<Q", len(HEADER_WITHOUT_DATA)) + HEADER_WITHOUT_DATA,
    struct.pack("<Q", 7) + b"[1,2,3]",
    b"\x80\x04\x95" + b"pickle-ish" * 3,
], ids=["empty", "text", "zeros", "ones", "missing-data", "header-not-object", "pickle-bytes"])
def test_garbage_bytes_are_an_incompatible_update(blob):
    with pytest.raises(IncompatibleUpdate, match="not a valid safetensors"):
        decode_state(blob)


def test_a_truncated_message_is_an_incompatible_update():
    blob = encode_state(sample_state())
    with pytest.raises(IncompatibleUpdate):
        decode_state(blob[:-7])


@given(blob=st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_incompatible_update(blob):
    try:
        decode_state(blob)
    except IncompatibleUpdate:
        pass


@given(prefix=st.binary(min_size=1, max_size=64))
def test_random_bytes_with_a_plausible_length_prefix_are_refused(prefix):
    blob = struct.pack("<Q", len(prefix)) + prefix
    try:
        state = decode_state(blob)
    except IncompatibleUpdate:
        return
    assert isinstance(state, dict)
