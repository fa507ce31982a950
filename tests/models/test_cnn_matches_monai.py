"""The default cnn, built from torch layers, is the network it was when built from MONAI's
Convolution blocks: the same state-dict keys, the same initial weights from the same seed, the same
outputs (so models and checkpoints saved before still load and runs repeat).

Hand mutations that make a test here fail: bias=False on the conv; GroupNorm(4, ...); ReLU before
the norm; build the norm before the conv (another draw order); rename `adn` or `N`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medfed.models.cnn import SmallCNN
from medfed.models.norm import monai_norm

blocks = pytest.importorskip("monai.networks.blocks")
layers = pytest.importorskip("monai.networks.layers")


class MonaiSmallCNN(nn.Module):
    """The reference: medfed's cnn as it was built from MONAI blocks."""

    def __init__(self, spatial_dims: int, in_channels: int, num_outputs: int, norm: str,
                 width: int) -> None:
        super().__init__()
        Pool = layers.Pool
        parts: list[nn.Module] = []
        channels = in_channels
        for stage, stage_width in enumerate((width, 2 * width, 4 * width)):
            if stage > 0:
                parts.append(Pool[Pool.MAX, spatial_dims](kernel_size=2))
            for _ in range(2 if stage else 1):
                parts.append(blocks.Convolution(spatial_dims, channels, stage_width, kernel_size=3,
                                                act="relu", norm=monai_norm(norm)))
                channels = stage_width
        self.features = nn.Sequential(*parts)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.head = nn.Linear(channels, num_outputs)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


def built(cls: type[nn.Module], *args: object) -> nn.Module:
    torch.manual_seed(7)
    return cls(*args)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("norm", ["batch", "group", "instance"])
def test_the_cnn_equals_its_monai_build(dims, norm):
    ours, theirs = built(SmallCNN, dims, 2, 3, norm, 8), built(MonaiSmallCNN, dims, 2, 3, norm, 8)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(4, 2, *(12,) * dims)
    for mode in ("train", "eval"):
        getattr(ours, mode)(), getattr(theirs, mode)()
        assert torch.equal(ours(x), theirs(x))
