"""One DDP worker's part of the pooled training, in this process (a gloo group of one): the shards
cover each global batch once, a worker of one trains what SiteTrainer trains, and a worker whose
shard of a batch is empty still joins the step and adds nothing to it.

Hand mutations that these tests catch (each tried once): an empty shard trained on a stand-in
image instead of zero rows (test_an_empty_shard_...); the sharded round drawing its own batch
order instead of the site's generator (test_one_worker_...); shard_rows overlapping or dropping a
row (test_the_shards_cover_every_batch_once).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import distributed as dist

from medfed.client.sharded_trainer import ShardedTrainer, has_batch_norm, shard_rows
from medfed.client.trainer import SiteTrainer, TrainOptions
from medfed.data.dataset import Samples, SiteData
from medfed.data.transforms import Preprocess
from medfed.models import ModelSpec, build_model
from medfed.types import Task


@pytest.fixture
def group_of_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    dist.init_process_group("gloo", init_method=(tmp_path / "rendezvous").as_uri(), rank=0,
                            world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def site(norm: str = "group") -> SiteTrainer:
    rng = np.random.default_rng(0)
    images = Samples(rng.integers(0, 255, (13, 1, 8, 8), dtype=np.uint8), np.arange(13) % 2)
    model = build_model("cnn", ModelSpec(2, 1, 2, norm, input_size=(8, 8), width=8), 0)
    return SiteTrainer(SiteData("s", images, images.subset(np.arange(0))), model, Task.BINARY,
                       Preprocess(255.0, None), torch.device("cpu"), 5, augment=True)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_the_shards_cover_every_batch_once(world):
    for batch in range(1, 10):
        rows = [shard_rows(batch, rank, world) for rank in range(world)]
        covered = np.concatenate([np.arange(batch)[r] for r in rows])
        np.testing.assert_array_equal(covered, np.arange(batch))


def test_one_worker_trains_what_the_site_trainer_trains(group_of_one):
    options = TrainOptions(epochs=2, batch_size=4, optimizer="sgd", lr=0.1, round=1)
    plain, sharded = site(), ShardedTrainer(site(), rank=0, world=1)
    start = {k: v.clone() for k, v in plain.model.state_dict().items()}
    expected, got = plain.train(start, options), sharded.train(start, options)
    assert got.n_steps == expected.n_steps == 2 * 3  # 13 images: batches of 4, 4, 4 (a lone 1 waits)
    for key, value in expected.state.items():
        torch.testing.assert_close(got.state[key], value, rtol=0, atol=1e-6)
    assert got.metrics["train_loss"] == pytest.approx(expected.metrics["train_loss"], abs=1e-6)


def test_an_empty_shard_joins_every_step_and_adds_nothing(group_of_one):
    """Batches of 1 over 2 workers: rank 0's shard is always empty (rank 1 holds the image)."""
    worker = ShardedTrainer(site(), rank=0, world=2)
    start = {k: v.clone() for k, v in worker.trainer.model.state_dict().items()}
    update = worker.train(start, TrainOptions(batch_size=1, optimizer="sgd", lr=0.1))
    assert update.n_steps == 13
    for key, value in start.items():
        torch.testing.assert_close(update.state[key], value, rtol=0, atol=0)


def test_batch_norm_is_found_where_a_model_has_it():
    assert has_batch_norm(site("batch").model) and not has_batch_norm(site("group").model)
