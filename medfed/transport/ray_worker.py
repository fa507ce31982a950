"""A Ray worker of the simulation's Ray backend: one process that serves many sites in turn.

Sites are data and state, not processes: the driver places each site on one worker for the whole
run (transport/ray_pool.py), and the worker keeps what the site keeps between rounds (SCAFFOLD's
control variate, its DP-SGD accountant and noise stream, compression's error feedback), built by
the same SiteRecipe as in-process sites. Models travel as safetensors bytes in both directions, as
over the in-process transport, so no tensor is shared with the driver and byte counts are those a
network would carry. A site's failure comes back as data (a JSON error), never as a dead worker.

This module imports no Ray: Ray wraps the class (ray.remote) in the driver, and calls it here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import TYPE_CHECKING

import torch
from torch import nn

from medfed.client.trainer import LocalSite, TrainOptions
from medfed.data.dataset import SiteData
from medfed.device import pick_device
from medfed.errors import MedfedError, TransportError
from medfed.simulated_site import SiteRecipe
from medfed.transport.codec import decode_state, encode_state
from medfed.transport.inprocess import at_site
from medfed.types import SiteId

if TYPE_CHECKING:
    from medfed.privacy.mechanisms import Mechanisms

Reply = bytes | str  # a site's answer: safetensors bytes (train), JSON (evaluate), or a JSON error


class SiteWorker:
    def __init__(self, index: int, threads: int, device: str) -> None:
        # A worker owns cpus_per_site cores: more threads would fight the other workers for them.
        torch.set_num_threads(threads)
        self.index = index
        self.device = pick_device(device)
        self.sites: dict[tuple[int, SiteId], LocalSite] = {}  # (training run, site) -> its stack
        self.privacy: dict[int, Mechanisms] = {}  # training run -> its sites' privacy wrappers
        self.models: dict[object, nn.Module] = {}  # one model for every site here (see _model)

    def where(self) -> dict[str, str]:
        """Where this worker runs (rounds.jsonl records it for each site it trains)."""
        import ray  # present: this runs in a Ray worker

        return {"node": ray.get_runtime_context().get_node_id(),
                "ip": ray.util.get_node_ip_address(), "worker": str(self.index),
                "pid": str(os.getpid()), "device": str(self.device)}

    def add_site(self, run: int, recipe: SiteRecipe, private: bool, federation: list[SiteId],
                 k: int, data: SiteData) -> str:
        """Build the k-th site of a training run here; `private`: with the run's privacy
        wrappers (the baselines have none). Returns "" or the JSON error that stopped it."""
        try:
            privacy = self.privacy.get(run)
            if private and privacy is None:
                from medfed.privacy.mechanisms import Mechanisms

                privacy = self.privacy[run] = Mechanisms.build(recipe.config, federation)
            trainer = recipe.trainer(k, data, self.device, self._model(recipe, private))
            self.sites[run, data.site] = recipe.wrapped({data.site: trainer}, privacy, k)[data.site]
        except MedfedError as exc:
            return _error(exc)
        return ""

    def _model(self, recipe: SiteRecipe, private: bool) -> nn.Module | None:
        """The model this worker's sites share (SiteRecipe.shares_model); None: a site of its own."""
        if not recipe.shares_model(private):
            return None
        kind = (recipe.network, recipe.config.model, recipe.spec)  # the same network, built alike
        if kind not in self.models:
            self.models[kind] = recipe.model().to(self.device)
        return self.models[kind]

    def train(self, run: int, site: SiteId, blob: bytes, options: str) -> Reply:
        """Train a site on the model in blob; options: TrainOptions as JSON."""
        try:
            trainer = self._site(run, site)
            update = at_site(site, lambda: trainer.train(decode_state(blob),
                                                         TrainOptions(**json.loads(options))))
        except MedfedError as exc:
            return _error(exc)
        return encode_state(update.state, {"n_samples": update.n_samples,
                                           "n_steps": update.n_steps, "metrics": update.metrics})

    def evaluate(self, run: int, site: SiteId, blob: bytes, split: str) -> Reply:
        """A site scores the model in blob on its own split; only metrics come back (JSON)."""
        try:
            trainer = self._site(run, site)
            return json.dumps(at_site(site, lambda: trainer.evaluate(decode_state(blob), split)))
        except MedfedError as exc:
            return _error(exc)

    def dp_budgets(self, run: int) -> str:
        """Each DP-SGD site's budget here, for the run's privacy summary (privacy.report())."""
        privacy = self.privacy.get(run)
        sites = privacy.dp_sites if privacy is not None else {}
        return json.dumps({site: {"noise_multiplier": dp.budget.noise_multiplier,
                                  "rate": dp.budget.rate, "delta": dp.budget.delta,
                                  "target": dp.budget.target, "stopped": dp.stopped,
                                  "history": [list(h) for h in dp.budget.accountant.history]}
                           for site, dp in sites.items()})

    def _site(self, run: int, site: SiteId) -> LocalSite:
        if (run, site) not in self.sites:
            raise TransportError(f"unknown site '{site}' on Ray worker {self.index}")
        return self.sites[run, site]


def _error(exc: MedfedError) -> str:
    return json.dumps({"error": type(exc).__name__, "message": str(exc)})


def options_json(options: TrainOptions) -> str:
    return json.dumps(asdict(options))
