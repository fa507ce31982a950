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
    check_state(update.state, reference)


def check_state(state: StateDict, reference: StateDict) -> None:
    """Raise IncompatibleUpdate naming the first way `state` does not fit `reference`'s model.
    Used both ways: the server checks a site's update, a site checks the coordinator's model."""
    missing = reference.keys() - state.keys()
    extra = state.keys() - reference.keys()
    if missing or extra:
        raise IncompatibleUpdate(f"keys differ from the global model: missing {sorted(missing)[:3]}, "
                                 f"unexpected {sorted(extra)[:3]}")
    for key, expected in reference.items():
        got = state[key]
        if got.shape != expected.shape:
            raise IncompatibleUpdate(f"{key}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
        if got.dtype != expected.dtype:
            raise IncompatibleUpdate(f"{key}: dtype {got.dtype}, expected {expected.dtype}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise IncompatibleUpdate(f"{key}: contains NaN or Inf")
