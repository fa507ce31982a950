"""Byzantine-robust aggregation: pure functions over a list of state dicts keyed by name.

Every function here needs all of a round's updates at once (an order statistic or a pairwise
distance cannot be kept as a running sum), so the server's memory grows with the number of sites;
aggregators.py says which aggregators stream and which do not.

- Coordinate-wise median and trimmed mean (Yin et al., "Byzantine-Robust Distributed Learning:
  Towards Optimal Statistical Rates", ICML 2018, Definitions 1 and 2): unweighted on purpose, since
  a sample count is the attacker's to claim.
- Krum and Multi-Krum (Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
  Gradient Descent", NeurIPS 2017, Section 4): score(i) = sum of squared distances from x_i to its
  n - f - 2 nearest neighbours; Krum keeps the best-scored update, Multi-Krum averages the m best.
- Norm bounding (Sun et al., "Can You Really Backdoor Federated Learning?", 2019): each update's
  change x_k - x is scaled down to an L2 norm of at most M.

Integer tensors (BatchNorm's num_batches_tracked) are counters: the result keeps their maximum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from medfed.types import StateDict


def coordinate_median(states: Sequence[StateDict]) -> StateDict:
    """The median of every coordinate over the updates (the mean of the middle two when n is even)."""
    def median(stacked: torch.Tensor) -> torch.Tensor:
        ordered, n = stacked.sort(dim=0).values, stacked.shape[0]
        return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return _coordinatewise(states, median)


def trimmed_mean(states: Sequence[StateDict], trim: int) -> StateDict:
    """Per coordinate, drop the `trim` largest and `trim` smallest values and average the rest.
    With too few updates to drop 2 * trim, as many are dropped as leave at least one (the median)."""
    if trim < 0:
        raise ValueError(f"trim must be >= 0, got {trim}")

    def mean_of_middle(stacked: torch.Tensor) -> torch.Tensor:
        n = stacked.shape[0]
        k = min(trim, (n - 1) // 2)
        return stacked.sort(dim=0).values[k:n - k].mean(dim=0)
    return _coordinatewise(states, mean_of_middle)


def krum_scores(states: Sequence[StateDict], byzantine: int) -> torch.Tensor:
    """(n,) Krum scores; lower is more central. Each update is scored against its n - f - 2 nearest
    neighbours (at least one), so the function is defined for any n >= 2; the guarantee of the
    paper needs n >= 2f + 3."""
    n = len(states)
    if n < 2:
        return torch.zeros(n, dtype=torch.float64)
    distances = pairwise_sq_distances(states)  # (n, n)
    neighbours = min(max(n - byzantine - 2, 1), n - 1)
    # Column 0 of each sorted row is the distance to itself (0); the next `neighbours` count.
    return distances.sort(dim=1).values[:, 1:neighbours + 1].sum(dim=1)


def krum_select(states: Sequence[StateDict], byzantine: int, keep: int = 1) -> list[int]:
    """Indices of the `keep` best-scored updates, best first (ties go to the earlier update)."""
    if not states:
        raise ValueError("no updates to choose from")
    scores = krum_scores(states, byzantine)
    order = sorted(range(len(states)), key=lambda i: (float(scores[i]), i))
    return order[:max(1, min(keep, len(states)))]


def pairwise_sq_distances(states: Sequence[StateDict]) -> torch.Tensor:
    """(n, n) squared L2 distances between whole models (every float tensor), built one key at a
    time so that only one key of every update is ever flattened at once."""
    n = len(states)
    total = torch.zeros(n, n, dtype=torch.float64)
    for key in _float_keys(states[0]):
        flat = torch.stack([s[key].detach().reshape(-1).to(torch.float64) for s in states])
        total += torch.cdist(flat, flat).square()
    return total


def update_norm(state: StateDict, reference: StateDict) -> float:
    """L2 norm of the change state - reference over every float tensor."""
    squares = sum(float((state[k].to(torch.float64) - reference[k].to(torch.float64)).square().sum())
                  for k in _float_keys(state))
    return squares ** 0.5


def clip_to_norm(state: StateDict, reference: StateDict, bound: float) -> StateDict:
    """reference + (state - reference) * min(1, bound / ||state - reference||)."""
    norm = update_norm(state, reference)
    if norm <= bound:
        return state
    scale = bound / norm
    return {k: (reference[k] + (v.to(torch.float64) - reference[k].to(torch.float64)) * scale
                ).to(v.dtype) if _is_float(v) else v
            for k, v in state.items()}


def _coordinatewise(states: Sequence[StateDict], reduce: Callable[[torch.Tensor], torch.Tensor]
                    ) -> StateDict:
    if not states:
        raise ValueError("no updates to aggregate")
    out = {}
    for key, first in states[0].items():
        stacked = torch.stack([s[key].detach() for s in states])
        out[key] = (reduce(stacked.to(torch.float64)).to(first.dtype) if _is_float(first)
                    else stacked.max(dim=0).values)
    return out


def _float_keys(state: StateDict) -> list[str]:
    return [k for k, v in state.items() if _is_float(v)]


def _is_float(value: torch.Tensor) -> bool:
    return value.is_floating_point() or value.is_complex()
