"""Split a pool of samples into K sites. Every function takes its random generator as an argument.

Each returns one index array per site (sorted), and raises DataError for impossible requests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medfed.errors import DataError

MIN_SITE_SIZE = 2  # a site needs one training and one validation sample
MAX_DRAWS = 100


def iid(n: int, n_sites: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniformly random, near-equal shares."""
    _check_count(n, n_sites)
    return _sorted(np.array_split(rng.permutation(n), n_sites))


def quantity(n: int, sizes: Sequence[float], rng: np.random.Generator) -> list[np.ndarray]:
    """Quantity skew: explicit site sizes (counts summing to at most n) or proportions of n.

    Sizes whose sum exceeds n are read as proportions, e.g. the radiology paper's five sites of
    20k/25k/15k/30k/22k images on a smaller pool keep their ratios.
    """
    _check_count(n, len(sizes))
    counts = _counts_for(n, sizes)
    bounds = np.cumsum(counts)[:-1]
    return _sorted(np.split(rng.permutation(n)[: counts.sum()], bounds))


def dirichlet(labels: np.ndarray, n_sites: int, alpha: float, rng: np.random.Generator,
              sizes: Sequence[float] = ()) -> list[np.ndarray]:
    """Label skew: each class is shared among sites in proportions drawn from a Dirichlet.

    With equal sites the concentration is alpha for every site (Hsu et al. 2019). With target
    sizes s_k it is alpha * K * s_k / sum(s), so the expected site sizes follow s while alpha still
    sets the label skew.
    """
    if alpha <= 0:
        raise DataError(f"dirichlet alpha must be > 0, got {alpha}")
    labels = np.asarray(labels)
    _check_count(len(labels), n_sites)
    share = np.full(n_sites, 1 / n_sites) if not sizes else np.asarray(sizes, float) / sum(sizes)
    concentration = alpha * n_sites * share
    # A very skewed draw can leave a site (nearly) empty; redraw a bounded number of times from the
    # same generator, so the result stays a deterministic function of the seed.
    for _ in range(MAX_DRAWS):
        result = _dirichlet_draw(labels, concentration, rng)
        if min(len(p) for p in result) >= MIN_SITE_SIZE:
            return result
    raise DataError(f"dirichlet alpha={alpha} left a site with fewer than {MIN_SITE_SIZE} samples "
                    f"in {MAX_DRAWS} draws; raise --alpha or use fewer sites")


def _dirichlet_draw(labels: np.ndarray, concentration: np.ndarray, rng: np.random.Generator
                    ) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in concentration]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        proportions = rng.dirichlet(concentration)
        cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(int)
        for site, chunk in enumerate(np.split(members, cuts)):
            parts[site].append(chunk)
    return _sorted([np.concatenate(p) for p in parts])


def natural(groups: np.ndarray | None, n_sites: int) -> list[np.ndarray]:
    """One site per natural group (hospital, scanner), ordered by group index."""
    if groups is None:
        raise DataError("this data set has no natural sites; use --partition iid, dirichlet or "
                        "quantity")
    names = np.unique(groups)
    if len(names) != n_sites:
        raise DataError(f"the data has {len(names)} natural sites but --sites is {n_sites}; "
                        f"set --sites {len(names)}")
    return [np.flatnonzero(groups == g) for g in names]


def train_val_split(index: np.ndarray, val_fraction: float, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A site's own train / validation split; both keep at least one sample when possible."""
    if len(index) < 2:
        raise DataError(f"a site with {len(index)} sample cannot be split into train and "
                        "validation; use fewer sites or a larger data set")
    n_val = min(max(1, round(len(index) * val_fraction)), len(index) - 1)
    shuffled = rng.permutation(index)
    return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val])


def _counts_for(n: int, sizes: Sequence[float]) -> np.ndarray:
    sizes_arr = np.asarray(sizes, float)
    if np.any(sizes_arr <= 0):
        raise DataError(f"site sizes must be > 0, got {list(sizes)}")
    if sizes_arr.sum() <= n and np.all(sizes_arr == np.round(sizes_arr)):
        counts = sizes_arr.astype(int)
    else:
        counts = np.floor(sizes_arr / sizes_arr.sum() * n).astype(int)
    if np.any(counts == 0):
        raise DataError(f"sizes {list(sizes)} leave a site empty with {n} samples")
    return counts


def _check_count(n: int, n_sites: int) -> None:
    if n_sites < 1:
        raise DataError(f"need at least one site, got {n_sites}")
    if n_sites > n:
        raise DataError(f"cannot split {n} samples into {n_sites} sites")


def _sorted(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(p) for p in parts]
