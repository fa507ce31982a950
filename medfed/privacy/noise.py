"""Where privacy noise comes from: a seeded stream in simulation, the operating system's entropy in a
deployment.

A differential-privacy guarantee holds only if nobody can predict the noise. In simulation that
does not matter and reproducibility does: `Seeded` draws from a torch.Generator seeded from the run's
seed, so the same seed gives the same result (summary.json says "seeded"). In a deployment the
configuration's seed travels to every site and sits in the coordinator's files, so anything derived
from it is known to the very parties DP protects against: `OsEntropy` draws every value from a
ChaCha20 keystream keyed with 32 bytes of os.urandom (a CSPRNG; a new key per source), turns 53-bit
integers into uniforms and uniforms into normals (Box-Muller, in float64), so the noise depends on
nothing any configuration, checkpoint or other party holds.

Both serve DP-SGD's per-step noise and Poisson sampling (privacy/dp_sgd.py) and client-level DP's
noise on the sum (privacy/client_dp.py, secure_round.py).
"""

from __future__ import annotations

import math
import os
from typing import Protocol

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

SEEDED = "seeded (simulation: reproducible from the run's seed, not secret)"
OS_ENTROPY = "OS entropy (ChaCha20 keyed from os.urandom; unpredictable)"


class Randomness(Protocol):
    description: str

    def normal(self, shape: tuple[int, ...], std: float, dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
        """N(0, std^2) per element."""
        ...

    def uniform(self, n: int) -> torch.Tensor:
        """n independent U[0, 1) values (float64)."""
        ...


class Seeded:
    """Reproducible noise for simulation."""

    description = SEEDED

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def normal(self, shape: tuple[int, ...], std: float, dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, dtype=torch.float64).mul_(std).to(dtype)

    def uniform(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, dtype=torch.float64)


class OsEntropy:
    """Unpredictable noise for a deployment: a ChaCha20 keystream keyed from os.urandom."""

    description = OS_ENTROPY

    def __init__(self) -> None:
        cipher = Cipher(algorithms.ChaCha20(os.urandom(32), os.urandom(16)), mode=None)
        self._stream = cipher.encryptor()

    def uniform(self, n: int) -> torch.Tensor:
        words = np.frombuffer(self._stream.update(bytes(8 * n)), dtype=np.uint64)
        return torch.from_numpy((words >> np.uint64(11)).astype(np.float64) * 2.0 ** -53)

    def normal(self, shape: tuple[int, ...], std: float, dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
        n = math.prod(shape)
        half = (n + 1) // 2
        u = self.uniform(2 * half)
        radius = torch.sqrt(-2.0 * torch.log1p(-u[:half]))  # 1 - u in (0, 1]: no log(0)
        angle = 2.0 * math.pi * u[half:]
        z = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:n]
        return z.mul_(std).reshape(shape).to(dtype)


def randomness(seed: int | None) -> Randomness:
    """A seeded stream (simulation) or OS entropy (seed None: a deployment)."""
    return OsEntropy() if seed is None else Seeded(seed)
