"""The local budget: at least min_steps optimizer steps a round, so a small site is not starved."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medfed.client.trainer import SiteTrainer, TrainOptions
from medfed.data.dataset import Samples, SiteData
from medfed.data.transforms import Preprocess
from medfed.models.tabular import logistic
from medfed.types import Task


def trainer(n: int) -> SiteTrainer:
    rng = np.random.default_rng(0)
    rows = Samples(rng.normal(size=(n, 4)).astype(np.float32), np.arange(n) % 2)
    data = SiteData("s", rows, rows)
    return SiteTrainer(data, logistic(4, 2), Task.BINARY, Preprocess(None, None),
                       torch.device("cpu"), 0, False)


@pytest.mark.parametrize(("n", "epochs", "min_steps"), [(40, 1, 0), (40, 1, 7), (40, 2, 3),
                                                        (200, 1, 5), (40, 3, 10)])
def test_a_round_is_the_larger_of_its_epochs_and_its_step_budget(n, epochs, min_steps):
    site = trainer(n)
    update = site.train(site.model.state_dict(),
                        TrainOptions(epochs=epochs, min_steps=min_steps, batch_size=16))
    assert update.n_steps == max(math.ceil(n / 16) * epochs, min_steps)


def test_an_empty_site_does_not_loop_for_ever():
    site = trainer(0)
    assert site.train(site.model.state_dict(), TrainOptions(min_steps=5)).n_steps == 0
