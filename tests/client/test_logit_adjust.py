"""Logit adjustment for label skew (--logit-adjust tau): each site trains on its logits plus
tau * log(its own add-one-smoothed label prior), so a site holding mostly one class stops pulling
the model toward that class; tau = 0 is the plain loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medfed.client.trainer import SiteTrainer, TrainOptions
from medfed.data.dataset import Samples, SiteData
from medfed.data.transforms import Preprocess
from medfed.errors import DataError
from medfed.types import Task


def site(labels: list[int], task: Task = Task.BINARY, features: np.ndarray | None = None,
         outputs: int = 2) -> SiteTrainer:
    y = np.asarray(labels, dtype=np.int64)
    x = features if features is not None else np.zeros((len(y), 3), dtype=np.float32)
    data = SiteData(site="s", train=Samples(x, y), val=Samples(x[:2], y[:2]))
    model = nn.Linear(x.shape[1], outputs)
    return SiteTrainer(data, model, task, Preprocess(None, None), torch.device("cpu"), 0, False)


def test_the_prior_is_the_sites_own_add_one_smoothed_label_frequencies():
    trainer = site([1] * 7 + [0])  # 1 of class 0, 7 of class 1 -> (2, 8) / 10 after smoothing
    np.testing.assert_allclose(trainer.log_prior(2).numpy(), np.log([0.2, 0.8]))
    unseen = site([2, 2, 2], outputs=3)  # a class the site never saw keeps a finite prior
    np.testing.assert_allclose(unseen.log_prior(3).numpy(), np.log([1 / 6, 1 / 6, 4 / 6]))


def test_the_adjusted_loss_is_cross_entropy_on_shifted_logits_and_zero_tau_is_the_plain_loss():
    trainer = site([0, 1, 1, 1])
    logits, y = torch.tensor([[0.3, -0.2], [1.0, 0.5]]), torch.tensor([0, 1])
    plain = trainer.task_loss(logits, y, TrainOptions())
    assert plain == pytest.approx(float(nn.functional.cross_entropy(logits, y)))
    shifted = logits + 2.0 * torch.log(torch.tensor([2 / 6, 4 / 6]))
    adjusted = trainer.task_loss(logits, y, TrainOptions(logit_adjust=2.0))
    assert adjusted == pytest.approx(float(nn.functional.cross_entropy(shifted, y)))


def test_a_skewed_site_trained_with_adjustment_leans_less_to_its_majority_class():
    # Uninformative features: all a model can learn is the site's prior. Plain cross-entropy
    # learns it (mostly class 1); with tau = 1 the raw logits stay near balanced.
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 3)).astype(np.float32)
    labels = [1] * 180 + [0] * 20
    options = {"epochs": 30, "batch_size": 50, "lr": 0.05}
    leaning = {}
    for tau in (0.0, 1.0):
        trainer = site(labels, features=features)
        update = trainer.train(trainer.model.state_dict(), TrainOptions(logit_adjust=tau, **options))
        trainer.model.load_state_dict(update.state)
        with torch.no_grad():
            leaning[tau] = torch.softmax(trainer.model(torch.from_numpy(features)), 1)[:, 1].mean()
    assert leaning[0.0] > 0.8 and abs(float(leaning[1.0]) - 0.5) < 0.1


def test_multilabel_data_is_refused_with_a_reason():
    trainer = site([0, 1], task=Task.MULTILABEL)
    with pytest.raises(DataError, match="needs single-label classes"):
        trainer.task_loss(torch.zeros(2, 2), torch.zeros(2, 2), TrainOptions(logit_adjust=1.0))
