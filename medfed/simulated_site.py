"""The k-th simulated site, built alike wherever it runs: in this process (the in-process backend)
or in a Ray worker (transport/ray_worker.py). A site is data plus a recipe: its trainer, the attack
that makes it malicious (the first `attackers` sites), its privacy wrappers (DP-SGD) and its
compression, each seeded from (the run's seed, k), so the same site trains alike in either place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from medfed.algorithms.compression import compress_sites
from medfed.algorithms.compression_spec import parse_compression
from medfed.client.attack_spec import Attack
from medfed.client.attacks import MaliciousSite, poisoned_data
from medfed.client.trainer import LocalSite, SiteTrainer
from medfed.config import RunConfig
from medfed.data.dataset import SiteData
from medfed.data.transforms import Preprocess
from medfed.models import ModelSpec, build_model
from medfed.types import SiteId, Task

if TYPE_CHECKING:  # Opacus and TenSEAL load only when a run asks for privacy
    from medfed.privacy.mechanisms import Mechanisms


def site_seed(config: RunConfig, k: int) -> int:
    return int(np.random.SeedSequence([config.seed, 1, k]).generate_state(1)[0])


def make_site_trainer(config: RunConfig, spec: ModelSpec, task: Task, preprocess: Preprocess,
                      device: torch.device, k: int, data: SiteData,
                      model: nn.Module | None = None) -> SiteTrainer:
    """The trainer of the k-th site of a federation: the same in simulation and at a deployed site,
    so both train the same model from the same seed. model: one to share with other sites of this
    process (every call loads its own weights, so sharing changes nothing but memory)."""
    if model is None:  # weights are loaded every round; the seed only keeps construction deterministic
        model = site_model(config, spec)
    return SiteTrainer(data, model, task, preprocess, device, site_seed(config, k),
                       config.data.augment)


def site_model(config: RunConfig, spec: ModelSpec) -> nn.Module:
    return build_model(config.model.model, spec, config.seed, check_input=False)


@dataclass(frozen=True)
class SiteRecipe:
    """Everything but its data that it takes to build a simulated site of one training run.
    attack: the run's attack (None for the honest baselines)."""

    config: RunConfig
    spec: ModelSpec
    task: Task
    num_outputs: int
    preprocess: Preprocess
    attack: Attack | None = None
    # A network other than the registry's config.model.model (a script's own model; the Flower
    # reference workload's CNN in benchmarks/ray_backend.py): an importable function, so a Ray
    # worker can call it too.
    network: Callable[[], nn.Module] | None = None

    def model(self) -> nn.Module:
        return self.network() if self.network is not None else site_model(self.config, self.spec)

    def shares_model(self, private: bool) -> bool:
        """Whether the sites of one training run in one process can train on one model instance,
        so a process holds one model whatever its number of sites. They can: each train or score
        call loads the site's whole state first (a strict load_state_dict), and what a site keeps
        between rounds lives outside the module (SCAFFOLD's c_k in its trainer, FedBN's norm layers
        in the strategy, sent with each payload; compression's error feedback in its wrapper).
        Except with DP-SGD (`private`: the run's privacy wrappers are on): Opacus' GradSampleModule
        hooks per-sample gradients into its site's model, so a private site gets its own."""
        return not (private and self.config.privacy.dp_sgd)

    def trainer(self, k: int, data: SiteData, device: torch.device,
                model: nn.Module | None = None) -> LocalSite:
        """The k-th site's trainer (on `model`, shared with other sites of this process, or a
        new one); the first `attackers` sites behind the attack."""
        malicious = self.attack is not None and k < self.config.adversary.attackers
        if malicious and self.attack is not None and self.attack.poisons_data:
            data = poisoned_data(data, self.task, self.num_outputs)
        trainer = make_site_trainer(self.config, self.spec, self.task, self.preprocess, device, k,
                                    data, model if model is not None else self.model())
        if malicious and self.attack is not None:
            return MaliciousSite(trainer, self.attack, site_seed(self.config, k))
        return trainer

    def wrapped(self, trainers: dict[SiteId, LocalSite], privacy: Mechanisms | None,
                first_index: int = 0) -> dict[SiteId, LocalSite]:
        """Privacy, then compression (post-processing) around each site; the baselines (privacy
        None) are neither private nor compressed."""
        if privacy is None:
            return trainers
        spec = parse_compression(self.config.federation.compress)
        return compress_sites(privacy.wrap_sites(trainers, first_index), spec, self.config.seed,
                              first_index)
