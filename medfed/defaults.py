"""Defaults chosen from the data: what a newcomer who gives only a data path should get.

Settings the user leaves unset stay None in the config (a sentinel: "choose for me"); once the
data is read (simulation) or the task schema is known (deployment), `choose_defaults` fills each
one from what the data is: tabular rows, 2D grey or RGB images, 3D volumes, binary masks. A flag
or config key always wins: only None fields are filled. Every choice is kept with a few words of
why, so `medfed run` can print them and summary.json can record them (`defaults`).

The filled config is concrete, so the config.toml a run writes reruns it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from medfed.config import CNN_WIDTH, RunConfig
from medfed.data.dataset import DataSource
from medfed.errors import ConfigError
from medfed.task_schema import TaskSchema

# Local training budget: each site takes at least this many optimizer steps per round (a site
# with 150 images at batch 32 would otherwise take 5 steps a round from a fresh optimizer).
LOCAL_STEPS = 20
# Augmentation from this image side up: below it a bilinear warp blurs most of the few pixels
# there are, and measured on 28-32 px images it slowed learning within the rounds given
# (benchmarks/RESULTS.md, "Defaults (issue 15)").
AUGMENT_FROM_SIDE = 64
# DP-SGD on 2D images up to this side trains ScatterNet (models/scattering.py): PneumoniaMNIST at
# epsilon = 8 per site, 0.947 test AUC against the cnn's 0.90 (RESULTS, "DP-SGD that costs
# little"); larger images were not measured, and their coefficients cost 81x the image's memory.
SCATTER_UP_TO_SIDE = 64
MASK_SAMPLE = 64  # images looked at to tell binary masks from intensity images
# Keep the round with the best federated validation AUC only when the sites' validation splits
# hold at least this many samples together: below it the AUC's standard error (~0.05 at 70 rows)
# is larger than what separates one round from the next, and picking the best of 20 noisy scores
# picks noise. Measured (RESULTS, "Keeping the best round"): RetinaMNIST (120 validation rows)
# +0.008, PneumoniaMNIST (523) +0.007, the demo (150) -0.001, UCI heart (74) -0.028.
KEEP_BEST_FROM_VAL = 100
# Shares of one pool count as label-skewed when some site's label distribution is this far (total
# variation) from the pool's. Batch statistics of a site that holds mostly one class normalize
# that class's features away and do not average into the pool's (Hsieh et al., ICML 2020): on
# PneumoniaMNIST under Dirichlet 0.5, FedAvg with batch norm fell from 0.930 test AUC at round 4 to
# 0.756 at round 20, with instance norm it rose to 0.931 (RESULTS, "Architectures"). Measured:
# Dirichlet 0.5 gives 0.74; iid shares 0.01-0.03 (PneumoniaMNIST) and 0.05-0.07 (RetinaMNIST, 5
# grades at ~200 images a site). Much smaller iid sites can pass 0.1 by chance and get instance
# norm, whose per-image statistics suit sites that small anyway.
LABEL_SKEW_FROM = 0.1
# Rounds: a fixed 20 where the last round's model is the result (a deployment, small validation
# splits, DP-SGD whose noise is calibrated for the rounds it will run). Where the best validation
# round is kept, 40 is a cap and the run stops after 5 scored rounds without a better federated
# validation AUC: the demo's federation still improved at round 20 (kept round 28 of 40, test AUC
# +0.010 over 3 seeds) while RetinaMNIST and AdrenalMNIST3D peak by rounds 6-14 (RESULTS,
# "The demo re-measured on a slower host" and "Rounds as a cap, with patience").
# Patience never stops a default run before ROUNDS: 3D volumes and RetinaMNIST plateau in their
# first rounds (AdrenalMNIST3D seed 0 kept round 1 and stopped at round 6, test AUC 0.802 against
# 0.898 over 20 rounds), so the cap only ever adds rounds to the fixed count it replaces.
ROUNDS = 20
ROUNDS_CAP = 40
PATIENCE = 5


@dataclass(frozen=True)
class DataFacts:
    """What the choices depend on: the kind of data and how the sites' training labels are mixed;
    never the test set."""

    spatial_dims: int  # 0: tabular rows
    channels: int
    binary_masks: bool = False  # every value 0 or white: a shape, not an intensity image
    # The sites are the data's own groups (hospitals, scanners), whose images may differ; False:
    # they are shares of one pool (iid, dirichlet, quantity), acquired alike.
    natural_sites: bool = True
    side: int | None = None  # the smallest image side the model sees (after --image-size)
    # The largest total-variation distance of a site's training labels from all sites' together
    # (label_skew below); 0 where unknown (a coordinator sees no labels).
    label_skew: float = 0.0

    @property
    def kind(self) -> str:
        if self.spatial_dims == 0:
            return "tabular rows"
        if self.binary_masks:
            return f"{self.spatial_dims}D binary masks"
        colour = "RGB" if self.channels == 3 else "grey" if self.channels == 1 else \
            f"{self.channels}-channel"
        return f"{self.spatial_dims}D {colour} images" if self.spatial_dims == 2 else \
            f"3D {colour} volumes"

    @classmethod
    def of_source(cls, source: DataSource, partition: str, image_size: int | None = None,
                  label_skew: float = 0.0) -> DataFacts:
        side = image_size or (min(source.pool.x.shape[2:]) if source.spatial_dims else None)
        return cls(source.spatial_dims, source.in_channels, _binary_masks(source),
                   natural_sites=partition == "natural", side=side, label_skew=label_skew)

    @classmethod
    def of_task(cls, task: TaskSchema) -> DataFacts:
        """A coordinator sees no data: masks cannot be told from images, so it assumes images;
        its sites are hospitals, each with its own scanners."""
        return cls(task.spatial_dims, task.channels, side=task.image_size)


@dataclass(frozen=True)
class Choice:
    value: Any
    why: str


@dataclass(frozen=True)
class Defaults:
    """The filled config and what was chosen for it (config key -> Choice), in choosing order."""

    config: RunConfig
    chosen: dict[str, Choice] = field(default_factory=dict)

    def record(self) -> dict[str, dict[str, Any]]:
        """summary.json's `defaults`: each chosen key's value and reason."""
        return {key: {"value": c.value, "why": c.why} for key, c in self.chosen.items()}

    def lines(self) -> list[str]:
        """One compact line per choice, for the console."""
        return [f"{key} = {_show(c.value)}  ({c.why})" for key, c in self.chosen.items()]

    def with_choice(self, key: str, value: Any, why: str, config: RunConfig) -> Defaults:
        return Defaults(config, {**self.chosen, key: Choice(value, why)})


def choose_defaults(config: RunConfig, facts: DataFacts) -> Defaults:
    """Every None setting of config filled from the facts; settings already given are kept."""
    out = Defaults(config)
    for step in (_model, _norm, _augment, _local_budget):
        out = step(out, facts)
    return out


def choose_sites(defaults: Defaults, sites: int, partition: str, natural: bool) -> Defaults:
    """The partition and number of sites, once the federation is built from the data."""
    data = defaults.config.data
    out = defaults
    if data.partition is None:
        why = "the data's own sites" if natural else "the data has no natural sites"
        out = out.with_choice("partition", partition, why,
                              replace(out.config, data=replace(out.config.data, partition=partition)))
    if data.sites is None:
        why = ("one per natural group of the data" if partition == "natural"
               else "one per proportion given" if data.sizes or data.proportions
               else "the default for a split pool")
        config = out.config
        out = out.with_choice("sites", sites, why, replace(config, data=replace(config.data,
                                                                                 sites=sites)))
    return out


def choose_keep_best(defaults: Defaults, n_val: int) -> Defaults:
    """Whether to keep the round with the best federated validation score (server/best_model.py),
    once the sites' validation splits are counted (simulation only: a deployment keeps the last)."""
    fed = defaults.config.federation
    if fed.keep_best is not None:
        return defaults
    if fed.eval_every == 0:
        on, why = False, "eval_every = 0: no round is scored on validation data"
    elif n_val < KEEP_BEST_FROM_VAL:
        on, why = False, (f"{n_val} validation samples: too few to tell rounds apart "
                          f"(from {KEEP_BEST_FROM_VAL})")
    else:
        on, why = True, f"the round with the best validation AUC over {n_val} samples: late rounds overfit"
    return defaults.with_choice("keep_best", on, why, _set(defaults.config, "federation",
                                                           keep_best=on))


