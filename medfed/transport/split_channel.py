"""The seam between a site and the server's middle in split learning (algorithms/split.py).

Per batch, four messages cross it, each one safetensors tensor named for what it is:

    up    "activations"  the site's head output (the first cut)
    down  "activations"  the server's middle output (the second cut)
    up    "gradient"     d loss / d (second cut), from the site's tail and its own labels
    down  "gradient"     d loss / d (first cut), from the server's backward through the middle

Labels never cross: the loss is computed at the site. The seam has two ends joined by a wire that
carries bytes: `MiddleEnd` (the server's: it checks every tensor a site sends, runs the middle and
encodes its answer) and `SiteEnd` (a site's: it encodes what it sends and checks every tensor that
comes back). Every incoming tensor is checked before it is used: its name, float32, the shape the
protocol expects at that point, finite values. In one process the wire is `LocalWire`, which
counts and can log every message (`SplitChannel` is the two ends joined by it, and `SplitTransport`
adds its bytes to the model traffic of the transport it wraps, so a run's bytes_up / bytes_down
hold both); in a deployment it is one gRPC call per message (transport/grpc_split.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
ANY_BATCH = 1 << 62  # a forward's batch when the receiver sets no bound (simulation)
Shape = tuple[int, ...]


class MiddleServer(Protocol):
    """The server's side of the seam: its middle blocks, forward and backward, per site. (A site
    sees the same through its end of the seam: SiteEnd and SplitChannel offer it too.)"""

    def forward(self, site: SiteId, activations: torch.Tensor) -> torch.Tensor: ...

    def backward(self, site: SiteId, gradient: torch.Tensor) -> torch.Tensor: ...


class Wire(Protocol):
    """What carries a site's message to the middle's end and brings back the answer: bytes only."""

    def forward(self, site: SiteId, blob: bytes) -> bytes: ...

    def backward(self, site: SiteId, blob: bytes) -> bytes: ...


def encode_tensor(name: str, tensor: torch.Tensor) -> bytes:
    return encode_state({name: tensor.detach().to("cpu", DTYPE)})


class MiddleEnd:
    """The server's end: checks each tensor a site sends, runs the middle, encodes its answer."""

    def __init__(self, server: MiddleServer, cut_shapes: tuple[Sequence[int], Sequence[int]],
                 max_batch: int | None = None) -> None:
        """cut_shapes: the per-sample shapes at the first and second cut (SplitLayout.cut_shapes);
        max_batch: the largest batch a site may send (None: any)."""
        self.server = server
        self.first_cut, self.second_cut = (tuple(s) for s in cut_shapes)
        self.max_batch = max_batch
        # each site's forward in flight: its batch size and its turn
        self._in_flight: dict[SiteId, tuple[int, object]] = {}

    def forward(self, site: SiteId, blob: bytes, turn: object = None) -> bytes:
        """turn: what this forward and its backward share (a deployment: the site's train task),
        so that a forward left over from an earlier turn is never answered."""
        activations = checked_tensor(blob, ACTIVATIONS, (0, *self.first_cut),
                                     self.max_batch or ANY_BATCH)
        self._in_flight.pop(site, None)
        output = self.server.forward(site, activations)
        self._in_flight[site] = (activations.shape[0], turn)
        return encode_tensor(ACTIVATIONS, output)

    def backward(self, site: SiteId, blob: bytes, turn: object = None) -> bytes:
        batch, opened = self._in_flight.pop(site, (0, None))
        if not batch or opened != turn:
            raise IncompatibleUpdate(f"site {site} sent a gradient with no forward pass in flight")
        gradient = checked_tensor(blob, GRADIENT, (batch, *self.second_cut))
        return encode_tensor(GRADIENT, self.server.backward(site, gradient))


