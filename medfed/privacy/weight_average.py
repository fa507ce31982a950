"""An exponential moving average of the weights along a site's noisy steps (De et al. 2022,
section 3.1; Polyak averaging): the noise of successive steps partly cancels in the average.

It is post-processing: the average is a fixed function of the weights the site starts the round
with (the global model, which the server already has) and the weights after each noisy step, so
what it releases is covered by the same epsilon. It never reads a gradient or an image.
"""

from __future__ import annotations

import torch
from torch import nn

from medfed.types import StateDict


class WeightAverage:
    """EMA with De et al.'s warm-up: decay min(d, (1 + t) / (10 + t)) at the t-th update, so a
    round's few first steps are not drowned by the starting weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.average: StateDict = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def update(self, model: nn.Module) -> None:
        """After each noisy step: fold the model's new weights into the average."""
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for name, value in model.state_dict().items():
                if value.is_floating_point():
                    self.average[name].mul_(d).add_(value.detach(), alpha=1 - d)
                else:  # counters and other integer buffers: the latest value, never a mean
                    self.average[name].copy_(value)
        self.updates += 1

    def state(self) -> StateDict:
        return {k: v.detach().cpu().clone() for k, v in self.average.items()}
