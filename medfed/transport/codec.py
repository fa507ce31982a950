"""Model states on the wire and on disk: safetensors bytes (never pickle), metadata as JSON strings."""

from __future__ import annotations

import json

from safetensors import SafetensorError
from safetensors.torch import load, save

from medfed.errors import IncompatibleUpdate
from medfed.types import StateDict


def encode_state(state: StateDict, metadata: dict[str, object] | None = None) -> bytes:
    meta = {"medfed": json.dumps(metadata or {})}
    return save({k: v.contiguous() for k, v in state.items()}, metadata=meta)


def decode_state(blob: bytes) -> StateDict:
    try:
        return load(blob)
    except (SafetensorError, ValueError, OSError) as exc:
        raise IncompatibleUpdate(f"not a valid safetensors model state: {exc}") from None
