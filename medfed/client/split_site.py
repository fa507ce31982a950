"""A site in U-shaped split learning: it trains its head and tail, the server's middle between them.

The site's model is `SplitModel`: head -> (the server's middle, reached only through the channel)
-> tail. The middle is a torch.autograd.Function whose forward sends the cut activations and
returns the server's, and whose backward sends the gradient at the second cut and returns the
server's gradient at the first; so the ordinary site trainer (client/trainer.py: its batches, loss,
optimizer, epochs and steps) trains it unchanged, and the loss, with the labels, stays here.
Validation and test scoring use the whole, assembled model, as for every algorithm.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medfed.client.trainer import SiteTrainer, TrainOptions
from medfed.models.blocks import HEAD, TAIL, SplitLayout
from medfed.transport.split_channel import MiddleServer
from medfed.types import Metrics, SiteId, StateDict, Update


class SiteLink:
    """One site's end of the channel: tensors go out as they are, come back on the site's device.
    channel: the site's end of the seam (a SplitChannel in one process, a SiteEnd over gRPC)."""

    def __init__(self, channel: MiddleServer, site: SiteId) -> None:
        self.channel = channel
        self.site = site

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return self.channel.forward(self.site, activations).to(activations.device)

    def backward(self, gradient: torch.Tensor) -> torch.Tensor:
        return self.channel.backward(self.site, gradient).to(gradient.device)


class _RemoteMiddle(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, activations: torch.Tensor, link: SiteLink) -> torch.Tensor:
        ctx.link = link
        return link.forward(activations)  # (B, *first cut) -> (B, *second cut)

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.link.backward(gradient), None  # d loss/d second cut -> d loss/d first cut


class SplitModel(nn.Module):
    """What a site trains: its head and tail (their state-dict keys: head.*, tail.*)."""

    def __init__(self, head: nn.Sequential, tail: nn.Sequential, link: SiteLink) -> None:
        super().__init__()
        self.head = head
        self.tail = tail
        self._link = link

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.head(x)
        if not first.requires_grad:  # a head without parameters: the middle must still learn
            first = first.detach().requires_grad_()
        return self.tail(_RemoteMiddle.apply(first, self._link))


class SplitSite:
    """A simulated site for split learning, around the site's ordinary trainer: training runs the
    split protocol on the trainer's head and tail; evaluation scores the whole model as usual."""

    def __init__(self, whole: SiteTrainer, link: SiteLink, cut: tuple[int, int]) -> None:
        self.whole = whole
        layout = SplitLayout.of(whole.model, *cut)  # shares the trainer's own modules
        model = SplitModel(layout.parts[HEAD], layout.parts[TAIL], link)
        self.split = SiteTrainer(whole.data, model, whole.task, whole.preprocess, whole.device,
                                 whole.seed, whole.augment is not None)

    @property
    def site(self) -> str:
        return self.whole.site

    def train(self, state: StateDict, options: TrainOptions) -> Update:
        """state: the site part (head.*, tail.*); the update carries the same keys back."""
        self.split.data = self.whole.data  # a deployed site may harmonize its data between rounds
        return self.split.train(state, options)

    def evaluate(self, state: StateDict, split: str) -> Metrics:
        return self.whole.evaluate(state, split)
