"""Split learning's mechanism: the gradient the server returns at the cut is the whole model's, one
split step is one whole-model SGD step, and nothing but activations and gradients crosses the seam.

Hand mutations that turn these red (each tried once):
- _RemoteMiddle.backward returns zeros instead of the server's gradient at the first cut
  (the head never learns): test_one_split_step_is_whole_model_sgd fails.
- SplitFed.backward skips the middle's optimizer step: the same test fails.
- the site link also sends its labels (LeakyLink below): the wire inspection finds them.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from medfed.algorithms.split import SplitFed, build_split
from medfed.client.split_site import SiteLink
from medfed.client.trainer import SiteTrainer, TrainOptions, batch_order
from medfed.config import DataConfig, FederationConfig, ModelConfig, RunConfig, TrainingConfig
from medfed.errors import IncompatibleUpdate
from medfed.experiment import Setup, prepare, site_recipe, site_trainer
from medfed.models.blocks import model_blocks
from medfed.server.round_loop import RoundPlan, run_rounds
from medfed.split_simulation import split_transport
from medfed.transport.codec import decode_metadata, decode_state, encode_state
from medfed.transport.inprocess import InProcessTransport
from medfed.transport.split_channel import ACTIVATIONS, DOWN, GRADIENT, UP, SplitChannel, checked_tensor

SGD = TrainingConfig(optimizer="sgd", momentum=0.0, lr=0.5, batch_size=512)
CUT = (2, 1)


@pytest.fixture(scope="module")
def setup() -> Setup:
    return prepare(RunConfig(device="cpu", baselines=False,
                             data=DataConfig(sites=2, synthetic_samples=80, synthetic_test=20,
                                             augment=False),
                             model=ModelConfig(model="cnn", norm="batch"),
                             federation=FederationConfig(algorithm="split", rounds=1, eval_every=0),
                             training=SGD))


def one_step() -> TrainOptions:
    """Plain SGD, one batch holding all of a site's training data: exactly one step."""
    return TrainOptions(epochs=1, min_steps=0, batch_size=SGD.batch_size, lr=SGD.lr,
                        optimizer="sgd", momentum=0.0)


def split_server(setup: Setup) -> SplitFed:
    shape = (setup.spec.in_channels, *setup.spec.input_size)
    return build_split(site_recipe(setup, None).model, "2,1", setup.initial, SGD, shape)


def connected(setup: Setup, server: SplitFed, sites: list[str]):
    trainers = {s: site_trainer(setup, k, setup.federation.sites[s]) for k, s in enumerate(sites)}
    return split_transport(InProcessTransport(trainers), server, keep_log=True)


