"""U-shaped split learning, SplitFed style: the server runs the middle of the model, each site its
head and tail, and the sites' parts are averaged FedAvg-style every round.

- U-shaped split learning (Vepakomma et al., "Split learning for health", 2018, Fig. 1c): the site
  keeps the first and last blocks, so neither its images nor its labels leave it. Per batch the
  site sends the activations at the first cut, the server returns the middle's output, the site
  computes the loss and sends the gradient at the second cut, the server backpropagates the middle
  (and steps it) and returns the gradient at the first cut (transport/split_channel.py).
- SplitFed (Thapa et al., AAAI 2022, Algorithm 1): sites train in parallel from the same site-side
  part; at the end of the round the server averages the sites' parts, weighted by their samples,
  as FedAvg averages models. Here one middle serves every site (SplitFed-V2's server side): its
  optimizer steps on each batch that reaches it, whichever site sent it.

With one site and plain SGD, a round is exactly centralized SGD on that site's data; with several,
the middle sees every site's batches and the site parts are averaged: the known trade of SplitFed.
Deployed sites train in parallel (deploy/split_service.py), so another site's batch may step the
middle between a site's forward and its backward: each forward keeps a snapshot of the middle's
parameters, and the backward steps the middle with the gradient taken at that snapshot
(asynchronous SGD, stale by at most the other sites' batches in flight); in one process, where a
forward is always followed by its own backward, the snapshot is the middle itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import nn

from medfed.algorithms.checkpoint import Checkpoint
from medfed.algorithms.fedavg import FedAvg
from medfed.client.trainer import TrainOptions, build_optimizer
from medfed.config import TrainingConfig
from medfed.config_split import parse_cut
from medfed.errors import ConfigError, IncompatibleUpdate
from medfed.lr_schedule import round_lr
from medfed.models.blocks import HEAD, MIDDLE, TAIL, SplitLayout
from medfed.types import Prediction, SiteId, StateDict, Update

MIDDLE_PREFIX = f"{MIDDLE}."


class SplitFed:
    prediction = Prediction.GLOBAL

    def __init__(self, layout: SplitLayout, cut: tuple[int, int], initial: StateDict,
                 training: TrainingConfig, sample_shape: Sequence[int], rounds: int = 1) -> None:
        """layout: the server's own copy of the network, cut; initial: the whole model's state;
        rounds: the federation's, for the middle's learning rate under training.lr_schedule."""
        self.name = "split"
        self.cut = cut
        self.layout = layout
        self.cut_shapes = layout.cut_shapes(tuple(sample_shape))
        self.middle = layout.parts[MIDDLE]
        self._load_middle(layout.from_whole(initial, MIDDLE))
        self.site_parts = FedAvg(layout.from_whole(initial, HEAD, TAIL), name=self.name)
        self.train_overrides: dict[str, float | bool] = {}
        self._options = TrainOptions(lr=training.lr, optimizer=training.optimizer,
                                     momentum=training.momentum,
                                     weight_decay=training.weight_decay)
        self._optimizer = build_optimizer(self.middle.parameters(), self._options)
        self._schedule = (training.lr, rounds, training.lr_schedule)
        self._in_flight: dict[SiteId, tuple[torch.Tensor, torch.Tensor, StateDict]] = {}
        self._lock = threading.Lock()  # one batch through the middle at a time
        self._assembled: StateDict | None = None

    # --- the round loop's side: the site parts, averaged as FedAvg averages models -------------

    def stages(self, round_index: int, sites: Sequence[SiteId]) -> list[list[SiteId]]:
        lr, rounds, schedule = self._schedule  # the middle steps at the sites' rate of this round
        self._options = replace(self._options, lr=round_lr(lr, round_index, rounds, schedule))
        return self.site_parts.stages(round_index, sites)

    def payload(self, site: SiteId) -> StateDict:
        return self.site_parts.payload(site)

    def open_stage(self) -> None:
        """A fresh optimizer for the middle each round, as each site gets a fresh one for its part."""
        self.site_parts.open_stage()
        self.middle.train()
        self._optimizer = build_optimizer(self.middle.parameters(), self._options)

    def receive(self, update: Update) -> None:
        self.site_parts.receive(update)

    def close_stage(self) -> None:
        self.site_parts.close_stage()
        self._assembled = None

    @property
    def aggregation_notes(self) -> dict[str, list[SiteId]]:
        return self.site_parts.aggregation_notes

    @property
    def global_state(self) -> StateDict:
        """head + middle + tail, under the whole model's names: what is scored and exported."""
        if self._assembled is None:
            middle = {MIDDLE_PREFIX + k: v.detach().cpu().clone()
                      for k, v in self.middle.state_dict().items()}
            self._assembled = self.layout.to_whole_state({**self.site_parts.global_state, **middle})
        return self._assembled

    def site_state(self, site: SiteId) -> StateDict:
        return self.global_state

    @property
    def trained_sites(self) -> list[SiteId]:
        return self.site_parts.trained_sites

    def checkpoint(self) -> Checkpoint:
        middle = self.layout.from_whole(self.global_state, MIDDLE)
        return self.site_parts.checkpoint().add("middle/", middle)

    def restore(self, checkpoint: Checkpoint) -> None:
        self.site_parts.restore(checkpoint)
        self._load_middle(checkpoint.part("middle/"))
        self._assembled = None

    def _load_middle(self, middle: StateDict) -> None:
        self.middle.load_state_dict({k[len(MIDDLE_PREFIX):]: v for k, v in middle.items()})

    # --- the seam's side (transport/split_channel.py's MiddleServer) -------------------------

    def forward(self, site: SiteId, activations: torch.Tensor) -> torch.Tensor:
        """The middle on a site's cut activations, with a snapshot of its parameters; the graph is
        kept for that site's backward. (Deployed sites train in parallel: other sites' batches may
        step the middle between this forward and its backward; the snapshot keeps this batch's
        gradient the one of the function that computed its output.)"""
        # enable_grad: in simulation this runs inside the site's autograd.Function, where it is off
        with self._lock, torch.enable_grad():
            inputs = activations.detach().requires_grad_()
            params = {name: p.detach().clone().requires_grad_()
                      for name, p in self.middle.named_parameters()}
            outputs = torch.func.functional_call(self.middle, params, (inputs,))
            self._in_flight[site] = (inputs, outputs, params)
            return outputs.detach()

    def backward(self, site: SiteId, gradient: torch.Tensor) -> torch.Tensor:
        """Backpropagate the site's gradient at the second cut, step the middle with the gradient
        of its parameters' snapshot, and return the gradient at the first cut (computed before
        the step, as whole-model backprop would)."""
        with self._lock:
            if site not in self._in_flight:
                raise IncompatibleUpdate(f"site {site} sent a gradient with no forward in flight")
            inputs, outputs, params = self._in_flight.pop(site)
            outputs.backward(gradient)
            for name, param in self.middle.named_parameters():
                param.grad = params[name].grad
            self._optimizer.step()
            self._assembled = None
            if inputs.grad is None:
                raise IncompatibleUpdate("the middle passed no gradient to the first cut")
            return inputs.grad


def build_split(network: Callable[[], nn.Module] | None, cut_text: str, initial: StateDict,
                training: TrainingConfig, sample_shape: Sequence[int], rounds: int = 1) -> SplitFed:
    """network: builds the server's own copy of the model (None: a caller that cannot build one)."""
    if network is None:
        raise ConfigError("--algorithm split needs the server's own copy of the network")
    cut = parse_cut(cut_text)
    return SplitFed(SplitLayout.of(network(), *cut), cut, initial, training, sample_shape, rounds)
