"""Every incoming update is checked against the global model before it touches aggregation."""

from __future__ import annotations

import torch

from medfed.errors import IncompatibleUpdate
from medfed.types import StateDict, Update


def check_update(update: Update, reference: StateDict) -> None:
    """Raise IncompatibleUpdate naming the first problem: keys, shapes, dtypes, values, count."""
    if isinstance(update.n_samples, bool) or not isinstance(update.n_samples, int) \
            or update.n_samples <= 0:
        raise IncompatibleUpdate(f"sample count must be a positive integer, got {update.n_samples!r}")
    missing = reference.keys() - update.state.keys()
    extra = update.state.keys() - reference.keys()
    if missing or extra:
        raise IncompatibleUpdate(f"keys differ from the global model: missing {sorted(missing)[:3]}, "
                                 f"unexpected {sorted(extra)[:3]}")
    for key, expected in reference.items():
        got = update.state[key]
        if got.shape != expected.shape:
            raise IncompatibleUpdate(f"{key}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
        if got.dtype != expected.dtype:
            raise IncompatibleUpdate(f"{key}: dtype {got.dtype}, expected {expected.dtype}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise IncompatibleUpdate(f"{key}: contains NaN or Inf")
