"""A deployed site's data: loaded by the site, from its own configuration, with the same loaders
and the same split rules as simulation, so a site's train / validation / test split is the one it
has as a natural site of a simulated federation with the same seed.

Loading happens before the site connects: a wrong path or an unreadable folder is the site's own
error at start-up, and the site knows its task schema (deploy's hello) before it says hello.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medfed.data.dataset import DataSource, SiteData
from medfed.data.federation import build_federation, site_split
from medfed.data.sources import load_source
from medfed.deploy.site_config import SiteConfig
from medfed.errors import ConfigError
from medfed.task_schema import TaskSchema


@dataclass(frozen=True)
class LocalData:
    source: DataSource  # the site's whole data set (its test split is source.test's rows of it)
    data: SiteData  # its train / validation / test splits, before harmonization
    schema: TaskSchema  # what the site reports when it connects

    @property
    def sizes(self) -> dict[str, int]:
        test = self.data.test
        return {"n_train": len(self.data.train), "n_val": len(self.data.val),
                "n_test": len(test) if test is not None else 0}


def load_site_data(config: SiteConfig) -> LocalData:
    """The site's source and splits; the seeds as `prepare` derives them from a run's seed."""
    seeds = np.random.SeedSequence(config.seed).generate_state(2)
    source = load_source(config.data, int(seeds[0]))
    if config.data.dataset == "synthetic":  # the built-in demo: this site's share of it
        federation = build_federation(source, config.data, int(seeds[1]))
        if config.site not in federation.sites:
            raise ConfigError(f"site '{config.site}' is not a site of the synthetic federation; "
                              f"valid: {', '.join(federation.site_ids)}")
        data = federation.sites[config.site]
    else:  # the whole folder (or file) is this one site, split by its own name's stream
        data = site_split(source, config.site, np.arange(len(source.pool)), config.data.val_fraction,
                          int(seeds[1]), np.arange(len(source.test)))
    schema = TaskSchema.of_source(source, config.data.image_size)
    return LocalData(source, data, schema)
