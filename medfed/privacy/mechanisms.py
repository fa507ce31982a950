"""The privacy mechanisms a run asks for, put around its sites and its strategy, and what they
spent (summary.json's `privacy` block).

    sites:    SiteTrainer -> DPSite (DP-SGD) -> SecureSite (masks what it sends)
                                             or HomomorphicSite (encrypts it, CKKS)
    strategy: FedAvg(aggregator = DP-FedAvg's clipped noisy mean)      without secure aggregation
              SecureAggregation(FedAvg), sites clip, server adds noise  with it
              HomomorphicAggregation(FedAvg or FedProx)                 with homomorphic encryption

A simulated malicious site (client/attacks.py) is left without DP-SGD: an attacker does not follow
the protocol's privacy rules (it is still masked under secure aggregation).

Homomorphic encryption needs the federation's CKKS context: a deployed site brings the secret one
and the server the public one (both issued with the certificates); a simulation makes one here,
keeps the secret serialization for its sites and gives the strategy only the public one.

Secure aggregation signs its key adverts and survivor sets with each site's certificate key
(signing.py): a deployed site brings its own (`identities`); a simulation gets an ephemeral CA and
keys made here, so the same verification runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from medfed.algorithms.aggregators import AggregatorFactory
from medfed.algorithms.strategy import Strategy
from medfed.client.trainer import LocalSite, SiteTrainer
from medfed.config import RunConfig
from medfed.errors import ConfigError
from medfed.privacy import ckks
from medfed.privacy.client_dp import ClientDP
from medfed.privacy.dp_plan import dp_plan
from medfed.privacy.fixed_point import RING_BITS
from medfed.privacy.homomorphic import (
    Decryptor,
    HomomorphicAggregation,
    HomomorphicSite,
    InProcessDecryptor,
)
from medfed.privacy.noise import OS_ENTROPY, SEEDED, randomness
from medfed.types import SiteId

if TYPE_CHECKING:  # Opacus (DP-SGD) and cryptography (secure aggregation) load when a run asks
    from medfed.privacy.dp_sgd import DPSite, DPSiteRecord
    from medfed.privacy.secure_round import Coordinator, SecureSite
    from medfed.privacy.signing import SigningIdentity


@dataclass
class Mechanisms:
    """deployed: noise from OS entropy, never from the configuration's seed (privacy/noise.py)."""

    config: RunConfig
    sites: list[SiteId]
    client_dp: ClientDP | None = None
    deployed: bool = False
    # a site's DPSite, or its record when it trained in a Ray worker (transport/ray_transport.py)
    dp_sites: dict[SiteId, DPSite | DPSiteRecord] = field(default_factory=dict)
    secure_sites: dict[SiteId, SecureSite] = field(default_factory=dict)
    he_sites: dict[SiteId, HomomorphicSite] = field(default_factory=dict)
    he_context: tuple[bytes, bytes] | None = None  # a simulation's (secret, public) CKKS context

    @property
    def active(self) -> bool:
        return self.config.privacy.enabled

    @classmethod
    def build(cls, config: RunConfig, sites: list[SiteId], deployed: bool = False) -> Mechanisms:
        p, fed = config.privacy, config.federation
        client_dp = None
        if p.client_dp:
            k = min(len(sites), max(fed.min_sites, math.ceil(fed.fraction * len(sites))))
            seed = None if deployed else int(np.random.SeedSequence([config.seed, 5])
                                             .generate_state(1)[0])
            client_dp = ClientDP(p.clip, p.noise, k / len(sites), randomness(seed))
        he_context = ckks.new_context() if p.homomorphic and not deployed else None
        return cls(config, sites, client_dp, deployed, he_context=he_context)

    def wrap_sites(self, trainers: dict[SiteId, LocalSite], first_index: int = 0,
                   spent: dict[SiteId, list[tuple[float, float, int]]] | None = None,
                   identities: dict[SiteId, SigningIdentity] | None = None,
                   secret_context: bytes | None = None) -> dict[SiteId, LocalSite]:
        """DP-SGD and secure-aggregation masking around each site's trainer. first_index: the
        site's position in the federation (a deployed client wraps only its own site, and its DP
        noise must be seeded as that site's, not as the first one's). spent: a site's DP-SGD
        accountant history from its ledger (a deployed site continues its epsilon). identities:
        the sites' signing keys for secure aggregation; None in a simulation (an ephemeral CA signs
        keys for all of `trainers`); a deployed site passes its own, and one missing from it
        refuses secure aggregation. secret_context: a deployed site's CKKS context (a simulation
        uses the one build() made)."""
        p, t = self.config.privacy, self.config.training
        if p.dp_sgd:
            from medfed.privacy.dp_sgd import DPSGDSettings, DPSite

            settings = DPSGDSettings(p.noise_multiplier, p.max_grad_norm, p.target_epsilon, p.delta)
            plan = dp_plan(p, self.config.data.augment)
        if p.secure_aggregation:
            from medfed.privacy.secure_round import SecureSite
            from medfed.privacy.signing import ephemeral_identities

            identities = identities if identities is not None else ephemeral_identities(trainers)
        out: dict[SiteId, LocalSite] = {}
        for k, (site, trainer) in enumerate(trainers.items(), start=first_index):
            if p.dp_sgd and isinstance(trainer, SiteTrainer):
                seed = None if self.deployed else int(
                    np.random.SeedSequence([self.config.seed, 4, k]).generate_state(1)[0])
                trainer = DPSite(trainer, settings, plan,
                                 self.config.federation.rounds * t.local_epochs, seed,
                                 (spent or {}).get(site))
                self.dp_sites[site] = trainer
            if p.secure_aggregation:
                trainer = SecureSite(trainer, clip=p.clip if p.client_dp else None,
                                     identity=(identities or {}).get(site))
                self.secure_sites[site] = trainer
            if p.homomorphic:
                trainer = HomomorphicSite(trainer, self._secret(secret_context), p.encrypt_layers)
                self.he_sites[site] = trainer
            out[site] = trainer
        return out

    def aggregator(self) -> AggregatorFactory | None:
        """DP-FedAvg's aggregator, unless secure aggregation does its work."""
        if self.client_dp is None or self.config.privacy.secure_aggregation:
            return None
        return self.client_dp.aggregator()

    def _secret(self, given: bytes | None) -> bytes:
        secret = given if given is not None else (self.he_context or (None, None))[0]
        if secret is None:
            raise ConfigError("homomorphic encryption needs the federation's secret CKKS context: "
                              "issue it with `medfed certs issue --name SITE --homomorphic` and run "
                              "the client with --certs")
        return secret

    def wrap_strategy(self, strategy: Strategy, coordinator: Coordinator | None = None,
                      decryptor: Decryptor | None = None, public_context: bytes | None = None,
                      counter: object = None) -> Strategy:
        """coordinator: how the protocol's key and unmask messages travel (default: in process, to
        the sites wrap_sites made; a deployment passes its gRPC one). Homomorphic encryption:
        decryptor and public_context likewise (default: in process, and the public half of the
        simulation's context); counter: the transport that counts the decryption's bytes."""
        p = self.config.privacy
        if p.homomorphic:
            public = public_context or (self.he_context or (None, None))[1]
            if public is None:
                raise ConfigError("homomorphic encryption needs the federation's public CKKS "
                                  "context (server.ckks from `medfed certs issue --name server "
                                  "--homomorphic`)")
            return HomomorphicAggregation(
                strategy, public, decryptor or InProcessDecryptor(self.he_sites, counter),
                p.encrypt_layers)
        if not p.secure_aggregation:
            return strategy
        from medfed.privacy.secure_round import InProcessCoordinator, SecureAggregation

        return SecureAggregation(strategy, coordinator or InProcessCoordinator(self.secure_sites),
                                 p.threshold, p.fixed_point_scale, self.client_dp)

    def report(self) -> dict:
        """summary.json's `privacy`: epsilon per site, delta, each mechanism's parameters."""
        p = self.config.privacy
        out: dict = {"delta": p.delta, "epsilon": {},
                     "noise": OS_ENTROPY if self.deployed else SEEDED}
        if p.dp_sgd:
            out["epsilon"] = {s: d.budget.spent() for s, d in self.dp_sites.items()}
            out["dp_sgd"] = self._dp_sgd_report()
        if self.client_dp is not None:
            out["client_dp"] = {"clip": p.clip, "noise_multiplier": p.noise,
                                "sample_rate": self.client_dp.sample_rate,
                                "rounds": self.client_dp.rounds,
                                "epsilon": self.client_dp.epsilon(p.delta)}
        if p.secure_aggregation:
            out["secure_aggregation"] = {
                "threshold": p.threshold or "majority of each round's sites",
                "fixed_point_scale": p.fixed_point_scale, "ring_bits": RING_BITS,
                "key_agreement": "X25519 + HKDF-SHA256", "prg": "ChaCha20",
                "secret_sharing": "Shamir over GF(2^521 - 1)",
                "signatures": "ECDSA P-256 certificates of the federation's CA (adverts and "
                              "survivor sets)"}
        if p.homomorphic:
            out["homomorphic"] = {
                "scheme": "CKKS (TenSEAL), symmetric encryption with the sites' shared secret key",
                "poly_modulus_degree": ckks.POLY_MODULUS_DEGREE,
                "coeff_mod_bit_sizes": list(ckks.COEFF_MOD_BIT_SIZES),
                "scale_bits": ckks.SCALE_BITS,
                "encrypted_layers": ", ".join(p.encrypt_layers) or "all",
                "server_holds": "the public context only (adds ciphertexts, never decrypts)"}
        return out

    def _dp_sgd_report(self) -> dict:
        from medfed.privacy.dp_sgd import steps_per_epoch

        p = self.config.privacy
        stopped = {s: d.stopped for s, d in self.dp_sites.items() if d.stopped}
        return {"max_grad_norm": p.max_grad_norm, "target_epsilon": p.target_epsilon,
                "noise_multiplier": {s: d.budget.noise_multiplier for s, d in self.dp_sites.items()},
                "sample_rate": {s: d.budget.rate for s, d in self.dp_sites.items()},
                "steps": {s: sum(h[2] for h in d.budget.accountant.history)
                          for s, d in self.dp_sites.items()},
                "steps_per_epoch": {s: steps_per_epoch(d.budget.rate) for s, d in self.dp_sites.items()},
                "accountant": "RDP (Opacus)", "sampling": "Poisson",
                "recipe": dp_plan(p, self.config.data.augment).report(),
                "stopped": stopped}

