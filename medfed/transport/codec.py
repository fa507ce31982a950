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


def decode_metadata(blob: bytes) -> dict[str, object]:
    """The metadata encode_state put in a blob: safetensors' header is an 8-byte little-endian
    length, then that many bytes of JSON whose "__metadata__" holds it."""
    try:
        size = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + size])
        meta = json.loads(header.get("__metadata__", {}).get("medfed", "{}"))
    except (ValueError, AttributeError) as exc:
        raise IncompatibleUpdate(f"not a valid safetensors header: {exc}") from None
    if not isinstance(meta, dict):
        raise IncompatibleUpdate("safetensors metadata is not a JSON object")
    return meta
