"""The built-in default: synthetic chest-radiograph-like images from several simulated hospitals.

Every image is drawn from a seed: a bright body, two dark lung fields, a heart shadow, faint ribs
and vessels. Positive images carry a finding inside a lung, either a diffuse opacity or a small
nodule, with a random strength (some are faint, so the task is learnable but not trivial). Each
site has its own "scanner" (gamma, contrast, brightness, noise, blur) and its own prevalence, so the
sites differ the way hospitals do. Images are stored as uint8, like an exported radiograph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medfed.data.dataset import DataSource, Samples
from medfed.data.partition import counts_from_proportions
from medfed.types import Task

IMAGE_SIZE = 32
NODULE_SHARE = 0.4  # of positive images; the rest carry a diffuse opacity
# Site proportions of the radiology paper's five sites (20k/25k/15k/30k/22k), repeated for K > 5.
DEFAULT_PROPORTIONS = (20, 25, 15, 30, 22)


@dataclass(frozen=True)
class Scanner:
    gamma: float
    contrast: float
    brightness: float
    noise: float  # standard deviation of additive noise, in [0, 1] intensity units
    blur: float  # Gaussian blur sigma in pixels
    prevalence: float  # share of positive images at this site


def site_names(n_sites: int) -> tuple[str, ...]:
    if n_sites <= 26:
        return tuple(f"site-{chr(ord('a') + k)}" for k in range(n_sites))
    return tuple(f"site-{k + 1:02d}" for k in range(n_sites))


def random_scanner(rng: np.random.Generator) -> Scanner:
    return Scanner(gamma=float(rng.uniform(0.75, 1.35)), contrast=float(rng.uniform(0.75, 1.25)),
                   brightness=float(rng.uniform(-0.1, 0.1)), noise=float(rng.uniform(0.02, 0.09)),
                   blur=float(rng.uniform(0.0, 1.0)), prevalence=float(rng.uniform(0.2, 0.6)))


def load_synthetic(n_sites: int, n_pool: int, n_test: int, seed: int,
                   sizes: Sequence[int] = (), proportions: Sequence[float] = ()) -> DataSource:
    """K sites' training/validation images (exactly `sizes`, or n_pool shared by `proportions`)
    and a held-out test set shared in the same proportions, both grouped by site."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E7]))
    shares = sizes or proportions or [DEFAULT_PROPORTIONS[k % 5] for k in range(n_sites)]
    pool_counts = list(sizes) or counts_from_proportions(n_pool, shares)
    test_counts = counts_from_proportions(n_test, shares)
    pool_parts, test_parts = [], []
    for k in range(n_sites):
        scanner = random_scanner(rng)
        pool_parts.append(_site_images(scanner, max(2, pool_counts[k]), rng))
        test_parts.append(_site_images(scanner, max(1, test_counts[k]), rng))
    return DataSource(
        name="synthetic", task=Task.BINARY, class_names=("normal", "finding"),
        pool=Samples.concat(pool_parts), test=Samples.concat(test_parts), max_value=255.0,
        groups=_group_labels(pool_parts), test_groups=_group_labels(test_parts),
        group_names=site_names(n_sites))


def _group_labels(parts: list[Samples]) -> np.ndarray:
    return np.concatenate([np.full(len(p), k) for k, p in enumerate(parts)])


def _site_images(scanner: Scanner, n: int, rng: np.random.Generator) -> Samples:
    labels = (rng.random(n) < scanner.prevalence).astype(np.int64)
    anatomy = _anatomy(n, rng)
    findings = _findings(labels, rng)
    images = _acquire(anatomy + findings, scanner, rng)
    return Samples(images[:, None], labels)  # (N, 1, H, W) uint8


def _grid() -> tuple[np.ndarray, np.ndarray]:
    axis = np.linspace(-1, 1, IMAGE_SIZE, dtype=np.float32)
    return np.meshgrid(axis, axis, indexing="ij")  # (H, W) each: row (y), column (x)


def _ellipse(yy, xx, cy, cx, ry, rx, softness=0.08):
    """Soft-edged ellipse masks; centres and radii are (N, 1, 1) arrays."""
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return 1 / (1 + np.exp(np.minimum((r - 1) / softness, 50)))


def _anatomy(n: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid()
    col = lambda low, high: rng.uniform(low, high, (n, 1, 1)).astype(np.float32)  # noqa: E731
    body = 0.55 * _ellipse(yy, xx, col(-0.05, 0.05), col(-0.05, 0.05), col(0.95, 1.05), col(0.8, 0.9))
    dy, scale = col(-0.08, 0.08), col(0.9, 1.1)
    lungs = sum(_ellipse(yy, xx, -0.05 + dy, side * col(0.36, 0.42), 0.6 * scale, 0.27 * scale)
                for side in (-1, 1))
    heart = 0.25 * _ellipse(yy, xx, 0.25 + dy, col(0.05, 0.15), col(0.22, 0.3), col(0.2, 0.28))
    ribs = 0.06 * (1 + np.cos(col(14, 18) * yy + col(0, 2 * np.pi))) * lungs
    vessels = _blobs(n, rng, count=3, sigma=(0.03, 0.05), amplitude=(0.05, 0.12), centre=0.15)
    return body - 0.4 * lungs + heart + ribs + vessels * lungs


def _blobs(n, rng, count, sigma, amplitude, centre, lung_side=None):
    """Gaussian spots near the hila (vessels) or inside a lung (findings)."""
    yy, xx = _grid()
    out = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    for _ in range(count):
        side = lung_side if lung_side is not None else rng.choice([-1, 1], (n, 1, 1))
        cx = side * rng.uniform(centre, centre + 0.3, (n, 1, 1))
        cy = rng.uniform(-0.45, 0.35, (n, 1, 1))
        s = rng.uniform(*sigma, (n, 1, 1))
        a = rng.uniform(*amplitude, (n, 1, 1))
        out += a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s**2))
    return out


def _findings(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A diffuse opacity or a nodule in one lung of each positive image; zero elsewhere."""
    n = len(labels)
    side = rng.choice([-1, 1], (n, 1, 1))
    opacity = _blobs(n, rng, 1, sigma=(0.1, 0.22), amplitude=(0.15, 0.4), centre=0.25,
                     lung_side=side)
    nodule = _blobs(n, rng, 1, sigma=(0.035, 0.06), amplitude=(0.25, 0.5), centre=0.25,
                    lung_side=side)
    is_nodule = rng.random((n, 1, 1)) < NODULE_SHARE
    return np.where(is_nodule, nodule, opacity) * labels[:, None, None]


def _acquire(signal: np.ndarray, scanner: Scanner, rng: np.random.Generator) -> np.ndarray:
    """The site's scanner: intensity response, noise, blur, then 8-bit export."""
    img = np.clip(signal, 0, 1) ** scanner.gamma
    img = scanner.contrast * (img - 0.5) + 0.5 + scanner.brightness
    img = img + rng.normal(0, scanner.noise, img.shape)
    if scanner.blur > 0.05:
        from scipy.ndimage import gaussian_filter  # on first use: importing medfed stays light

        img = gaussian_filter(img, sigma=(0, scanner.blur, scanner.blur))
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
