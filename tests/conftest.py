"""Shared fixtures: tiny MedMNIST-format files made in tmp_path, and the optional shared data
folder.

Every test runs offline and fast. Torch gets one intra-op thread: on two CPU cores shared with other
work, two OpenMP threads per process oversubscribe the CPU and small models train several times
slower (measured ~7x on this machine under load); results do not depend on the thread count here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

from tests.medmnist_files import MEDMNIST_KINDS, write_medmnist

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)

settings.register_profile("medfed", deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("medfed")


@pytest.fixture
def medmnist_npz(tmp_path: Path) -> Callable[..., tuple[Path, dict[str, np.ndarray]]]:
    """make(kind, name=None, side=None, sizes=(20, 6, 10)) -> (path, the arrays written)."""

    def make(kind: str, name: str | None = None, side: int | None = None,
             sizes: tuple[int, int, int] = (20, 6, 10)) -> tuple[Path, dict[str, np.ndarray]]:
        file_name, shape, columns, classes = MEDMNIST_KINDS[kind]
        if side is not None:  # smaller images for tests that train
            shape = tuple(side if s == 28 else s for s in shape)
        path = tmp_path / (name or file_name)
        return path, write_medmnist(path, shape, columns, classes, sizes)

    return make


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """<repo>/../shared/data: real data sets, present on the project machine, absent elsewhere."""
    path = REPO / ".." / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder {path.resolve()} is absent (real data sets are optional)")
    return path


@pytest.fixture(scope="session")
def pneumoniamnist_file(shared_data: Path) -> Path:
    path = shared_data / "medmnist" / "pneumoniamnist.npz"
    if not path.is_file():
        pytest.skip(f"{path} is absent; PneumoniaMNIST is at https://zenodo.org/records/10519652")
    return path
