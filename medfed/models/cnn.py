"""The default network: a small, fast CNN for 2D or 3D images (an epoch of PneumoniaMNIST in seconds).

Three convolution stages (w, 2w, 4w channels; w = 16 by default, about 70k parameters) of MONAI
Convolution blocks (conv, norm, ReLU), max-pooling between them and global average pooling before
the classifier. Parameters grow as w squared: w = 60 gives about 1M.
"""

from __future__ import annotations

from monai.networks.blocks import Convolution
from monai.networks.layers import Pool
from torch import nn

from medfed.config import CNN_WIDTH
from medfed.models.norm import monai_norm

WIDTH = CNN_WIDTH  # channels of the first stage; the config's default, so the two cannot drift


class SmallCNN(nn.Module):
    def __init__(self, spatial_dims: int, in_channels: int, num_outputs: int, norm: str,
                 width: int = WIDTH) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, stage_width in enumerate((width, 2 * width, 4 * width)):
            if stage > 0:
                layers.append(Pool[Pool.MAX, spatial_dims](kernel_size=2))
            for _ in range(2 if stage else 1):
                layers.append(Convolution(spatial_dims, channels, stage_width, kernel_size=3,
                                          act="relu", norm=monai_norm(norm, stage_width)))
                channels = stage_width
        self.features = nn.Sequential(*layers)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.head = nn.Linear(channels, num_outputs)

    def forward(self, x):  # (B, C, *spatial) -> (B, num_outputs)
        return self.head(self.pool(self.features(x)).flatten(1))

    def blocks(self) -> list[nn.Module]:
        """The network as an ordered list of modules whose composition is forward(): what split
        learning cuts (models/blocks.py)."""
        return [*self.features, self.pool, nn.Flatten(1), self.head]
