"""A site's own privacy policy: the [policy] table of its SITE.toml, enforced at the site.

The coordinator proposes a plan (the federation's configuration); the site checks it against its
policy when it connects and refuses a plan that violates it, with one line the coordinator logs and
audits. The coordinator cannot override it: the policy never leaves the site, and what the site
sends is decided here.

    [policy]
    max_epsilon = 8.0                  # the most DP-SGD epsilon this site ever spends (its ledger
                                       # counts every federation); set: the site trains only with DP-SGD
    require_secure_aggregation = false # refuse a plan without secure aggregation
    min_threshold = 3                  # the lowest secure-aggregation threshold accepted
    share_data_summary = true          # split sizes, label counts, intensity quantiles in its hello
    share_training_loss = true         # each round's mean training loss with its update
    share_validation_metrics = true    # each round's metrics on its validation split
    share_evaluation = true            # the final model's score summaries and metrics (and baseline)
    allow_phi = false                  # use DICOM files that still carry identifying tags
    allow_split_learning = false       # take part in split learning (algorithm "split"): every
                                       # training image's activations at the cut leave the site

A `share_*` key left out means: share, unless the plan protects the site (DP-SGD, client-level DP or
secure aggregation), whose guarantee covers the model updates only: then those releases are off
unless the site turns them on, so under DP everything released is covered by epsilon or off by
default. The logit-adjustment prior (label counts entering every gradient unclipped) is refused
with DP by the configuration itself.

Split learning is opt-in: its first cut is a layer or two into the network, so the activations a
site sends for every training image are close to invertible to the image (and the gradients it
receives depend on its labels): far more patient data than a model update.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from medfed.config import RunConfig
from medfed.config_split import SPLIT
from medfed.errors import ConfigError
from medfed.registry import unknown_choice

SHARES = ("share_data_summary", "share_training_loss", "share_validation_metrics", "share_evaluation")


@dataclass(frozen=True)
class SitePolicy:
    max_epsilon: float | None = None
    require_secure_aggregation: bool = False
    min_threshold: int | None = None
    share_data_summary: bool | None = None
    share_training_loss: bool | None = None
    share_validation_metrics: bool | None = None
    share_evaluation: bool | None = None
    allow_phi: bool = False
    allow_split_learning: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SitePolicy:
        kinds = {f.name: f.type for f in fields(cls)}
        for key, value in raw.items():
            if key not in kinds:
                raise unknown_choice("key in [policy]", key, list(kinds))
            expected = (bool,) if "bool" in str(kinds[key]) else (int, float)
            if isinstance(value, bool) != (expected == (bool,)) or not isinstance(value, expected):
                raise ConfigError(f"[policy] {key} must be {'true or false' if expected == (bool,) else 'a number'}, "
                                  f"got {value!r}")
        policy = cls(**raw)
        if policy.max_epsilon is not None and not policy.max_epsilon > 0:
            raise ConfigError(f"[policy] max_epsilon must be > 0, got {policy.max_epsilon}")
        if policy.min_threshold is not None and (not isinstance(policy.min_threshold, int)
                                                 or policy.min_threshold < 2):
            raise ConfigError(f"[policy] min_threshold must be a whole number >= 2, got "
                              f"{policy.min_threshold}")
        return policy

    def refusal(self, config: RunConfig, sites: int) -> str | None:
        """Why this site refuses the federation's plan (one line), or None."""
        p = config.privacy
        if config.federation.algorithm == SPLIT and not self.allow_split_learning:
            return ("this site does not take part in split learning (its policy: "
                    "allow_split_learning = false): the cut activations of every training image "
                    "would leave the site; set allow_split_learning = true in [policy] to accept")
        if self.max_epsilon is not None and not p.dp_sgd:
            return (f"this site trains only with DP-SGD (its policy: max_epsilon = {self.max_epsilon:g}); "
                    "the plan has no dp_sgd")
        if self.require_secure_aggregation and not p.secure_aggregation:
            return "this site requires secure aggregation (its policy); the plan has none"
        if self.min_threshold is not None and p.secure_aggregation:
            threshold = p.threshold or sites // 2 + 1
            if threshold < self.min_threshold:
                return (f"the plan's secure-aggregation threshold {threshold} is below this site's "
                        f"min_threshold {self.min_threshold}")
        return None

    def shares(self, what: str, config: RunConfig) -> bool:
        """Whether the site sends `what` (one of SHARES) under this plan."""
        chosen = getattr(self, what)
        if chosen is not None:
            return bool(chosen)
        return not config.privacy.enabled

    def epsilon_cap(self, target: float | None) -> float | None:
        """The site's DP-SGD budget: the plan's target, never above the site's own maximum."""
        caps = [c for c in (target, self.max_epsilon) if c is not None]
        return min(caps) if caps else None
