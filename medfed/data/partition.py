"""Split a pool of samples into K sites. Every function takes its random generator as an argument.

Each returns one index array per site (sorted), and raises DataError for impossible requests.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from medfed.errors import DataError

MIN_SITE_SIZE = 2  # a site needs one training and one validation sample
MAX_DRAWS = 100


def iid(n: int, n_sites: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniformly random, near-equal shares."""
    _check_count(n, n_sites)
    return _sorted(np.array_split(rng.permutation(n), n_sites))


def quantity(n: int, sizes: Sequence[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Quantity skew: site k gets exactly sizes[k] samples (they may sum to less than n)."""
    _check_count(n, len(sizes))
    counts = np.asarray(sizes, dtype=int)
    if np.any(counts < MIN_SITE_SIZE):
        raise DataError(f"every site needs at least {MIN_SITE_SIZE} samples, got sizes {list(sizes)}")
    if counts.sum() > n:
        raise DataError(f"sizes {list(sizes)} sum to {counts.sum()}, more than the {n} samples "
                        "available; give smaller sizes or proportions")
    return _sorted(np.split(rng.permutation(n)[: counts.sum()], np.cumsum(counts)[:-1]))


def counts_from_proportions(n: int, proportions: Sequence[float]) -> list[int]:
    """Relative sizes -> counts summing to n (largest remainders get the leftover samples), so
    the radiology paper's 20k/25k/15k/30k/22k sites keep their ratios on a smaller pool."""
    shares = np.asarray(proportions, float) / sum(proportions) * n
    counts = np.floor(shares).astype(int)
    counts[np.argsort(counts - shares)[: n - counts.sum()]] += 1
    return counts.tolist()


def dirichlet(labels: np.ndarray, n_sites: int, alpha: float, rng: np.random.Generator,
              proportions: Sequence[float] = ()) -> list[np.ndarray]:
    """Label skew drawn from a Dirichlet; alpha -> 0 gives one class per site, large alpha iid.

    Without proportions, each class is shared among the sites in Dir(alpha) proportions (Hsu et
    al. 2019), so site sizes vary too. With proportions, site sizes are fixed to them (quantity
    skew) and each site's class mixture is drawn from Dir(alpha * C * class prior), so both skews
    are set independently (the radiology paper's 20:25:15:30:22 sites with label skew).
    """
    if alpha <= 0:
        raise DataError(f"dirichlet alpha must be > 0, got {alpha}")
    labels = np.asarray(labels)
    _check_count(len(labels), n_sites)
    if proportions and len(proportions) != n_sites:
        raise DataError(f"{len(proportions)} proportions for {n_sites} sites")
    # A very skewed draw can leave a site (nearly) empty; redraw a bounded number of times from the
    # same generator, so the result stays a deterministic function of the seed.
    for _ in range(MAX_DRAWS):
        if proportions:
            result = _mixture_draw(labels, counts_from_proportions(len(labels), proportions), alpha, rng)
        else:
            result = _dirichlet_draw(labels, np.full(n_sites, alpha), rng)
        if min(len(p) for p in result) >= MIN_SITE_SIZE:
            return result
    raise DataError(f"dirichlet alpha={alpha} left a site with fewer than {MIN_SITE_SIZE} samples "
                    f"in {MAX_DRAWS} draws; raise --alpha or use fewer sites")


def _mixture_draw(labels: np.ndarray, counts: list[int], alpha: float, rng: np.random.Generator
                  ) -> list[np.ndarray]:
    """Fixed site sizes; each site draws its class mixture, then takes that many of each class
    from what is left (a class that runs out is made up from the classes that remain)."""
    classes = np.unique(labels)
    remaining = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
    prior = np.array([len(r) for r in remaining], float) / len(labels)
    parts: list[np.ndarray] = [np.empty(0, int)] * len(counts)
    for site in rng.permutation(len(counts)):  # random order: no site always gets the leftovers
        mixture = rng.dirichlet(alpha * len(classes) * prior)
        wanted = rng.multinomial(counts[site], mixture)
        taken = []
        for c, n in enumerate(wanted):
            taken += remaining[c][:n]
            del remaining[c][:n]
        while len(taken) < counts[site]:  # classes that ran out: fill from the largest left
            c = int(np.argmax([len(r) for r in remaining]))
            taken.append(remaining[c].pop())
        parts[site] = np.array(taken, dtype=int)
    return _sorted(parts)


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


def site_rng(seed: int, tag: int, name: str) -> np.random.Generator:
    """A site's own random stream for one purpose (tag): a function of the seed and the site's
    name only, so a site draws the same split whether it is loaded alone (deployment) or with
    every other site (simulation), and whatever the other sites are called."""
    return np.random.default_rng(np.random.SeedSequence([seed, tag, zlib.crc32(name.encode())]))


def natural(groups: np.ndarray | None, n_sites: int | None) -> list[np.ndarray]:
    """One site per natural group (hospital, scanner), ordered by group index; n_sites None
    takes the count from the data."""
    if groups is None:
        raise DataError("this data set has no natural sites; use --partition iid, dirichlet or "
                        "quantity")
    names = np.unique(groups)
    if n_sites is not None and len(names) != n_sites:
        raise DataError(f"the data has {len(names)} natural sites but --sites is {n_sites}; "
                        f"set --sites {len(names)} or leave --sites out")
    return [np.flatnonzero(groups == g) for g in names]


def train_val_split(index: np.ndarray, val_fraction: float, rng: np.random.Generator,
                    units: np.ndarray | None = None, strata: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A site's own train / validation split; both keep at least one sample (or unit).

    units (one per sample of the whole pool: patient or study) keeps each unit's images together.
    strata (one label per sample of the whole pool; multi-label: 'any finding') makes the split
    stratified: each stratum gives the validation split its share of the units, by largest
    remainder, so a rare class is not left out of validation by chance. A unit's stratum is the
    largest of its samples' (for 0/1 strata: positive if any image is)."""
    if len(index) < 2:
        raise DataError(f"a site with {len(index)} sample cannot be split into train and "
                        "validation; use fewer sites or a larger data set")
    owner = units[index] if units is not None else index
    ids, inverse = np.unique(owner, return_inverse=True)
    if len(ids) < 2:
        raise DataError(f"a site whose {len(index)} images all belong to one patient or study cannot "
                        "be split into train and validation; use fewer sites or more data")
    unit_strata = np.zeros(len(ids), dtype=np.int64)
    if strata is not None:
        np.maximum.at(unit_strata, inverse, np.asarray(strata)[index].astype(np.int64))
    n_val = min(max(1, round(len(ids) * val_fraction)), len(ids) - 1)
    is_val = np.isin(owner, _stratified_choice(ids, unit_strata, n_val, rng))
    return np.sort(index[~is_val]), np.sort(index[is_val])


def _stratified_choice(ids: np.ndarray, strata: np.ndarray, n: int, rng: np.random.Generator
                       ) -> np.ndarray:
    """n of ids, each stratum (in sorted order) giving its largest-remainder share at random."""
    values, sizes = np.unique(strata, return_counts=True)
    quotas = counts_from_proportions(n, sizes.tolist())
    chosen = [rng.permutation(ids[strata == v])[:q] for v, q in zip(values, quotas, strict=True)]
    return np.concatenate(chosen)


def _check_count(n: int, n_sites: int) -> None:
    if n_sites < 1:
        raise DataError(f"need at least one site, got {n_sites}")
    if n_sites > n:
        raise DataError(f"cannot split {n} samples into {n_sites} sites")


def _sorted(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(p) for p in parts]
