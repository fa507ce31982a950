"""The seam between a site and the server's middle in split learning (algorithms/split.py).

Per batch, four messages cross it, each one safetensors tensor named for what it is:

    up    "activations"  the site's head output (the first cut)
    down  "activations"  the server's middle output (the second cut)
    up    "gradient"     d loss / d (second cut), from the site's tail and its own labels
    down  "gradient"     d loss / d (first cut), from the server's backward through the middle

Labels never cross: the loss is computed at the site. Every tensor is encoded to bytes and decoded
on the other side (so neither side holds the other's tensor, and the byte counts are what a network
would carry), and every incoming tensor is checked before it is used: its name, float32, the shape
the protocol expects at that point, finite values. `SplitTransport` adds these bytes to the model
traffic of the transport it wraps, so a run's bytes_up / bytes_down hold both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from medfed.client.trainer import TrainOptions
from medfed.errors import IncompatibleUpdate
from medfed.transport.base import SimulationTransport
from medfed.transport.codec import decode_state, encode_state
from medfed.types import Metrics, SiteId, StateDict, Update

ACTIVATIONS = "activations"
GRADIENT = "gradient"
UP, DOWN = "up", "down"
DTYPE = torch.float32


class MiddleServer(Protocol):
    """The server's side of the seam: its middle blocks, forward and backward, per site."""

    def forward(self, site: SiteId, activations: torch.Tensor) -> torch.Tensor: ...

    def backward(self, site: SiteId, gradient: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Message:
    """One message as it crossed the seam (kept when the channel is asked to keep a log)."""

    direction: str  # UP (site -> server) or DOWN
    site: SiteId
    blob: bytes


class SplitChannel:
    def __init__(self, server: MiddleServer, cut_shapes: tuple[Sequence[int], Sequence[int]],
                 keep_log: bool = False) -> None:
        """cut_shapes: the per-sample shapes at the first and second cut (SplitLayout.cut_shapes)."""
        self.server = server
        self.first_cut, self.second_cut = (tuple(s) for s in cut_shapes)
        self.bytes_up = 0
        self.bytes_down = 0
        self.log: list[Message] | None = [] if keep_log else None
        self._batch: dict[SiteId, int] = {}  # the batch size of each site's forward in flight

    def forward(self, site: SiteId, activations: torch.Tensor) -> torch.Tensor:
        """The site's head output up; the middle's output down."""
        batch = activations.shape[0] if activations.ndim else 0
        received = self._carry(UP, site, ACTIVATIONS, activations, (batch, *self.first_cut))
        self._batch[site] = batch
        out = self.server.forward(site, received)
        return self._carry(DOWN, site, ACTIVATIONS, out, (batch, *self.second_cut))

    def backward(self, site: SiteId, gradient: torch.Tensor) -> torch.Tensor:
        """The gradient at the second cut up; the gradient at the first cut down."""
        batch = self._batch.pop(site, None)
        if batch is None:
            raise IncompatibleUpdate(f"site {site} sent a gradient with no forward pass in flight")
        received = self._carry(UP, site, GRADIENT, gradient, (batch, *self.second_cut))
        out = self.server.backward(site, received)
        return self._carry(DOWN, site, GRADIENT, out, (batch, *self.first_cut))

    def _carry(self, direction: str, site: SiteId, name: str, tensor: torch.Tensor,
               shape: tuple[int, ...]) -> torch.Tensor:
        blob = encode_state({name: tensor.detach().to("cpu", DTYPE)})
        if direction == UP:
            self.bytes_up += len(blob)
        else:
            self.bytes_down += len(blob)
        if self.log is not None:
            self.log.append(Message(direction, site, blob))
        return checked_tensor(blob, name, shape)


def checked_tensor(blob: bytes, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The one tensor a split-learning message carries, refused unless it is what the protocol
    expects here: exactly `name`, float32, `shape` (a batch of at least one), finite."""
    state = decode_state(blob)
    if set(state) != {name}:
        raise IncompatibleUpdate(f"a split-learning message must carry only '{name}', got "
                                 f"{sorted(state)}")
    tensor = state[name]
    if tensor.dtype != DTYPE:
        raise IncompatibleUpdate(f"{name}: dtype {tensor.dtype}, expected {DTYPE}")
    if tuple(tensor.shape) != shape or not shape or shape[0] < 1:
        raise IncompatibleUpdate(f"{name}: shape {tuple(tensor.shape)}, expected {shape}")
    if not torch.isfinite(tensor).all():
        raise IncompatibleUpdate(f"{name}: NaN or infinite values")
    return tensor


class SplitTransport:
    """A simulation transport whose sites also talk to the server's middle through a channel:
    the model traffic of `inner` (the site parts, FedAvg-style) plus the channel's."""

    def __init__(self, inner: SimulationTransport, channel: SplitChannel) -> None:
        self.inner = inner
        self.channel = channel

    @property
    def sites(self) -> list[SiteId]:
        return self.inner.sites

    @property
    def bytes_up(self) -> int:
        return self.inner.bytes_up + self.channel.bytes_up

    @property
    def bytes_down(self) -> int:
        return self.inner.bytes_down + self.channel.bytes_down

    def train(self, site: SiteId, state: StateDict, options: TrainOptions) -> Update:
        return self.inner.train(site, state, options)

    def evaluate(self, site: SiteId, state: StateDict, split: str) -> Metrics:
        return self.inner.evaluate(site, state, split)
