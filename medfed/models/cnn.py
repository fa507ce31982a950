"""The default network: a small, fast CNN for 2D or 3D images (an epoch of PneumoniaMNIST in seconds).

Three convolution stages (w, 2w, 4w channels; w = 16 by default, about 70k parameters) of
convolution blocks (conv, norm, ReLU), max-pooling between them and global average pooling before
the classifier. Parameters grow as w squared: w = 60 gives about 1M.

The blocks are MONAI's Convolution block (act="relu") rebuilt from torch layers, with its layout and
state-dict keys (`features.0.conv.weight`, `features.0.adn.N.weight`, ...) and the same
initialisation from the same seed (tests/models/test_cnn_matches_monai.py), so models saved before
still load; importing MONAI would cost seconds at the start of every run, site process and worker.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from medfed.config import CNN_WIDTH
from medfed.models.norm import norm_layer

WIDTH = CNN_WIDTH  # channels of the first stage; the config's default, so the two cannot drift


CONV = {2: nn.Conv2d, 3: nn.Conv3d}
MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
MEAN_POOL = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


class ConvBlock(nn.Sequential):
    """conv (3 wide, padding 1), norm, ReLU: MONAI's Convolution(act="relu", norm=norm)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str) -> None:
        conv = CONV[spatial_dims](in_channels, out_channels, kernel_size=3, padding=1)
        adn = nn.Sequential(OrderedDict(N=norm_layer(norm, spatial_dims, out_channels), A=nn.ReLU()))
        super().__init__(OrderedDict(conv=conv, adn=adn))


class SmallCNN(nn.Module):
    def __init__(self, spatial_dims: int, in_channels: int, num_outputs: int, norm: str,
                 width: int = WIDTH) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, stage_width in enumerate((width, 2 * width, 4 * width)):
            if stage > 0:
                layers.append(MAX_POOL[spatial_dims](kernel_size=2))
            for _ in range(2 if stage else 1):
                layers.append(ConvBlock(spatial_dims, channels, stage_width, norm))
                channels = stage_width
        self.features = nn.Sequential(*layers)
        self.pool = MEAN_POOL[spatial_dims](1)
        self.head = nn.Linear(channels, num_outputs)

    def forward(self, x):  # (B, C, *spatial) -> (B, num_outputs)
        return self.head(self.pool(self.features(x)).flatten(1))

    def blocks(self) -> list[nn.Module]:
        """The network as an ordered list of modules whose composition is forward(): what split
        learning cuts (models/blocks.py)."""
        return [*self.features, self.pool, nn.Flatten(1), self.head]
