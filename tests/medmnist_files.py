"""Tiny files in the MedMNIST v2 .npz format, for the loader and end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# kind -> (file name, image shape after N, label columns, number of classes)
MEDMNIST_KINDS: dict[str, tuple[str, tuple[int, ...], int, int]] = {
    "grey2d": ("pneumoniamnist.npz", (28, 28), 1, 2),
    "rgb": ("retinamnist_28.npz", (28, 28, 3), 1, 5),
    "3d": ("adrenalmnist3d.npz", (28, 28, 28), 1, 2),
    "multilabel": ("chestmnist.npz", (28, 28), 14, 2),
}


def write_medmnist(path: Path, image_shape: tuple[int, ...], label_columns: int, n_classes: int,
                   sizes: tuple[int, int, int] = (20, 6, 10), seed: int = 0
                   ) -> dict[str, np.ndarray]:
    """An .npz with MedMNIST's official keys; every class (every finding) occurs in every split."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
        if label_columns == 1:
            labels = (np.arange(n) % n_classes).reshape(n, 1)
        else:
            labels = rng.integers(0, 2, (n, label_columns))
            labels[0], labels[1] = 0, 1  # both values present in every finding
        arrays[f"{split}_labels"] = labels.astype(np.uint8)
    np.savez(path, **arrays)
    return arrays
