"""Losses for ordinal grades (RetinaMNIST), tried against plain cross-entropy under model_choice.py.

    .venv/bin/python benchmarks/ordinal_losses.py DATA_FILE SEED sord:1      # soft ordinal labels
    .venv/bin/python benchmarks/ordinal_losses.py DATA_FILE SEED smooth:0.1  # label smoothing

model_choice.py's run (FedAvg with the defaults, every round kept, scored on validation and test)
with the training loss of multi-class and ordinal tasks replaced:
- sord:S: soft ordinal labels (Diaz & Marathe, CVPR 2019), cross-entropy against the target
  softmax(-S * (grade - true grade)^2), so a near miss costs less than a far one;
- smooth:E: cross-entropy with label smoothing E (Szegedy et al. 2016).
The evaluation loss (validation loss in the logs) is replaced alike; the score is the AUC.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import model_choice  # benchmarks/ is on the path when run as a script

from medfed.client import predictor, trainer
from medfed.types import Task


class SoftOrdinal(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        grades = torch.arange(logits.shape[1], device=logits.device, dtype=logits.dtype)
        distance = (grades[None, :] - y[:, None].to(logits.dtype)).pow(2)
        target = torch.softmax(-self.scale * distance, dim=1)
        return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


def loss_named(spec: str) -> nn.Module:
    kind, _, value = spec.partition(":")
    if kind == "sord":
        return SoftOrdinal(float(value or 1))
    if kind == "smooth":
        return nn.CrossEntropyLoss(label_smoothing=float(value or 0.1))
    raise SystemExit(f"unknown loss '{spec}'; valid: sord:S, smooth:E")


def main() -> None:
    loss = loss_named(sys.argv.pop(3))
    plain = predictor.loss_for
    replaced = lambda task: loss if task in (Task.ORDINAL, Task.MULTICLASS) else plain(task)
    trainer.loss_for = predictor.loss_for = replaced
    model_choice.main()


if __name__ == "__main__":
    main()
