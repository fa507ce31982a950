"""The multi-node pooled baseline: DistributedDataParallel over N local worker processes trains the
model single-process training makes (same global batches, same augmentation), and a run reports it.

Hand mutations that these tests catch (each tried once):
- each worker's shard loss not weighted by its size (weight 1): the shards of a batch of 5 over
  2 workers are 2 and 3 images, and the models differ (test_two_workers_equal_one_process);
- each worker drawing augmentation for its shard only (t.augmentation(len(shard))): the shards
  get other affines, and the models differ (same test, augmentation on);
- the workers' own batch order (a per-rank generator): the models differ (same test);
- --pooled-workers 2 not wired (train_pooled ignoring it): summary.json says single-process
  (test_cli_run_reports_the_multi_node_pooled_baseline).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from medfed.config import DataConfig, FederationConfig, ModelConfig, RunConfig, TrainingConfig
from medfed.experiment import Setup, prepare
from medfed.pooled_ddp import train_pooled
from medfed.pooled_record import pooled_label

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 240  # seconds: a whole `medfed run` with its workers, on a loaded machine


def tiny(norm: str = "group", augment: bool = True) -> RunConfig:
    return RunConfig(device="cpu", model=ModelConfig(norm=norm),
                     data=DataConfig(sites=2, synthetic_samples=48, synthetic_test=16,
                                     augment=augment, image_size=12),
                     federation=FederationConfig(rounds=2),
                     training=TrainingConfig(batch_size=5, optimizer="sgd", lr=0.05))


def with_workers(setup: Setup, workers: int) -> Setup:
    execution = replace(setup.config.execution, pooled_workers=workers)
    return replace(setup, config=replace(setup.config, execution=execution))


def test_two_workers_equal_one_process():
    """Batches of 5 over 2 workers (shards of 2 and 3), augmentation on, 2 rounds of SGD."""
    setup = prepare(tiny())
    one = train_pooled(setup)
    two = train_pooled(with_workers(setup, 2))
    a, b = one.outcome.strategy.global_state, two.outcome.strategy.global_state
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)
    last_one, last_two = one.outcome.history[-1], two.outcome.history[-1]
    assert last_two.train_loss["pooled"] == pytest.approx(last_one.train_loss["pooled"], abs=1e-5)
    assert one.record()["training"] == "single-process" and one.record()["backend"] is None
    record = two.record()
    assert record["training"] == "multi-node" and record["workers"] == 2
    assert record["backend"] == "gloo" and len(record["worker_startup_seconds"]) == 2
    assert 0 < record["startup_seconds"] < record["wall_seconds"]


def run_medfed(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`medfed ...` as a whole process, its workers included, killed as a group past the timeout."""
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "medfed", *args], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


TINY_RUN = ["run", "--sites", "2", "--rounds", "1", "--batch-size", "8", "--device", "cpu",
            "--image-size", "12", "--config", "tiny.toml", "--out", "out"]
TINY_TOML = "[data]\nsynthetic_samples = 40\nsynthetic_test = 16\n"


def test_cli_run_reports_the_multi_node_pooled_baseline(tmp_path: Path):
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    done = run_medfed([*TINY_RUN, "--norm", "group", "--pooled-workers", "2"], tmp_path)
    assert done.returncode == 0, done.stderr
    pooled = json.loads((tmp_path / "out" / "summary.json").read_text())["baselines"]["pooled"]
    assert pooled["training"] == "multi-node" and pooled["workers"] == 2
    assert pooled["backend"] == "gloo" and len(pooled["worker_startup_seconds"]) == 2
    assert 0 < pooled["startup_seconds"] < pooled["wall_seconds"]
    assert set(pooled["test"]) >= {"auc", "accuracy"}
    assert "pooled (multi-node x2)" in done.stdout


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_bad_worker_count_is_one_line_and_exit_2(tmp_path: Path, value: str):
    done = run_medfed(["run", "--out", "out", "--pooled-workers", value], tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pooled_workers" in lines[0] and ">= 1" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_batch_norm_on_cpu_is_refused_before_training(tmp_path: Path):
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    done = run_medfed([*TINY_RUN, "--norm", "batch", "--pooled-workers", "2"], tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "SyncBatchNorm" in lines[0] and "--norm group" in lines[0]
    assert not (tmp_path / "out").exists()


def test_tables_name_the_pooled_model_by_how_it_was_trained():
    assert pooled_label({"training": "multi-node", "workers": 4}) == "pooled (multi-node x4)"
    assert pooled_label({"training": "single-process", "workers": 1}) == "pooled"
    assert pooled_label(None) == "pooled"  # a run written before the record existed


def test_a_failing_worker_is_a_site_failure_and_no_worker_is_left():
    """Workers that raise (here: asked for FedProx, which the pooled baseline never trains) end
    the wait with the error's last line, and every worker process is gone after."""
    from medfed.client.trainer import TrainOptions
    from medfed.errors import TransportError
    from medfed.experiment import POOLED, site_recipe, site_trainer
    from medfed.pooled_ddp import pooled_site
    from medfed.pooled_workers import PooledWorkers

    setup = prepare(tiny(augment=False))
    data = pooled_site(setup.federation)[POOLED]
    pool = PooledWorkers(site_trainer(setup, 0, data), site_recipe(setup, None), 2)
    with pool:
        processes = list(pool._context.processes)
        with pytest.raises(TransportError, match="FedAvg over one site"):
            pool.train(setup.initial, TrainOptions(proximal_mu=0.1))
    assert not any(p.is_alive() for p in processes)


def test_compare_json_records_how_the_pooled_model_ran():
    import numpy as np

    from medfed.compare import CompareOptions, summarize
    from medfed.compare_results import Scored
    from medfed.pooled_record import PooledExecution

    def seed(wall: float) -> dict[str, Scored]:
        record = PooledExecution(2, "gloo", 1.0, (0.9, 1.0)).record(wall)
        return {"pooled": Scored("pooled", {"auc": 0.9}, np.zeros((1, 2)),
                                 extra={"execution": record})}

    entry = summarize([seed(4.0), seed(6.0)], CompareOptions(("fedavg",)))["pooled"]
    assert entry["training"] == "multi-node" and entry["workers"] == 2
    assert entry["backend"] == "gloo" and entry["wall_seconds"] == 5.0
    assert entry["startup_seconds"] == 1.0
    assert [s["execution"]["wall_seconds"] for s in entry["per_seed"]] == [4.0, 6.0]