class SiteEnd:
    """A site's end: encodes what it sends over the wire, checks what comes back."""

    def __init__(self, wire: Wire, cut_shapes: tuple[Sequence[int], Sequence[int]]) -> None:
        self.wire = wire
        self.first_cut, self.second_cut = (tuple(s) for s in cut_shapes)

    def forward(self, site: SiteId, activations: torch.Tensor) -> torch.Tensor:
        """The site's head output up; the middle's output down."""
        reply = self.wire.forward(site, encode_tensor(ACTIVATIONS, activations))
        return checked_tensor(reply, ACTIVATIONS, (_batch(activations), *self.second_cut))

    def backward(self, site: SiteId, gradient: torch.Tensor) -> torch.Tensor:
        """The gradient at the second cut up; the gradient at the first cut down."""
        reply = self.wire.backward(site, encode_tensor(GRADIENT, gradient))
        return checked_tensor(reply, GRADIENT, (_batch(gradient), *self.first_cut))


def _batch(tensor: torch.Tensor) -> int:
    return tensor.shape[0] if tensor.ndim else 0


@dataclass(frozen=True)
class Message:
    """One message as it crossed the seam (kept when the wire is asked to keep a log)."""

    direction: str  # UP (site -> server) or DOWN
    site: SiteId
    blob: bytes


class LocalWire:
    """The wire in one process: straight to the middle's end, counting (and logging) each message."""

    def __init__(self, middle: MiddleEnd, keep_log: bool = False) -> None:
        self.middle = middle
        self.bytes_up = 0
        self.bytes_down = 0
        self.log: list[Message] | None = [] if keep_log else None

    def forward(self, site: SiteId, blob: bytes) -> bytes:
        return self._carried(site, blob, self.middle.forward)

    def backward(self, site: SiteId, blob: bytes) -> bytes:
        return self._carried(site, blob, self.middle.backward)

    def _carried(self, site: SiteId, blob: bytes, answer: Callable[[SiteId, bytes], bytes]
                 ) -> bytes:
        self._note(UP, site, blob)
        reply = answer(site, blob)
        self._note(DOWN, site, reply)
        return reply

    def _note(self, direction: str, site: SiteId, blob: bytes) -> None:
        if direction == UP:
            self.bytes_up += len(blob)
        else:
            self.bytes_down += len(blob)
        if self.log is not None:
            self.log.append(Message(direction, site, blob))


class SplitChannel(SiteEnd):
    """Both ends in one process, joined by a LocalWire: what simulated sites talk through."""

    def __init__(self, server: MiddleServer, cut_shapes: tuple[Sequence[int], Sequence[int]],
                 keep_log: bool = False) -> None:
        self.local = LocalWire(MiddleEnd(server, cut_shapes), keep_log)
        super().__init__(self.local, cut_shapes)

    @property
    def bytes_up(self) -> int:
        return self.local.bytes_up

    @property
    def bytes_down(self) -> int:
        return self.local.bytes_down

    @property
    def log(self) -> list[Message] | None:
        return self.local.log


def checked_tensor(blob: bytes, name: str, shape: Shape, max_batch: int | None = None
                   ) -> torch.Tensor:
    """The one tensor a split-learning message carries, refused unless it is what the protocol
    expects here: exactly `name`, float32, `shape` (a batch of at least one), finite. With
    max_batch, the batch is the sender's to choose (a forward opens one): 1 to max_batch."""
    state = decode_state(blob)
    if set(state) != {name}:
        raise IncompatibleUpdate(f"a split-learning message must carry only '{name}', got "
                                 f"{sorted(state)[:8]}")
    tensor = state[name]
    if tensor.dtype != DTYPE:
        raise IncompatibleUpdate(f"{name}: dtype {tensor.dtype}, expected {DTYPE}")
    if max_batch is not None and tensor.ndim and 1 <= tensor.shape[0] <= max_batch:
        shape = (tensor.shape[0], *shape[1:])
    if tuple(tensor.shape) != shape or not shape or shape[0] < 1:
        expected = (f"(B, {', '.join(map(str, shape[1:]))}) with 1 <= B"
                    + (f" <= {max_batch}" if max_batch < ANY_BATCH else "")) if max_batch else shape
        raise IncompatibleUpdate(f"{name}: shape {tuple(tensor.shape)}, expected {expected}")
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
