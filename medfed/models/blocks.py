"""A network as an ordered list of blocks, and its three parts for U-shaped split learning.

A model can be split when it is an nn.Sequential (mlp) or offers `blocks()` (the cnn): modules
whose composition, in order, is its forward pass. `SplitLayout` cuts that list into head (the first
`head` blocks), middle and tail (the last `tail` blocks), each an nn.Sequential sharing the model's
own modules, and maps state-dict keys between the parts' names ("head.0.conv.weight") and the
whole model's ("features.0.conv.weight"), so the parts assemble into the model every other part of
medfed scores, exports and explains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from medfed.errors import ConfigError
from medfed.types import StateDict

HEAD, MIDDLE, TAIL = "head", "middle", "tail"
SITE_PARTS = (HEAD, TAIL)  # what a site keeps; the middle runs at the server


@runtime_checkable
class HasBlocks(Protocol):
    def blocks(self) -> list[nn.Module]: ...


def model_blocks(model: nn.Module) -> list[nn.Module] | None:
    """The model's ordered blocks, or None if it has no such layout (MONAI's ResNet, DenseNet)."""
    if isinstance(model, nn.Sequential):
        return list(model)
    if isinstance(model, HasBlocks):
        return model.blocks()
    return None


@dataclass(frozen=True)
class SplitLayout:
    """One model cut after its first `head` blocks and before its last `tail` blocks."""

    parts: dict[str, nn.Sequential]  # head, middle, tail
    to_whole: dict[str, str]  # part key ("head.0.conv.weight") -> the whole model's key

    @classmethod
    def of(cls, model: nn.Module, head: int, tail: int) -> SplitLayout:
        blocks = model_blocks(model)
        if blocks is None:
            raise ConfigError(f"split learning needs a model made of an ordered list of blocks "
                              f"(cnn, mlp); {type(model).__name__} has none")
        if head < 1 or tail < 1 or head + tail >= len(blocks):
            raise ConfigError(f"--cut {head},{tail} must keep at least one block at each end and "
                              f"leave one for the server: head + tail < {len(blocks)} blocks")
        spans = {HEAD: blocks[:head], MIDDLE: blocks[head:len(blocks) - tail],
                 TAIL: blocks[len(blocks) - tail:]}
        names = {id(m): name for name, m in model.named_modules()}
        to_whole = {}
        for part, span in spans.items():
            for index, block in enumerate(span):
                # A block that is not one of the model's modules (the cnn's Flatten) has no state.
                prefix = names.get(id(block))
                for key in block.state_dict():
                    to_whole[f"{part}.{index}.{key}"] = f"{prefix}.{key}" if prefix else key
        return cls({p: nn.Sequential(*span) for p, span in spans.items()}, to_whole)

    def part_keys(self, *parts: str) -> frozenset[str]:
        return frozenset(k for k in self.to_whole if k.split(".", 1)[0] in parts)

    def from_whole(self, whole: StateDict, *parts: str) -> StateDict:
        """The named parts' tensors, under the parts' names, taken from a whole model's state."""
        return {k: whole[self.to_whole[k]] for k in self.part_keys(*parts)}

    def to_whole_state(self, state: StateDict) -> StateDict:
        """Part-named tensors (all three parts together) under the whole model's names."""
        return {self.to_whole[k]: v for k, v in state.items()}

    def cut_shapes(self, sample_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per-sample shapes at the first and second cut, from a dry pass of one zero sample
        (in eval mode: batch statistics of one sample mean nothing)."""
        modes = [(m, m.training) for m in self.parts.values()]
        try:
            with torch.no_grad():
                for m, _ in modes:
                    m.eval()
                first = self.parts[HEAD](torch.zeros(1, *sample_shape))
                second = self.parts[MIDDLE](first)
        finally:
            for m, mode in modes:
                m.train(mode)
        return tuple(first.shape[1:]), tuple(second.shape[1:])
