"""Every algorithm continues exactly from its checkpoint: a run stopped after its first round, its
strategy rebuilt from the checkpoint the deployment's state store wrote (safetensors, read back)
and run on, ends with the same models as a run that was never stopped. The sites keep their
trainers across the stop, as deployed sites keep their processes while the server restarts.

Deliberate breaks that make this fail (tried by hand): restore() skipped (the second half starts
from the initial model); FedAdam's moments or SCAFFOLD's control variate left out of the
checkpoint; a site's SCAFFOLD c_k not kept per round (only with a round run twice, see
tests/deploy/test_resume.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medfed.algorithms.registry import StrategyContext, build_strategy
from medfed.config import ALGORITHMS, DataConfig, FederationConfig, RunConfig, TrainingConfig
from medfed.deploy.state import StateStore
from medfed.experiment import site_trainers, prepare, train_options
from medfed.server.round_loop import RoundPlan, run_rounds
from medfed.server.sampling import sample_sites
from medfed.transport.inprocess import InProcessTransport

ROUNDS = 3


def config(algorithm: str) -> RunConfig:
    return RunConfig(device="cpu", baselines=False,
                     data=DataConfig(sites=3, synthetic_samples=90, synthetic_test=20, image_size=16),
                     federation=FederationConfig(algorithm=algorithm, rounds=ROUNDS, fraction=0.5,
                                                 eval_every=0),
                     training=TrainingConfig(batch_size=16))


def run(setup, algorithm: str, store_folder: Path | None):
    """Rounds 1..ROUNDS; with a folder, stop after round 1, checkpoint, rebuild and go on."""
    sites = setup.federation.site_ids
    transport = InProcessTransport(site_trainers(setup, setup.federation.sites))
    options, fed = train_options(setup.config), setup.config.federation

    def strategy():
        ctx = StrategyContext(setup.initial, setup.parameter_keys, setup.norm_keys, sites, fed,
                              setup.config.training)
        return build_strategy(algorithm, ctx)

    rng = np.random.default_rng(np.random.SeedSequence([setup.config.seed, 2]))
    first = strategy()
    if store_folder is None:
        run_rounds(first, transport, sites, RoundPlan(ROUNDS, fed.fraction, eval_every=0), options, rng)
        return first
    history = run_rounds(first, transport, sites, RoundPlan(1, fed.fraction, eval_every=0), options, rng)
    store = StateStore(store_folder)
    store.record_round(history[0], first.checkpoint(), {"algorithm": algorithm})
    store.close()
    _, checkpoint = StateStore(store_folder).last_checkpoint()
    resumed = strategy()  # a new server process: nothing but the checkpoint
    resumed.restore(checkpoint)
    replay = np.random.default_rng(np.random.SeedSequence([setup.config.seed, 2]))
    sample_sites(sites, fed.fraction, replay, minimum=fed.min_sites)  # the server's _sampling
    run_rounds(resumed, transport, sites, RoundPlan(ROUNDS, fed.fraction, eval_every=0, start=1),
               options, replay)
    return resumed


# split's sites connect to the server's middle: its resume is in tests/algorithms/test_split.py
@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a != "split"])
def test_a_run_restored_from_its_checkpoint_ends_as_an_uninterrupted_run(algorithm: str,
                                                                         tmp_path: Path):
    setup = prepare(config(algorithm))
    whole = run(setup, algorithm, None)
    resumed = run(setup, algorithm, tmp_path)
    assert sorted(resumed.trained_sites) == sorted(whole.trained_sites)
    for site in setup.federation.site_ids:
        for key, value in whole.site_state(site).items():
            torch.testing.assert_close(resumed.site_state(site)[key], value, rtol=0, atol=0,
                                       msg=f"{algorithm} {site} {key}")
