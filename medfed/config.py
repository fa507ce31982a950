"""Run configuration: frozen dataclasses, loaded from TOML and command-line flags, validated early.

A config file has top-level keys (seed, device, baselines) and seven sections:

    [data]        what the sites hold and how it is split
    [model]       the network
    [federation]  the algorithm and its rounds
    [training]    each site's local optimisation
    [adversary]   simulated faulty or malicious sites (none by default)
    [privacy]     differential privacy and secure aggregation (off by default)
    [execution]   where the simulation runs: in this process (default) or on Ray

Every key is optional; unknown keys and bad values raise ConfigError naming the valid choices.
Reading and writing files and applying CLI flags is medfed/config_file.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medfed.algorithms.compression_spec import NONE as NO_COMPRESSION
from medfed.algorithms.compression_spec import parse_compression
from medfed.client.attack_spec import parse_attack
from medfed.config_checks import at_least as _at_least
from medfed.config_checks import choice as _choice
from medfed.config_checks import positive as _positive
from medfed.config_execution import ExecutionConfig
from medfed.config_privacy import PrivacyConfig, check_privacy
from medfed.config_split import DEFAULT_CUT, check_split
from medfed.config_topology import check_topology
from medfed.errors import ConfigError

# Names the registries answer to. tests/test_config.py checks that each registry holds exactly these.
DATASETS = ("synthetic", "medmnist", "dicom", "nifti", "chestxray14", "heart-disease", "images")
PARTITIONS = ("iid", "dirichlet", "quantity", "natural")
ALGORITHMS = ("fedavg", "fedavgm", "fedprox", "fedbn", "fedadam", "fedyogi", "fednova", "scaffold", "swt", "cwt",
              "ensemble", "split")
AGGREGATORS = ("mean", "median", "trimmed-mean", "krum", "multi-krum", "norm-bound")
# The algorithms whose server step is an average, and so can take any aggregator.
AVERAGING = ("fedavg", "fedavgm", "fedprox", "fedbn", "fedadam", "fedyogi")
CNN_WIDTH = 16  # the default cnn's first-stage channels (models/cnn.py uses it)
MODELS = ("cnn", "resnet18", "resnet50", "densenet121", "scatter", "mlp", "logistic")
NORMS = ("batch", "group", "instance")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda", "mps")
HARMONIZATIONS = ("none", "zscore", "histogram")
SITE_BY = ("view", "sex", "age")
DEFAULT_SITES = 5  # sites made by iid / dirichlet / quantity (and synthetic) when sites is unset
POOL_PARTITIONS = ("iid", "dirichlet", "quantity")  # those that make as many sites as asked


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    data_file: str | None = None  # an .npz for medmnist; one processed.<hospital>.data for heart-disease
    # None: a natural partition takes one site per natural group of the data; any other partition
    # (and synthetic) makes len(sizes or proportions), else DEFAULT_SITES. See site_count.
    sites: int | None = None
    partition: str | None = None  # None: the data set's natural sites if it has them, else iid
    alpha: float = 0.5  # Dirichlet concentration (label skew); smaller is more skewed
    sizes: tuple[int, ...] = ()  # exact samples per site (quantity skew; synthetic sites)
    proportions: tuple[float, ...] = ()  # relative site sizes, e.g. 20, 25, 15, 30, 22
    val_fraction: float = 0.1  # of each site's data, kept at the site for validation
    image_size: int | None = None  # resize to this side length; None keeps the native size
    # Random flip, rotation +-10 degrees and crop, training only. None: chosen from the data
    # (medfed/defaults.py: on for images, off for tabular rows and binary masks).
    augment: bool | None = None
    synthetic_samples: int = 1500  # synthetic only: training + validation images over all sites
    synthetic_test: int = 1000  # synthetic only: held-out test images over all sites
    # Files a site holds (dicom, nifti, chestxray14): see README "Data at a site".
    data_dir: str | None = None  # the folder; each top-level subfolder is one natural site
    # A deployed site reading its own data: all of data_dir (or data_file) is this one site, so
    # its splits are those it has in a simulation where its folder is the subfolder of this name.
    site_name: str | None = None
    labels: str | None = None  # CSV: file (or SOPInstanceUID / SeriesInstanceUID / StudyInstanceUID), label
    label_map: str | None = None  # TOML: each site's label names -> the federation's label set
    allow_phi: bool = False  # use DICOM files that still carry identifying tags
    series_volumes: bool = False  # dicom: one 3D sample per series instead of one per instance
    harmonize: str = "none"  # per site: none, zscore, or histogram (matched to a shared reference)
    test_fraction: float = 0.2  # held out per site (stratified; by patient/study) as the test set
    site_by: str = "view"  # chestxray14 pseudo-sites: view (PA/AP), sex, or age band

    def __post_init__(self) -> None:
        _choice("dataset", self.dataset, DATASETS)
        if self.partition is not None:
            _choice("partition", self.partition, PARTITIONS)
        if self.sites is not None:
            _at_least("sites", self.sites, 1)
        if self.site_name is not None and not self.site_name.strip():
            raise ConfigError("site_name must name the site, got an empty string")
        _positive("alpha", self.alpha)
        for name in ("sizes", "proportions"):
            values = getattr(self, name)
            if any(v <= 0 for v in values):
                raise ConfigError(f"{name} must all be > 0, got {list(values)}")
            if values and self.sites is not None and len(values) != self.sites:
                raise ConfigError(f"{name} has {len(values)} entries but sites is {self.sites}; "
                                  "give one per site")
        if self.sizes and self.proportions:
            raise ConfigError("give sizes (exact counts) or proportions, not both")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.image_size is not None:
            _at_least("image_size", self.image_size, 8)
        _at_least("synthetic_samples", self.synthetic_samples, 10)
        _at_least("synthetic_test", self.synthetic_test, 10)
        _choice("harmonize", self.harmonize, HARMONIZATIONS)
        _choice("site_by", self.site_by, SITE_BY)
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test_fraction must be between 0 and 1, got {self.test_fraction}")

    @property
    def site_count(self) -> int:
        """The sites a partitioner makes from a pool (iid, dirichlet, quantity; synthetic's
        sites): sites, else one per entry of sizes or proportions, else DEFAULT_SITES."""
        return self.sites or len(self.sizes or self.proportions) or DEFAULT_SITES

    @property
    def known_sites(self) -> int | None:
        """The number of sites before the data is read, or None when the natural groups of the
        data will say (experiment.prepare then fills in sites and the checks run again)."""
        if self.sites is not None or self.partition in POOL_PARTITIONS or self.dataset == "synthetic":
            return self.site_count
        return None


@dataclass(frozen=True)
class ModelConfig:
    # None: chosen from the data (medfed/defaults.py): cnn for images, mlp for tabular rows.
    model: str | None = None
    # None: chosen from the data. Per-image (instance) normalization for images: with BatchNorm,
    # FedAvg trains on each site's own batch statistics but predicts with their average, which
    # fails at the site whose scanner differs most (benchmarks/RESULTS.md); group for tabular rows;
    # batch for binary masks. "batch" stays available, and FedBN is built for it.
    norm: str | None = None
    width: int = CNN_WIDTH  # cnn: channels of the first of its 3 stages (16: ~70k parameters; 60: ~1M)

    def __post_init__(self) -> None:
        if self.model is not None:
            _choice("model", self.model, MODELS)
        if self.norm is not None:
            _choice("norm", self.norm, NORMS)
        _at_least("width", self.width, 1)
        if self.width != CNN_WIDTH and self.model not in ("cnn", None):
            raise ConfigError(f"width applies to --model cnn only, not {self.model}")


@dataclass(frozen=True)
class FederationConfig:
    algorithm: str = "fedavg"
    # None: chosen (defaults.py): a cap of 40 with patience 5 where the best validation round is
    # kept (simulation), otherwise 20.
    rounds: int | None = None
    fraction: float = 1.0  # share of sites sampled each round
    min_sites: int = 1  # a round closes only if at least this many usable updates arrived
    eval_every: int = 1  # score on the sites' validation splits every N rounds (0: only the final model)
    mu: float = 0.01  # FedProx proximal weight
    # The server's step size: None is 0.01 for FedAdam / FedYogi (Reddi et al. 2021), 1 for FedAvgM.
    server_lr: float | None = None
    server_momentum: float = 0.9  # FedAvgM's beta (Hsu et al. 2019)
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3  # adaptivity: the epsilon under the square root
    aggregator: str = "mean"  # how the averaging algorithms combine updates (robust rules too)
    byzantine: int = 1  # f, the faulty sites Krum and the trimmed mean are built to tolerate
    krum_keep: int | None = None  # m, the updates Multi-Krum averages (default: n - f)
    norm_bound: float | None = None  # norm-bound's M (default: the median norm of the round)
    compress: str = NO_COMPRESSION  # the sites' updates: none, q8 or topk:F (compression.py)
    # Who averages with whom (config_topology.py): "server" (a central aggregator), "p2p" (gossip
    # between neighbours of the `gossip` graph: ring, k-regular:K, full) or "hybrid" (regional
    # aggregators, then a global average of regions every `global_every` rounds).
    topology: str = "server"
    gossip: str = "ring"
    regions: str | None = None  # hybrid: "north:site-a,site-b;south:site-c"
    global_every: int = 1
    # Keep the global model of the round with the best federated validation score (the sites'
    # mean validation AUC) instead of the last round's (server/best_model.py). None: chosen from
    # the size of the sites' validation splits (defaults.py); simulation only.
    keep_best: bool | None = None
    # Stop once the federated validation score has gone this many scored rounds without improving
    # (server/early_stop.py); `rounds` is then a cap. 0: run every round. Simulation only.
    # None: chosen with rounds (defaults.py).
    patience: int | None = None
    # patience never stops a run before this many rounds (a slow start is not a plateau).
    # None: chosen with rounds (defaults.py).
    min_rounds: int | None = None
    # Split learning: the first H and last T blocks of the model stay at each site ("H,T");
    # the server runs the blocks between (config_split.py, algorithms/split.py).
    cut: str = DEFAULT_CUT

    def __post_init__(self) -> None:
        parse_compression(self.compress)
        _choice("algorithm", self.algorithm, ALGORITHMS)
        _choice("aggregator", self.aggregator, AGGREGATORS)
        if self.aggregator != "mean" and self.algorithm not in AVERAGING:
            raise ConfigError(f"aggregator {self.aggregator} replaces the average of "
                              f"{', '.join(AVERAGING)}; {self.algorithm} has no average to replace "
                              "(use aggregator = \"mean\")")
        _at_least("byzantine", self.byzantine, 0)
        if self.krum_keep is not None:
            _at_least("krum_keep", self.krum_keep, 1)
        if self.norm_bound is not None:
            _positive("norm_bound", self.norm_bound)
        if self.rounds is not None:
            _at_least("rounds", self.rounds, 1)
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        _at_least("min_sites", self.min_sites, 1)
        _at_least("eval_every", self.eval_every, 0)
        if self.patience is not None:
            _at_least("patience", self.patience, 0)
        if self.min_rounds is not None:
            _at_least("min_rounds", self.min_rounds, 0)
        if self.patience and not self.eval_every:
            raise ConfigError("patience stops on the validation score, which eval_every = 0 never "
                              "computes (set eval_every >= 1 or patience = 0)")
        if self.mu < 0:
            raise ConfigError(f"mu must be >= 0, got {self.mu}")
        if self.server_lr is not None:
            _positive("server_lr", self.server_lr)
        _positive("tau", self.tau)
        if not 0 <= self.server_momentum < 1:
            raise ConfigError(f"server_momentum must be in [0, 1), got {self.server_momentum}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class TrainingConfig:
    # None: chosen (medfed/defaults.py): 1 epoch and at least LOCAL_STEPS optimizer steps a round.
    local_epochs: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    # Logit adjustment for label skew (Menon et al., ICLR 2021): each site trains on its logits
    # plus tau * log(its own label prior), so what it learns does not lean to its majority class.
    logit_adjust: float = 0.0  # tau; 0: off
    # At least this many optimizer steps per round: a site whose epoch is shorter goes on into its
    # data again, so a small site is not starved. 0: epochs only. None: chosen (0 if local_epochs
    # is given or with DP-SGD, whose accounting counts epochs).
    local_steps: int | None = None
    # The local learning rate over the rounds: constant, or cosine (lr * (1 + cos(pi r / R)) / 2 at
    # round r of R), the decay FedAvg's convergence on non-IID data needs (Li et al., ICLR 2020).
    # None: chosen (medfed/defaults.py): cosine when the last round's model is the result.
    lr_schedule: str | None = None

    def __post_init__(self) -> None:
        if self.local_epochs is not None:
            _at_least("local_epochs", self.local_epochs, 1)
        if self.local_steps is not None:
            _at_least("local_steps", self.local_steps, 0)
        _at_least("batch_size", self.batch_size, 1)
        _positive("lr", self.lr)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.lr_schedule is not None:
            _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError("momentum and weight_decay must be >= 0")
        if self.logit_adjust < 0:
            raise ConfigError(f"logit_adjust must be >= 0 (0: off), got {self.logit_adjust}")


@dataclass(frozen=True)
class AdversaryConfig:
    """Simulated faulty or malicious sites: the first `attackers` sites run `attack`."""

    attack: str = "none"  # label-flip, scale:F, sign-flip, noise[:S], nan, free-ride
    attackers: int = 1

    def __post_init__(self) -> None:
        parse_attack(self.attack)
        _at_least("attackers", self.attackers, 1)


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    device: str = "auto"
    baselines: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    adversary: AdversaryConfig = field(default_factory=AdversaryConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    def __post_init__(self) -> None:
        _choice("device", self.device, DEVICES)
        check_privacy(self)
        check_topology(self)
        check_split(self)
        if self.privacy.dp_sgd and self.training.local_steps:
            raise ConfigError("DP-SGD's epsilon accounting counts epochs: use --local-epochs, "
                              "not --local-steps, with --dp-sgd")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        fed, sites = self.federation, self.data.known_sites
        if sites is None:  # the data's natural sites: checked again once they are counted
            return
        _check_robustness(fed, sites)
        if self.adversary.attack != "none" and self.adversary.attackers > sites:
            raise ConfigError(f"attackers is {self.adversary.attackers} but there are only {sites} "
                              "sites")
        if fed.min_sites > sites:
            raise ConfigError(f"min_sites is {fed.min_sites} but there are only {sites} sites")
        if fed.algorithm == "swt" and fed.rounds is not None and fed.rounds < sites:
            raise ConfigError(f"swt passes the model through each of the {sites} sites in turn, "
                              f"so it needs --rounds >= {sites} (got {fed.rounds})")


def _check_robustness(fed: FederationConfig, sites: int) -> None:
    """What each robust rule needs of n sites to tolerate f faulty ones (its paper's condition)."""
    f = fed.byzantine
    if fed.aggregator in ("krum", "multi-krum") and sites < 2 * f + 3:
        raise ConfigError(f"{fed.aggregator} tolerates f faulty sites only among n >= 2f + 3; with "
                          f"byzantine = {f} it needs >= {2 * f + 3} sites (got {sites})")
    if fed.aggregator == "trimmed-mean" and sites < 2 * f + 1:
        raise ConfigError(f"trimmed-mean drops the {f} lowest and {f} highest values, so it needs "
                          f">= {2 * f + 1} sites (got {sites}); lower byzantine")
    if fed.aggregator == "multi-krum" and fed.krum_keep is not None and fed.krum_keep > sites - f:
        raise ConfigError(f"krum_keep is {fed.krum_keep}, but Multi-Krum can keep at most "
                          f"n - f = {sites - f} updates")
