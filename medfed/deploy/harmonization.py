"""Histogram harmonization in a deployment: the coordinator combines the sites' intensity quantile
functions (each site's hello carries its own: 101 intensities and a pixel count, aggregates) into one
reference with the simulation's rule (data/harmonize.py: the pixel-weighted mean), keeps it in its
state, audits its hash and sends it with every model; a resumed coordinator sends the same one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from medfed.data.harmonize import QUANTILE_LEVELS, Quantiles, reference
from medfed.deploy.site_worker import REFERENCE
from medfed.deploy.state import StateStore
from medfed.errors import NotEnoughSites
from medfed.task_schema import TaskSchema
from medfed.transport.grpc_transport import GrpcTransport

STATE_KEY = "harmonize_reference"


def share_reference(task: TaskSchema, transport: GrpcTransport, store: StateStore,
                    audit: Callable[..., None], say: Callable[[str], None]) -> None:
    """Fix the federation's reference once (from the connected sites' quantiles) and send it
    with every model from now on."""
    if task.harmonize != "histogram" or REFERENCE in transport.common_options:
        return
    stored = store.get(STATE_KEY)
    if stored is None:
        fits = {}
        for site in transport.registry.connected():
            channel = transport.registry.get(site)
            fit = site_quantiles(channel.info.get("quantiles")) if channel else None
            if fit is not None:
                fits[site] = fit
        if not fits:
            raise NotEnoughSites("no connected site sent its intensity quantiles for histogram "
                                 "harmonization")
        stored = json.dumps(reference(list(fits.values())).tolist())
        store.put(STATE_KEY, stored)
        audit("harmonization_reference", sites=sorted(fits),
              sha256=hashlib.sha256(stored.encode()).hexdigest())
        say(f"histogram reference combined from {', '.join(sorted(fits))}")
    transport.common_options[REFERENCE] = json.loads(stored)


def site_quantiles(raw: Any) -> Quantiles | None:
    """A site's quantile summary, checked (a bad one leaves that site out of the reference)."""
    if not isinstance(raw, dict):
        return None
    values, n = raw.get("values"), raw.get("n_pixels")
    if not isinstance(values, list) or len(values) != len(QUANTILE_LEVELS) or isinstance(n, bool) \
            or not isinstance(n, int) or not 0 < n < 1 << 50:
        return None
    array = np.asarray([v if isinstance(v, (int, float)) else np.nan for v in values], np.float64)
    if not np.isfinite(array).all() or (np.diff(array) < 0).any():
        return None
    return Quantiles(array, n)
