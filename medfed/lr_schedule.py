"""The local learning rate over the rounds ([training] lr_schedule), one rule for the sites and for
split learning's middle on the server."""

from __future__ import annotations

import math


def round_lr(lr: float, round_index: int, rounds: int, schedule: str) -> float:
    """The learning rate of round `round_index` (from 0) of `rounds`: constant, or cosine
    (lr * (1 + cos(pi r / R)) / 2), the decay FedAvg's convergence on non-IID data needs
    (Li et al., ICLR 2020)."""
    if schedule == "cosine":
        return lr * (1 + math.cos(math.pi * round_index / rounds)) / 2
    return lr