def choose_rounds(defaults: Defaults) -> Defaults:
    """Once keep_best is settled: how many rounds, and whether to stop early on validation (all
    three chosen together; a setting given is kept)."""
    fed, dp = defaults.config.federation, defaults.config.privacy.dp_sgd
    if fed.keep_best and not dp and fed.rounds is None and fed.patience is None:
        plan = {"rounds": (ROUNDS_CAP, "a cap: the run stops once validation stops improving"),
                "patience": (PATIENCE, (f"stop after {PATIENCE} scored rounds without a better "
                                        "federated validation AUC")),
                "min_rounds": (ROUNDS, (f"no stop before round {ROUNDS}: a slow start is not a "
                                        "plateau"))}
    else:
        why = ("DP-SGD: its noise is calibrated for a fixed number of rounds" if dp
               else "no round is kept on validation: the last round's model is the result"
               if not fed.keep_best else "--rounds or --patience given")
        plan = {"rounds": (ROUNDS, why), "patience": (0, why), "min_rounds": (0, why)}
    out = defaults
    for key, (value, why) in plan.items():
        if getattr(fed, key) is None:
            out = out.with_choice(key, value, why, _set(out.config, "federation", **{key: value}))
    return out


def choose_lr_schedule(defaults: Defaults) -> Defaults:
    """Once keep_best is settled: a decaying rate where the last round's model is the result (no
    round is kept on validation), so that model is a settled one rather than one step of a noisy
    walk; a constant one where the best validation round is kept (it may come early)."""
    config = defaults.config
    if config.training.lr_schedule is not None:
        return defaults
    if config.privacy.dp_sgd:
        value, why = "constant", "DP-SGD trains at its own rate (dp_lr)"
    elif config.federation.keep_best:
        value, why = "constant", "the best validation round is kept, whenever it comes"
    else:
        value, why = "cosine", "the last round's model is the result: the rate decays so it settles"
    return defaults.with_choice("lr_schedule", value, why,
                                _set(config, "training", lr_schedule=value))


