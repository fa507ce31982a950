"""A federation file: the task (medfed/task_schema.py), how to learn it (the [model], [federation],
[training] and [privacy] keys of `medfed run`), and a [deployment] table. It names no data: each
site's data, splits and paths are in that site's own configuration (deploy/site_config.py), so
[data] may only say whether sites augment their training images (`augment`).

    [deployment]
    address = "127.0.0.1:50051"   # where the server listens (--address overrides it)
    sites = ["site-a", "site-b"]  # the sites allowed in (their certificates' names; required)
    min_sites_to_start = 3        # the first round starts when this many are connected (default: all)
    round_deadline = 3600.0       # seconds a round waits for updates; late sites are left out
    eval_deadline = 600.0         # seconds a site has to score a model
    start_timeout = 86400.0       # seconds the server waits for min_sites_to_start, then gives up
    round_retries = 3             # a round without min_sites updates is run again this many times
    max_samples_per_site = 10000000  # a larger sample count in an update is refused
    max_weight_share = 0.5        # optional: no site above this share of a round's weight (capped)

The round's min_sites (to close a round) is [federation] min_sites, as in simulation.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medfed.config import RunConfig
from medfed.config_file import config_from_dict, read_toml
from medfed.defaults import DataFacts, choose_defaults, choose_lr_schedule, choose_rounds
from medfed.errors import ConfigError
from medfed.registry import unknown_choice
from medfed.task_schema import TaskSchema
from medfed.transport.grpc_channel import split_address

SITE_DATA_KEYS = ("augment",)  # what a federation may say about the sites' data: nothing else


@dataclass(frozen=True)
class DeploymentConfig:
    address: str = "127.0.0.1:50051"
    sites: tuple[str, ...] = ()
    min_sites_to_start: int | None = None
    round_deadline: float = 3600.0
    eval_deadline: float = 600.0
    start_timeout: float = 86400.0
    round_retries: int = 3
    max_samples_per_site: int = 10**7
    max_weight_share: float | None = None

    def __post_init__(self) -> None:
        split_address(self.address)
        for name in ("round_deadline", "eval_deadline", "start_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"[deployment] {name} must be > 0, got {getattr(self, name)}")
        if self.min_sites_to_start is not None and self.min_sites_to_start < 1:
            raise ConfigError(f"[deployment] min_sites_to_start must be >= 1, "
                              f"got {self.min_sites_to_start}")
        if self.max_samples_per_site < 1:
            raise ConfigError(f"[deployment] max_samples_per_site must be >= 1, "
                              f"got {self.max_samples_per_site}")
        if self.max_weight_share is not None and not 0 < self.max_weight_share <= 1:
            raise ConfigError(f"[deployment] max_weight_share must be in (0, 1], "
                              f"got {self.max_weight_share}")
        if self.round_retries < 0:
            raise ConfigError(f"[deployment] round_retries must be >= 0, got {self.round_retries}")


@dataclass(frozen=True)
class FederationFile:
    config: RunConfig  # how to learn; its [data] holds no path (data.sites: the number of sites)
    task: TaskSchema
    deployment: DeploymentConfig


def load_federation(path: Path) -> FederationFile:
    return _federation(read_toml(path), str(path))


def load_federation_text(text: str, source: str) -> FederationFile:
    """A federation file sent as text (a submitted job); one ConfigError if it is not valid."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    return _federation(raw, source)


def _federation(raw: dict[str, Any], path: str) -> FederationFile:
    deployment = raw.pop("deployment", {})
    if not isinstance(deployment, dict):
        raise ConfigError("[deployment] must be a table of keys")
    if "task" not in raw:
        raise ConfigError(f"{path} has no [task] table: a federation declares its task (kind, "
                          "classes, spatial_dims, channels, image_size), and each site brings its "
                          "own data (medfed client --site-config SITE.toml)")
    task = TaskSchema.from_json(raw.pop("task"))
    settings = deployment_config(deployment)
    if not settings.sites:
        raise ConfigError("[deployment] sites must list the federation's sites (the names on "
                          "their certificates)")
    if any(site.startswith("admin.") for site in settings.sites):
        raise ConfigError("[deployment] sites cannot be administrators' certificates (admin.*)")
    data = raw.get("data", {})
    if not isinstance(data, dict):
        raise ConfigError("[data] must be a table of keys")
    paths = sorted(set(data) - set(SITE_DATA_KEYS))
    if paths:
        raise ConfigError(f"[data] {paths[0]} belongs in each site's own configuration (SITE.toml), "
                          f"not in the federation file; [data] here may only set "
                          f"{', '.join(SITE_DATA_KEYS)}")
    raw["data"] = {**data, "sites": len(settings.sites)}
    # Settings left unset are chosen from the task schema, here, so every site gets them filled in.
    # A deployment keeps the last round's model (keep_best is refused below): its schedule follows.
    config = choose_lr_schedule(choose_rounds(choose_defaults(config_from_dict(raw, source=str(path)),
                                                              DataFacts.of_task(task)))).config
    _check_deployed_topology(config, task)
    if config.federation.keep_best:  # the coordinator keeps no snapshot of a better round yet
        raise ConfigError("keep_best runs in simulation only (medfed run / compare); a deployment "
                          "keeps the last round's model (leave keep_best unset or false)")
    if config.federation.patience or config.federation.min_rounds:  # no per-round federated score yet
        raise ConfigError("patience and min_rounds run in simulation only (medfed run / compare); "
                          "a deployment runs every round it is given (leave them unset or 0)")
    return FederationFile(config, task, settings)


def _check_deployed_topology(config: RunConfig, task: TaskSchema) -> None:
    """p2p runs through the server as a relay of sealed models (deploy/relay.py), hybrid with the
    server computing regional then global averages; README "Topologies" says what is not built."""
    fed = config.federation
    if fed.topology == "p2p" and fed.gossip == "braintorrent":
        raise ConfigError("gossip braintorrent runs in simulation only (medfed run / compare); a "
                          "deployed p2p federation gossips over ring, k-regular:K or full")
    if fed.topology == "p2p" and task.harmonize == "histogram":
        raise ConfigError("topology p2p does not relay a histogram reference; use [task] "
                          "harmonize = \"zscore\" or \"none\"")


def deployment_config(raw: dict[str, Any]) -> DeploymentConfig:
    kinds = {"address": str, "sites": list, "min_sites_to_start": int, "round_deadline": float,
             "eval_deadline": float, "start_timeout": float, "round_retries": int, "max_samples_per_site": int,
             "max_weight_share": float}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in kinds:
            raise unknown_choice("key in [deployment]", key, list(kinds))
        kind = kinds[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ConfigError(f"[deployment] {key} must be {kind.__name__}, got {value!r}")
        values[key] = tuple(str(v) for v in value) if kind is list else value
    return DeploymentConfig(**values)
