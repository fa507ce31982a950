"""One training step of the default cnn at one thread, under memory layouts and norm layers.

    .venv/bin/python benchmarks/step_speed.py [SIDE] [CHANNELS]

The demo's step (cnn, 32-px grey images, batch 32, Adam, cross-entropy) with instance norm or
batch norm, contiguous or channels-last, and instance norm written out so that it can stay
channels-last. Every variant is built once and they take turns, 8 times 20 steps each; the best
time of each is printed (ms per step), so a slow moment of the host hits them all alike.
Run it alone: a second busy process on 2 cores doubles every figure.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medfed.models.cnn import SmallCNN

TURNS, STEPS, BATCH = 8, 20, 32


class WrittenInstanceNorm(nn.Module):
    """Instance norm from var_mean: keeps the input's memory layout (torch's own copies to
    contiguous)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
        scale = torch.rsqrt(var + 1e-5) * self.weight.view(1, -1, 1, 1)
        return (x - mean) * scale + self.bias.view(1, -1, 1, 1)


def written_out(model: nn.Module) -> nn.Module:
    for name, child in model.named_children():
        if isinstance(child, nn.InstanceNorm2d):
            setattr(model, name, WrittenInstanceNorm(child.num_features))
        else:
            written_out(child)
    return model


def step_of(norm: str, channels_last: bool, side: int, channels: int, written: bool = False
            ) -> Callable[[], None]:
    torch.manual_seed(0)
    model = SmallCNN(2, channels, 2, norm)
    if written:
        written_out(model)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    x = torch.randn(BATCH, channels, side, side).contiguous(memory_format=layout)
    y = torch.randint(0, 2, (BATCH,))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    loss = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss(model(x), y).backward()
        optimizer.step()
    for _ in range(5):  # warm-up: oneDNN picks its kernels on the first calls
        step()
    return step


def main() -> None:
    side = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    channels = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    torch.set_num_threads(1)
    variants = {"instance norm, contiguous": step_of("instance", False, side, channels),
                "instance norm, channels-last": step_of("instance", True, side, channels),
                "instance norm written out, channels-last": step_of("instance", True, side, channels,
                                                                    written=True),
                "batch norm, contiguous": step_of("batch", False, side, channels),
                "batch norm, channels-last": step_of("batch", True, side, channels)}
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(TURNS):
        for name, step in variants.items():
            start = time.perf_counter()
            for _ in range(STEPS):
                step()
            best[name] = min(best[name], (time.perf_counter() - start) / STEPS * 1000)
    for name, ms in best.items():
        print(f"{name:45s} {ms:6.1f} ms")


if __name__ == "__main__":
    main()