def whole_step(setup: Setup, site: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The same site's one step on the whole model: (its new state, the gradients at both cuts)."""
    trainer = site_trainer(setup, 0, setup.federation.sites[site])
    trainer.model.load_state_dict(setup.initial)
    trainer.model.train()
    x, y = first_batch(trainer)
    blocks = model_blocks(trainer.model)
    cuts, out = {}, x
    for index, block in enumerate(blocks):
        out = block(out)
        if index in (CUT[0] - 1, len(blocks) - CUT[1] - 1):  # outputs at the first, second cut
            out.retain_grad()
            cuts[index] = out
    loss = trainer.task_loss(out, y, one_step())
    loss.backward()
    torch.optim.SGD(trainer.model.parameters(), lr=SGD.lr).step()
    first, second = sorted(cuts)
    grads = {"first": cuts[first].grad, "second": cuts[second].grad}
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, grads


def messages(channel: SplitChannel, direction: str, name: str) -> list[torch.Tensor]:
    return [decode_state(m.blob)[name] for m in channel.log or []
            if m.direction == direction and name in decode_state(m.blob)]


def test_one_split_step_is_whole_model_sgd(setup):
    site = "site-a"
    server = split_server(setup)
    transport = connected(setup, server, [site])
    run_rounds(server, transport, [site], RoundPlan(1, eval_every=0), one_step(),
               np.random.default_rng(0))
    expected, grads = whole_step(setup, site)
    # the gradients the seam carried are the whole model's at the same cuts
    torch.testing.assert_close(messages(transport.channel, UP, GRADIENT)[0], grads["second"])
    torch.testing.assert_close(messages(transport.channel, DOWN, GRADIENT)[0], grads["first"])
    assembled = server.global_state
    assert set(assembled) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(assembled[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert transport.bytes_up > 0 and transport.bytes_down > 0


class LeakyLink(SiteLink):
    """A broken site that also ships its batch's labels with the activations."""

    labels: torch.Tensor

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        leak = self.labels.float().reshape(-1, *([1] * (activations.ndim - 1)))
        return super().forward(torch.cat([activations[:, :-1], leak.expand_as(activations[:, :1])],
                                         dim=1))


def leaked(tensor: torch.Tensor, labels: torch.Tensor) -> bool:
    """Whether a tensor holds the labels: equal to them, or one of its per-sample features is."""
    y = labels.float().reshape(-1)
    rows = tensor.reshape(tensor.shape[0], -1) if tensor.ndim else tensor.reshape(1, 1)
    if rows.shape[0] != len(y):
        return bool(tensor.numel() == len(y) and torch.equal(tensor.reshape(-1), y))
    return bool((rows == y[:, None]).all(dim=0).any())


def batch_labels(setup: Setup, k: int, site: str) -> torch.Tensor:
    """The labels of the one batch the k-th site draws in round 0."""
    trainer = site_trainer(setup, k, setup.federation.sites[site])
    return first_batch(trainer)[1]


def first_batch(trainer: SiteTrainer) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch a site draws first in round 0."""
    trainer.reseed(0)
    index = next(batch_order(len(trainer.data.train), SGD.batch_size, trainer.shuffle))
    return trainer.build_batch(trainer.data.train, index, trainer.augmentation(len(index)))


def test_labels_never_cross_the_seam(setup):
    sites = ["site-a", "site-b"]
    server = split_server(setup)
    transport = connected(setup, server, sites)
    run_rounds(server, transport, sites, RoundPlan(1, eval_every=0), one_step(),
               np.random.default_rng(0))
    log = transport.channel.log or []
    assert len(log) == 4 * len(sites)  # one batch each: activations and gradient, up and down
    labels = [batch_labels(setup, k, s) for k, s in enumerate(sites)]
    for message in log:
        state = decode_state(message.blob)
        assert set(state) in ({ACTIVATIONS}, {GRADIENT})
        assert decode_metadata(message.blob) == {}
        for y in labels:  # any site's batch labels, in the order the batch drew them
            for tensor in state.values():
                assert not leaked(tensor, y)
    # the inspection would see a leak: a site that ships its labels is caught
    channel = SplitChannel(server, server.cut_shapes, keep_log=True)
    leaky = LeakyLink(channel, "site-a")
    y = torch.tensor([0, 1, 1, 0, 1])
    leaky.labels = y
    leaky.forward(torch.rand(5, *server.cut_shapes[0]))
    assert leaked(decode_state(channel.log[0].blob)[ACTIVATIONS][:, -1], y)


@pytest.mark.parametrize("tensor,fragment", [
    ({"labels": torch.zeros(2, 3)}, "must carry only 'activations'"),
    ({ACTIVATIONS: torch.zeros(2, 3, dtype=torch.float64)}, "dtype"),
    ({ACTIVATIONS: torch.zeros(2, 4)}, "shape"),
    ({ACTIVATIONS: torch.full((2, 3), float("nan"))}, "NaN"),
])
def test_every_incoming_tensor_is_checked(tensor, fragment):
    with pytest.raises(IncompatibleUpdate, match=fragment):
        checked_tensor(encode_state(tensor), ACTIVATIONS, (2, 3))


def test_a_gradient_with_no_forward_in_flight_is_refused(setup):
    server = split_server(setup)
    channel = SplitChannel(server, server.cut_shapes)
    with pytest.raises(IncompatibleUpdate, match="no forward"):
        channel.backward("site-a", torch.zeros(1, *server.cut_shapes[1]))


def test_checkpoint_restores_the_middle(setup):
    server = split_server(setup)
    saved = copy.deepcopy(server.checkpoint())
    before = {k: v.clone() for k, v in server.global_state.items()}
    for p in server.middle.parameters():
        p.data.add_(1.0)
    server.restore(saved)
    for key, value in before.items():
        torch.testing.assert_close(server.global_state[key], value)


def test_a_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_run(setup):
    """Two rounds straight, against one round, a checkpoint, a new server restored from it (its
    sites connected to it) and the second round: the same assembled model, bit for bit."""
    sites = ["site-a", "site-b"]
    trainers = {s: site_trainer(setup, k, setup.federation.sites[s]) for k, s in enumerate(sites)}
    options = TrainOptions(epochs=1, batch_size=16, lr=SGD.lr, optimizer="sgd", momentum=0.0)

    def rounds(server: SplitFed, first: int, last: int) -> None:
        transport = split_transport(InProcessTransport(trainers), server)
        run_rounds(server, transport, sites, RoundPlan(last, eval_every=0, start=first), options,
                   np.random.default_rng(0))

    whole = split_server(setup)
    rounds(whole, 0, 2)
    stopped = split_server(setup)
    rounds(stopped, 0, 1)
    resumed = split_server(setup)  # a new server: nothing but the checkpoint
    resumed.restore(copy.deepcopy(stopped.checkpoint()))
    rounds(resumed, 1, 2)
    for key, value in whole.global_state.items():
        torch.testing.assert_close(resumed.global_state[key], value, rtol=0, atol=0, msg=key)


def test_the_middle_steps_at_the_rounds_scheduled_learning_rate(setup):
    shape = (setup.spec.in_channels, *setup.spec.input_size)
    cosine = dataclasses.replace(SGD, lr_schedule="cosine")
    server = build_split(site_recipe(setup, None).model, "2,1", setup.initial, cosine, shape, 4)
    rates = []
    for r in range(4):
        server.stages(r, ["site-a", "site-b"])
        server.open_stage()
        rates.append(server._optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([0.5 * (1 + math.cos(math.pi * r / 4)) / 2 for r in range(4)])
