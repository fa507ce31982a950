"""A strategy's whole server state, so a stopped run continues exactly where it was.

Every strategy's `checkpoint()` returns its tensors (the global model, FedAdam/FedYogi's moments,
SCAFFOLD's control variate, FedBN's and the ensemble's per-site layers) under prefixed names, and
plain facts (which sites have trained); `restore()` takes them back. One safetensors file holds both
(the facts as JSON metadata): no pickle, and a checkpoint is checked like any model state when it
is read. Per-site tensors are named by the site's position in `sites`, never by its name (a name is
an identity, not a tensor key).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from safetensors.torch import load, save

from medfed.errors import IncompatibleUpdate
from medfed.types import StateDict


@dataclass
class Checkpoint:
    tensors: StateDict = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def part(self, prefix: str) -> StateDict:
        """The tensors stored under prefix, with the prefix taken off."""
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def add(self, prefix: str, state: StateDict) -> Checkpoint:
        self.tensors |= {prefix + k: v for k, v in state.items()}
        return self


class Checkpointable(Protocol):
    def checkpoint(self) -> Checkpoint: ...

    def restore(self, checkpoint: Checkpoint) -> None: ...


def per_site(checkpoint: Checkpoint, prefix: str, states: dict[str, StateDict]) -> Checkpoint:
    """Each site's tensors under prefix/<position>/, the positions' names in the facts."""
    names = sorted(states)
    checkpoint.facts[prefix] = names
    for k, site in enumerate(names):
        checkpoint.add(f"{prefix}/{k}/", states[site])
    return checkpoint


def per_site_back(checkpoint: Checkpoint, prefix: str) -> dict[str, StateDict]:
    return {site: checkpoint.part(f"{prefix}/{k}/")
            for k, site in enumerate(checkpoint.facts.get(prefix, []))}


def to_bytes(checkpoint: Checkpoint, metadata: dict[str, Any] | None = None) -> bytes:
    meta = {"medfed": json.dumps({**(metadata or {}), "facts": checkpoint.facts})}
    return save({k: v.contiguous() for k, v in checkpoint.tensors.items()}, metadata=meta)


def from_bytes(blob: bytes) -> tuple[Checkpoint, dict[str, Any]]:
    """(the checkpoint, the metadata it was written with)."""
    try:
        tensors = load(blob)
        meta = json.loads(_metadata(blob).get("medfed", "{}"))
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is one clear error
        raise IncompatibleUpdate(f"not a readable checkpoint: {type(exc).__name__}") from None
    return Checkpoint(tensors, meta.pop("facts", {})), meta


def _metadata(blob: bytes) -> dict[str, str]:
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + size])
    return header.get("__metadata__", {})
