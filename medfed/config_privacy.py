"""The run configuration's [privacy] section and the checks that tie it to the other sections:
DP-SGD at each site, DP-FedAvg at the server, secure aggregation, homomorphic encryption
(medfed/privacy/)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medfed.algorithms.compression_spec import NONE as NO_COMPRESSION
from medfed.algorithms.compression_spec import TOPK, parse_compression
from medfed.config_checks import at_least as _at_least
from medfed.config_checks import choice as _choice
from medfed.config_checks import positive as _positive
from medfed.errors import ConfigError

if TYPE_CHECKING:
    from medfed.config import RunConfig


@dataclass(frozen=True)
class PrivacyConfig:
    """DP-SGD at each site, DP-FedAvg at the server, secure aggregation (medfed/privacy/)."""

    dp_sgd: bool = False  # per-sample clipping and noise at each site (Opacus)
    noise_multiplier: float | None = None  # DP-SGD's sigma; None with target_epsilon: derived
    max_grad_norm: float = 1.0  # DP-SGD's per-sample clipping norm C
    target_epsilon: float | None = None  # a site's budget; it stops training once spent
    delta: float = 1e-5
    # DP-SGD's recipe (privacy/dp_plan.py); None: its DP-friendly default.
    logical_batch: int | None = None  # expected images per noisy step; q = logical_batch / n
    physical_batch: int | None = None  # images (copies included) per forward pass: memory only
    augment_multiplicity: int | None = None  # K augmented copies per image, averaged, clipped once
    ema_decay: float | None = None  # average of the weights along the noisy steps; 0: off
    dp_optimizer: str | None = None  # adam or sgd
    dp_lr: float | None = None
    dp_momentum: float | None = None  # sgd only
    client_dp: bool = False  # DP-FedAvg: each site's update clipped to `clip`, noise on the sum
    clip: float = 1.0  # S
    noise: float = 1.0  # client-level sigma: the sum gets N(0, (sigma S)^2)
    secure_aggregation: bool = False  # the server learns only the sum of the updates
    threshold: int | None = None  # t survivors needed to unmask, > half the round; None: a majority
    fixed_point_scale: float = 2.0 ** 24  # secure aggregation's resolution
    homomorphic: bool = False  # CKKS: the server adds encrypted updates, the sites decrypt the sum
    encrypt_layers: tuple[str, ...] = ()  # glob patterns of the layers encrypted; empty: all

    @property
    def enabled(self) -> bool:
        """Whether any mechanism is on."""
        return self.dp_sgd or self.client_dp or self.secure_aggregation or self.homomorphic

    def __post_init__(self) -> None:
        if self.dp_sgd and self.noise_multiplier is None and self.target_epsilon is None:
            raise ConfigError("dp_sgd needs noise_multiplier (sigma) or target_epsilon")
        for name in ("max_grad_norm", "clip", "fixed_point_scale"):
            _positive(name, getattr(self, name))
        if self.noise < 0:  # 0: clipping only, no privacy (epsilon infinite): a test setting
            raise ConfigError(f"noise must be >= 0, got {self.noise}")
        for name in ("noise_multiplier", "target_epsilon"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta}")
        if self.threshold is not None:
            _at_least("threshold", self.threshold, 2)
        if self.encrypt_layers and not self.homomorphic:
            raise ConfigError("encrypt_layers chooses what homomorphic encryption encrypts; add "
                              "--homomorphic (homomorphic = true) or leave it out")
        if any(not p.strip() for p in self.encrypt_layers):
            raise ConfigError("encrypt_layers: an empty pattern; give glob patterns of layer "
                              "names, e.g. \"fc.*,features.0.*\"")
        self._check_recipe()

    def _check_recipe(self) -> None:
        for name in ("logical_batch", "physical_batch", "augment_multiplicity"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1)
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if self.dp_optimizer is not None:
            _choice("dp_optimizer", self.dp_optimizer, ("adam", "sgd"))
        if self.dp_lr is not None:
            _positive("dp_lr", self.dp_lr)
        if self.dp_momentum is not None and self.dp_momentum < 0:
            raise ConfigError(f"dp_momentum must be >= 0, got {self.dp_momentum}")


# What each privacy mechanism can wrap: the averaging algorithms with the plain mean.
PRIVATE_AVERAGING = ("fedavg", "fedprox", "fedadam", "fedyogi")


_SECURE_COMPRESSION = {
    TOPK: "compress topk:F is refused with secure aggregation: each site sends a different set of "
          "coordinates, which the masked sum cannot add; use compress = \"none\"",
    "q8": "compress q8 is refused with secure aggregation: each site's int8 codes have their own "
          "per-tensor scale, so the masked sum in the fixed-point ring cannot add them (a shared "
          "scale and a narrow ring are not implemented); use compress = \"none\""}


def check_privacy(config: RunConfig) -> None:
    p, fed = config.privacy, config.federation
    if p.dp_sgd and config.model.norm == "batch":
        raise ConfigError("DP-SGD clips each sample's gradient, which BatchNorm mixes across the "
                          "batch; use --norm group or --norm instance")
    if (p.dp_sgd or p.client_dp) and config.training.logit_adjust:
        raise ConfigError("--logit-adjust puts each site's label counts into every gradient, "
                          "unclipped and without noise: it is refused with DP-SGD or client-level DP")
    if p.dp_sgd:
        _check_dp_recipe_flags(config)
    if p.dp_sgd and fed.algorithm in ("fedprox", "scaffold"):
        raise ConfigError(f"DP-SGD trains the plain task loss; {fed.algorithm} changes it "
                          "(use fedavg, fedadam, fedyogi, fednova, fedbn, swt, cwt or ensemble)")
    for on, what in ((p.client_dp, "client_dp"), (p.secure_aggregation, "secure_aggregation")):
        if on and (fed.algorithm not in PRIVATE_AVERAGING or fed.aggregator != "mean"):
            raise ConfigError(f"{what} replaces the sample-weighted mean of "
                              f"{', '.join(PRIVATE_AVERAGING)}; use one of them with aggregator "
                              f"\"mean\" (got {fed.algorithm}, {fed.aggregator})")
    if p.secure_aggregation and fed.compress != NO_COMPRESSION:
        raise ConfigError(_SECURE_COMPRESSION[parse_compression(fed.compress).kind])
    if p.homomorphic:
        check_homomorphic(config)
    sites = config.data.known_sites
    if sites is None:  # counted from the data; checked again once it is read
        return
    if p.secure_aggregation and sites < 2:
        raise ConfigError("secure_aggregation needs at least 2 sites")
    if p.threshold is not None and p.threshold > sites:
        raise ConfigError(f"threshold is {p.threshold} but there are only {sites} sites")
    sampled = min(sites, max(fed.min_sites, math.ceil(fed.fraction * sites)))
    if p.secure_aggregation and p.threshold is not None and p.threshold > sampled:
        raise ConfigError(f"threshold is {p.threshold} but a round samples only {sampled} sites "
                          f"(fraction {fed.fraction}); raise --fraction or lower --threshold")
    if p.secure_aggregation and p.threshold is not None and 2 * p.threshold <= sampled:
        raise ConfigError(f"threshold is {p.threshold} but a round samples {sampled} sites: secure "
                          f"aggregation against a malicious server needs more than half of them "
                          f"(at least {sampled // 2 + 1}); raise threshold or leave it unset")




def check_homomorphic(config: RunConfig) -> None:
    """Homomorphic aggregation gives the server ciphertexts to add and nothing else: whatever must
    see plaintext updates, or the server's own plaintext step, is refused with one line."""
    from medfed.privacy.ckks import tenseal  # numpy only: no torch before the config is valid

    tenseal()  # not installed: one line naming `pip install 'medfed[he]'`
    p, fed = config.privacy, config.federation
    if fed.algorithm not in ("fedavg", "fedprox"):
        raise ConfigError(f"homomorphic encryption sums weighted updates for fedavg or fedprox; "
                          f"{fed.algorithm} is refused (fedadam/fedyogi's server step, and the "
                          "other algorithms, would need the plaintext updates or their own state)")
    if fed.aggregator != "mean":
        raise ConfigError(f"homomorphic encryption is refused with aggregator \"{fed.aggregator}\": "
                          "the server sees only ciphertexts, and a median, Krum, a trimmed mean or "
                          "norm bounding must see each plaintext update; use aggregator \"mean\"")
    if p.secure_aggregation:
        raise ConfigError("homomorphic encryption and secure aggregation both hide each update "
                          "from the server; choose one (the README says when which)")
    if p.client_dp:
        raise ConfigError("client-level DP adds its noise to the plaintext sum at the server, which "
                          "homomorphic encryption never sees; use DP-SGD at the sites with it")
    if fed.compress != NO_COMPRESSION:
        raise ConfigError("compressed updates are refused with homomorphic encryption: CKKS "
                          "encrypts real vectors of a fixed length, not int8 codes or top-k "
                          "indices; use compress = \"none\"")
    if config.data.known_sites is not None and config.data.known_sites < 2:
        raise ConfigError("homomorphic encryption needs at least 2 sites (the sum of one update "
                          "is that update)")



# [training] keys a DP-SGD site does not train with, and the [privacy] key that sets each instead.
_DP_RECIPE_KEYS = {"batch_size": "logical_batch", "lr": "dp_lr", "optimizer": "dp_optimizer",
                   "momentum": "dp_momentum"}


def _check_dp_recipe_flags(config: RunConfig) -> None:
    """Under DP-SGD a site trains with [privacy]'s recipe (privacy/dp_plan.py); a [training] step
    size or batch the user set would be silently ignored, so it is refused, naming its DP twin."""
    from medfed.config import TrainingConfig  # config.py imports this module

    plain = TrainingConfig()
    for key, twin in _DP_RECIPE_KEYS.items():
        if getattr(config.training, key) != getattr(plain, key):
            raise ConfigError(f"with dp_sgd the sites train with the DP recipe, so {key} (--"
                              f"{key.replace('_', '-')}) is not used; set {twin} (--"
                              f"{twin.replace('_', '-')}) instead")
