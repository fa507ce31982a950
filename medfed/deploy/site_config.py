"""A site's own configuration: its data, where it keeps its state, and how it splits its data.

The coordinator never sees this file. It is what a hospital writes (SITE.toml), or gives as
`medfed client` flags:

    site = "site-a"               # its name: the common name of its certificate (or --site)
    state = "medfed-site-a"       # its state folder: results, reports, logs (default ./medfed-<site>)
    seed = 0                      # its splits: train / validation / test, deterministic across restarts

    [data]                        # the keys of a run's [data] that describe one site's files
    dataset = "dicom"             # dicom, nifti, chestxray14, medmnist, heart-disease, images, synthetic
    data_dir = "/data/xray"       # relative paths are relative to this file's folder
    labels = "/data/xray/labels.csv"
    image_size = 64
    val_fraction = 0.1            # of the site's non-test data, by patient / study, stratified
    test_fraction = 0.2           # held out as the site's own test split

    [policy]                      # what the site allows: deploy/site_policy.py

The whole data folder is this one site (its subfolders are not separate sites as in simulation).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medfed.config import DataConfig
from medfed.config_file import SECTIONS, _build, read_toml
from medfed.deploy.site_policy import SitePolicy
from medfed.errors import ConfigError
from medfed.registry import unknown_choice

TOP_KEYS = ("site", "state", "seed", "data", "policy")
# [data] keys that only make sense for a whole simulated federation, not for one site's files.
FEDERATION_ONLY = ("partition", "alpha", "sizes", "proportions", "harmonize")
PATH_KEYS = ("data_dir", "data_file", "labels", "label_map")


@dataclass(frozen=True)
class SiteConfig:
    site: str
    state: Path
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    policy: SitePolicy = field(default_factory=SitePolicy)


def load_site_config(path: Path | None, site: str | None, data_overrides: dict[str, Any],
                     state: Path | None = None, seed: int | None = None) -> SiteConfig:
    """SITE.toml (when given) with the command line's flags on top; one ConfigError if wrong."""
    raw = read_toml(path, "site configuration") if path is not None else {}
    unknown = set(raw) - set(TOP_KEYS)
    if unknown:
        raise unknown_choice("key in the site configuration", min(unknown), list(TOP_KEYS))
    name = site or raw.get("site")
    if not isinstance(name, str) or not name:
        raise ConfigError("the site's name is missing: give --site NAME or site = \"NAME\" in SITE.toml")
    if site and raw.get("site") not in (None, site):
        raise ConfigError(f"--site {site} but the site configuration says site = {raw['site']!r}")
    data = raw.get("data", {})
    if not isinstance(data, dict):
        raise ConfigError("[data] must be a table of keys")
    data = _resolve_paths({**data}, path.parent if path is not None else Path.cwd())
    data |= {k: v for k, v in data_overrides.items() if v is not None}
    for key in FEDERATION_ONLY:
        if key in data and data.get("dataset") != "synthetic":
            raise ConfigError(f"[data] {key} is not a site's setting: a site's data is one site"
                              + (" (harmonization is the federation's [task] harmonize)"
                                 if key == "harmonize" else ""))
    raw_policy = raw.get("policy", {})
    if not isinstance(raw_policy, dict):
        raise ConfigError("[policy] must be a table of keys")
    if "allow_phi" in data:
        raise ConfigError("allow_phi is the site's [policy] allow_phi, not a [data] key")
    policy = SitePolicy.from_dict(raw_policy)
    data["allow_phi"] = policy.allow_phi
    folder = state or raw.get("state") or f"medfed-{name}"
    if path is not None and state is None and raw.get("state"):
        folder = path.parent / str(raw["state"])
    seed_value = seed if seed is not None else raw.get("seed", 0)
    if isinstance(seed_value, bool) or not isinstance(seed_value, int) or seed_value < 0:
        raise ConfigError(f"seed must be a whole number >= 0, got {seed_value!r}")
    return SiteConfig(name, Path(folder), seed_value, _data_config(data, name), policy)


def _data_config(values: dict[str, Any], site: str) -> DataConfig:
    config: DataConfig = _build(SECTIONS["data"], values, "[data]")
    if config.dataset == "synthetic":  # the demo's sites are shares of one generated federation
        return config
    # A site is one site of the federation: its whole folder, named as the site, subfolders too.
    return replace(config, sites=1, partition=None, site_name=site)


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    for key in PATH_KEYS:
        if isinstance(data.get(key), str):
            data[key] = str((base / data[key]).expanduser())
    return data


def describe(config: SiteConfig) -> dict[str, Any]:
    """The site's configuration as the site logs it (paths included: it stays at the site)."""
    return {"site": config.site, "state": str(config.state), "seed": config.seed,
            "data": {k: v for k, v in dataclasses.asdict(config.data).items() if v not in (None, ())}}
