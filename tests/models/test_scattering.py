"""ScatterNet: the fixed scattering stays out of the model's state, its cache changes nothing, and
DP-SGD (Opacus) trains only the CNN on top."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("kymatio", reason="--model scatter needs kymatio (pip install medfed[dp])")

from medfed.errors import ConfigError
from medfed.models.registry import ModelSpec, build_model

SPEC = ModelSpec(2, 1, 1, "group", (28, 28))


def test_the_filters_are_not_state_only_the_trainable_cnn_is():
    model = build_model("scatter", SPEC, 0)
    state = model.state_dict()
    assert state and not any(key.startswith("scattering") for key in state)
    assert set(state) == {name for name, _ in model.named_parameters()}  # no stray buffers
    assert sum(p.numel() for p in model.parameters()) < 50_000


def test_the_same_seed_gives_the_same_network_and_the_cache_changes_no_output():
    x = torch.rand(6, 1, 28, 28)
    cached = build_model("scatter", SPEC, 0)
    before = len(cached._cache)  # build_model's dry run at the input size
    first = cached(x)
    again = cached(x[[5, 0, 3]])  # served from the cache, in another order
    fresh = build_model("scatter", SPEC, 0)
    torch.testing.assert_close(fresh(x), first)
    torch.testing.assert_close(again, first[[5, 0, 3]])
    assert len(cached._cache) == before + 6


def test_scattering_is_fixed_no_gradient_reaches_the_filters_or_the_input():
    model = build_model("scatter", SPEC, 0)
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is None
    assert all(p.grad is not None for p in model.parameters())


def test_it_refuses_what_it_cannot_take():
    with pytest.raises(ConfigError, match="needs 2D images"):
        build_model("scatter", ModelSpec(3, 1, 1, "group", (8, 8, 8)), 0)
    with pytest.raises(ConfigError, match="needs 2D images"):
        build_model("scatter", ModelSpec(0, 13, 1, "group"), 0)


def test_opacus_computes_per_sample_gradients_of_the_cnn():
    from opacus import GradSampleModule

    model = GradSampleModule(build_model("scatter", SPEC, 0))
    x = torch.rand(5, 1, 28, 28)
    model(x).sum().backward()
    for p in model.parameters():
        assert p.grad_sample.shape[0] == 5