def label_skew(site_counts: list[list[int]]) -> float:
    """The largest total-variation distance between a site's label distribution and that of all
    sites together (0: every site holds the same mix; 1: disjoint classes). Counts per class
    (per finding for multi-label, read as a distribution over findings)."""
    counts = np.asarray(site_counts, dtype=np.float64)
    counts = counts[counts.sum(axis=1) > 0]
    if len(counts) < 2:
        return 0.0
    pool = counts.sum(axis=0) / counts.sum()
    shares = counts / counts.sum(axis=1, keepdims=True)
    return float(0.5 * np.abs(shares - pool).sum(axis=1).max())


def _model(d: Defaults, facts: DataFacts) -> Defaults:
    m = d.config.model
    if m.model is not None:
        return d
    if facts.spatial_dims == 0:
        if m.width != CNN_WIDTH:
            raise ConfigError("width applies to --model cnn only; this data is tabular rows "
                              "(use --model mlp or logistic)")
        name, why = "mlp", "tabular rows: a small MLP"
    elif (d.config.privacy.dp_sgd and facts.spatial_dims == 2 and facts.side is not None
          and facts.side <= SCATTER_UP_TO_SIDE):
        name, why = "scatter", ("DP-SGD: a small CNN on fixed scattering features (Tramer & Boneh "
                                "2021), less noise per useful gradient")
    else:
        name, why = "cnn", f"{facts.kind}: the small {facts.spatial_dims}D CNN"
    return d.with_choice("model", name, why, _set(d.config, "model", model=name))


def _norm(d: Defaults, facts: DataFacts) -> Defaults:
    m, dp = d.config.model, d.config.privacy.dp_sgd
    if m.norm is not None:
        return d
    if facts.spatial_dims == 0:
        norm, why = "group", "tabular rows: mlp takes batch or group; group is site-independent"
    elif dp:
        norm, why = "group", "DP-SGD: per-sample gradients need a norm without batch statistics"
    elif facts.binary_masks:
        norm, why = "batch", "binary masks: batch statistics keep each volume's own scale"
    elif facts.natural_sites:
        norm, why = "instance", "per image: the sites' scanners differ, batch averages do not transfer"
    elif facts.label_skew >= LABEL_SKEW_FROM:
        norm, why = "instance", (f"per image: the sites' labels are skewed (up to {facts.label_skew:.2f} "
                                 "from the pool's), batch statistics of one-class batches do not average")
    else:
        norm, why = "batch", "sites share one pool's acquisition: batch statistics transfer"
    return d.with_choice("norm", norm, why, _set(d.config, "model", norm=norm))


def _augment(d: Defaults, facts: DataFacts) -> Defaults:
    if d.config.data.augment is not None:
        return d
    if facts.spatial_dims == 0:
        on, why = False, "tabular rows: nothing to flip or rotate"
    elif facts.binary_masks:
        on, why = False, "binary masks: the crop rescales the shape and the warp blurs the mask"
    elif facts.side is not None and facts.side < AUGMENT_FROM_SIDE:
        on, why = False, f"{facts.side}-px images: a warp blurs the few pixels there are"
    else:
        on, why = True, f"{facts.kind}: flip, rotation +-10 degrees, 90-100% crop"
    return d.with_choice("augment", on, why, _set(d.config, "data", augment=on))


def _local_budget(d: Defaults, facts: DataFacts) -> Defaults:
    """One local epoch, and at least LOCAL_STEPS optimizer steps, unless epochs were given."""
    t, out = d.config.training, d
    if t.local_epochs is None:
        out = out.with_choice("local_epochs", 1, "one pass over the site's data per round",
                              _set(out.config, "training", local_epochs=1))
    if t.local_steps is None:
        if d.config.privacy.dp_sgd:
            steps, why = 0, "DP-SGD: its epsilon accounting counts epochs"
        elif t.local_epochs is not None:
            steps, why = 0, "--local-epochs given: epochs only"
        elif facts.spatial_dims == 3:
            steps, why = 0, "3D volumes: a step costs ~30 2D steps; one epoch keeps run times"
        else:
            steps, why = LOCAL_STEPS, "at least this many steps a round: small sites not starved"
        out = out.with_choice("local_steps", steps, why, _set(out.config, "training",
                                                             local_steps=steps))
    return out


def _set(config: RunConfig, section: str, **values: Any) -> RunConfig:
    return replace(config, **{section: replace(getattr(config, section), **values)})


def _binary_masks(source: DataSource) -> bool:
    """Images holding only 0 and white (segmentation masks, shapes): a sample of them is enough."""
    if source.spatial_dims == 0 or len(source.pool) == 0:
        return False
    x = np.asarray(source.pool.x[:MASK_SAMPLE])
    return bool(np.isin(x, (0, source.max_value)).all())


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
