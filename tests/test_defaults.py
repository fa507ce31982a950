"""Defaults chosen from the data (medfed/defaults.py): the kind of data decides the model, the norm,
the augmentation and the local budget; a natural source its own sites; a flag always wins; what was
chosen is printed and recorded in summary.json, and the config.toml written reruns the run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medfed.cli import main
from medfed.config import DataConfig, FederationConfig, ModelConfig, RunConfig, TrainingConfig
from medfed.config_file import load_config, with_overrides
from medfed.config_privacy import PrivacyConfig
from medfed.data.dataset import DataSource, Samples
from medfed.defaults import (
    KEEP_BEST_FROM_VAL,
    LOCAL_STEPS,
    PATIENCE,
    ROUNDS,
    ROUNDS_CAP,
    DataFacts,
    Defaults,
    choose_defaults,
    choose_keep_best,
    choose_lr_schedule,
    choose_rounds,
    label_skew,
)
from medfed.errors import ConfigError
from medfed.experiment import prepare
from medfed.types import Task
from tests.data.test_heart import write_hospitals
from tests.medmnist_files import write_medmnist

TABULAR = DataFacts(0, 22)
GREY = DataFacts(2, 1, side=224)
RGB = DataFacts(2, 3, side=224)
MASKS = DataFacts(3, 1, binary_masks=True)


def chosen(config: RunConfig, facts: DataFacts) -> dict:
    return {key: c.value for key, c in choose_defaults(config, facts).chosen.items()}


def test_tabular_rows_get_a_tabular_model_with_a_norm_it_accepts_and_no_augmentation():
    assert chosen(RunConfig(), TABULAR) | {} == {
        "model": "mlp", "norm": "group", "augment": False, "local_epochs": 1,
        "local_steps": LOCAL_STEPS}


@pytest.mark.parametrize("facts", [GREY, RGB, DataFacts(3, 1)])
def test_intensity_images_at_natural_sites_get_the_cnn_and_a_per_image_norm(facts):
    got = chosen(RunConfig(), facts)
    assert (got["model"], got["norm"]) == ("cnn", "instance")


@pytest.mark.parametrize(("facts", "on"), [(GREY, True), (RGB, True), (DataFacts(2, 1, side=28), False),
                                           (DataFacts(2, 1), True)])
def test_augmentation_is_on_for_images_large_enough_to_warp(facts, on):
    assert chosen(RunConfig(), facts)["augment"] is on


def test_shares_of_one_pool_get_batch_statistics():
    assert chosen(RunConfig(), DataFacts(2, 1, natural_sites=False))["norm"] == "batch"
    assert chosen(RunConfig(), DataFacts(2, 1, natural_sites=False, label_skew=0.05))["norm"] == "batch"


def test_label_skewed_shares_of_one_pool_get_a_per_image_norm():
    got = choose_defaults(RunConfig(), DataFacts(2, 1, natural_sites=False, label_skew=0.4))
    assert got.chosen["norm"].value == "instance" and "skewed" in got.chosen["norm"].why


@pytest.mark.parametrize(("counts", "expected"), [
    ([[50, 50], [30, 30], [5, 5]], 0.0),  # every site the pool's mix
    ([[100, 0], [0, 100]], 0.5),  # pool half and half, each site one class
    ([[10, 0], [0, 10], [0, 10], [0, 10]], 0.75),  # the one site of class 0 is furthest
    ([[10, 0], [0, 0], [0, 10]], 0.5),  # a site without training labels is left out
    ([[7, 3]], 0.0),  # one site: nothing to be skewed against
])
def test_label_skew_is_the_largest_distance_of_a_site_from_the_pool(counts, expected):
    assert label_skew(counts) == pytest.approx(expected)


@pytest.mark.parametrize(("partition", "norm"), [("iid", "batch"), ("dirichlet", "instance")])
def test_the_norm_follows_how_the_split_mixes_the_labels(tmp_path, partition, norm):
    path = tmp_path / "pneumoniamnist.npz"
    write_medmnist(path, (28, 28), 1, 2, sizes=(200, 40, 20))
    config = RunConfig(device="cpu", data=DataConfig(dataset="medmnist", data_file=str(path),
                                                     sites=4, partition=partition, alpha=0.1))
    assert prepare(config).config.model.norm == norm


def test_binary_masks_get_no_intensity_destroying_augmentation_and_keep_their_scale():
    got = chosen(RunConfig(), MASKS)
    assert got["augment"] is False and got["norm"] == "batch"


def test_small_2d_sites_get_a_step_budget_and_costly_3d_volumes_one_epoch():
    assert chosen(RunConfig(), GREY)["local_steps"] == LOCAL_STEPS
    assert chosen(RunConfig(), MASKS)["local_steps"] == 0


def test_dp_sgd_gets_a_norm_without_batch_statistics_and_an_epoch_budget():
    config = RunConfig(privacy=PrivacyConfig(dp_sgd=True, noise_multiplier=1.0))
    got = chosen(config, MASKS)
    assert got["norm"] == "group" and got["local_steps"] == 0


@pytest.mark.parametrize(("facts", "model"), [(DataFacts(2, 1, side=28), "scatter"),
                                              (DataFacts(2, 3, side=64), "scatter"),
                                              (GREY, "cnn"), (DataFacts(3, 1, side=28), "cnn"),
                                              (TABULAR, "mlp")])
def test_dp_sgd_on_small_2d_images_gets_fixed_scattering_features(facts, model):
    dp = RunConfig(privacy=PrivacyConfig(dp_sgd=True, noise_multiplier=1.0))
    assert chosen(dp, facts)["model"] == model
    assert chosen(RunConfig(), DataFacts(2, 1, side=28))["model"] == "cnn"  # only under DP


def test_a_setting_given_is_never_chosen_over():
    config = RunConfig(model=ModelConfig(model="resnet18", norm="group"),
                       data=DataConfig(augment=True),
                       training=TrainingConfig(local_epochs=2))
    filled = choose_defaults(config, MASKS)
    assert "model" not in filled.chosen and "norm" not in filled.chosen
    assert "augment" not in filled.chosen and "local_epochs" not in filled.chosen
    assert filled.config.model == ModelConfig(model="resnet18", norm="group")
    assert filled.config.data.augment is True
    # Epochs given: the step budget does not silently add work on top of them.
    assert filled.config.training.local_epochs == 2 and filled.config.training.local_steps == 0
    given_steps = with_overrides(RunConfig(), {"local_steps": 7})
    assert choose_defaults(given_steps, GREY).config.training.local_steps == 7


def test_a_filled_config_has_nothing_left_to_choose():
    filled = choose_defaults(RunConfig(), TABULAR).config
    assert choose_defaults(filled, TABULAR).chosen == {}


def test_a_cnn_width_on_tabular_rows_is_one_clear_error():
    with pytest.raises(ConfigError, match="width applies to --model cnn only"):
        choose_defaults(RunConfig(model=ModelConfig(width=32)), TABULAR)


def test_local_steps_with_dp_sgd_is_refused():
    with pytest.raises(ConfigError, match="local-steps"):
        RunConfig(privacy=PrivacyConfig(dp_sgd=True, noise_multiplier=1.0),
                  training=TrainingConfig(local_steps=10))


def source_of(x: np.ndarray, max_value: float = 255.0) -> DataSource:
    y = np.arange(len(x)) % 2
    return DataSource("t", Task.BINARY, ("a", "b"), Samples(x, y), Samples(x, y), max_value)


def test_masks_are_told_from_intensity_images_by_their_values():
    rng = np.random.default_rng(0)
    masks = (rng.random((8, 1, 6, 6, 6)) > 0.5).astype(np.uint8) * 255
    grey = rng.integers(0, 256, (8, 1, 6, 6, 6), dtype=np.uint8)
    assert DataFacts.of_source(source_of(masks), "iid").binary_masks
    assert not DataFacts.of_source(source_of(grey), "iid").binary_masks
    assert DataFacts.of_source(source_of(grey), "natural").kind == "3D grey volumes"
    assert not DataFacts.of_source(source_of(rng.normal(size=(8, 5)), 1.0), "iid").binary_masks


def test_a_natural_source_gets_its_own_sites_and_a_tabular_model(tmp_path):
    root = write_hospitals(tmp_path / "d")
    for partition in (None, "natural"):  # the data path alone, or naming the partition
        config = RunConfig(device="cpu", data=DataConfig(dataset="heart-disease",
                                                          data_dir=str(root), partition=partition))
        setup = prepare(config)
        assert setup.config.data.sites == 4 and setup.config.model.model == "mlp"
        assert setup.defaults.chosen["sites"].value == 4
        assert ("partition" in setup.defaults.chosen) is (partition is None)


def test_medfed_run_prints_and_records_the_defaults_and_config_toml_reruns_them(tmp_path, capsys):
    root = write_hospitals(tmp_path / "d", rows_per_site=25)
    out = tmp_path / "out"
    code = main(["run", "--dataset", "heart-disease", "--data-dir", str(root), "--rounds", "1",
                 "--device", "cpu", "--no-baselines", "--out", str(out)])
    assert code == 0
    assert "chosen from the data" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    defaults = summary["defaults"]
    assert defaults["model"]["value"] == "mlp" and defaults["sites"]["value"] == 4
    assert defaults["augment"]["value"] is False and defaults["model"]["why"]
    rerun = load_config(out / "config.toml")
    assert rerun.model.model == "mlp" and rerun.training.local_steps == LOCAL_STEPS
    assert prepare(rerun).defaults.chosen == {}  # everything is given now: the same run again


def test_a_flag_overrides_the_default_and_is_not_recorded_as_chosen(tmp_path):
    root = write_hospitals(tmp_path / "d", rows_per_site=25)
    out = tmp_path / "out"
    assert main(["run", "--dataset", "heart-disease", "--data-dir", str(root), "--rounds", "1",
                 "--model", "logistic", "--device", "cpu", "--no-baselines", "--out",
                 str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "logistic" and "model" not in summary["defaults"]


def test_the_defaults_fill_a_deployments_config_from_its_task_schema():
    from medfed.task_schema import TaskSchema

    task = TaskSchema(Task.BINARY, ("a", "b"), 0, 22)
    config = choose_defaults(RunConfig(federation=FederationConfig()), DataFacts.of_task(task)).config
    assert config.model.model == "mlp" and config.model.norm == "group"


@pytest.mark.parametrize("n_val, eval_every, expected", [
    (KEEP_BEST_FROM_VAL, 1, True), (KEEP_BEST_FROM_VAL - 1, 1, False), (500, 0, False)])
def test_the_best_round_is_kept_only_when_validation_can_tell_rounds_apart(n_val, eval_every,
                                                                            expected):
    config = RunConfig(federation=FederationConfig(eval_every=eval_every))
    chosen = choose_keep_best(Defaults(config), n_val)
    assert chosen.config.federation.keep_best is expected
    assert "keep_best" in chosen.record()


def test_keep_best_given_is_kept():
    config = RunConfig(federation=FederationConfig(keep_best=False))
    assert choose_keep_best(Defaults(config), 10_000).config.federation.keep_best is False


@pytest.mark.parametrize("keep_best, dp, expected", [
    (True, False, "constant"), (False, False, "cosine"), (None, False, "cosine"),
    (False, True, "constant")])
def test_the_rate_decays_only_where_the_last_rounds_model_is_the_result(keep_best, dp, expected):
    config = RunConfig(federation=FederationConfig(keep_best=keep_best),
                       privacy=PrivacyConfig(dp_sgd=dp, noise_multiplier=1.0 if dp else None))
    chosen = choose_lr_schedule(Defaults(config))
    assert chosen.config.training.lr_schedule == expected and "lr_schedule" in chosen.record()


def test_an_lr_schedule_given_is_kept():
    config = RunConfig(training=TrainingConfig(lr_schedule="constant"))
    assert choose_lr_schedule(Defaults(config)).config.training.lr_schedule == "constant"


@pytest.mark.parametrize("keep_best, dp, rounds, patience", [
    (True, False, ROUNDS_CAP, PATIENCE),  # the best round is kept: a cap, and a stop on validation
    (False, False, ROUNDS, 0),  # the last round is the result: a fixed count
    (None, False, ROUNDS, 0),  # a deployment (keep_best is never on there)
    (True, True, ROUNDS, 0)])  # DP-SGD: the noise is calibrated for the rounds it will run
def test_rounds_are_a_cap_with_patience_only_where_the_best_round_is_kept(keep_best, dp, rounds,
                                                                          patience):
    config = RunConfig(federation=FederationConfig(keep_best=keep_best),
                       privacy=PrivacyConfig(dp_sgd=dp, noise_multiplier=1.0 if dp else None))
    chosen = choose_rounds(Defaults(config))
    assert chosen.config.federation.rounds == rounds
    assert chosen.config.federation.patience == patience
    assert chosen.config.federation.min_rounds == (ROUNDS if patience else 0)
    assert {"rounds", "patience", "min_rounds"} <= set(chosen.record())


def test_rounds_or_patience_given_are_kept_and_given_rounds_all_run():
    given_rounds = choose_rounds(Defaults(RunConfig(federation=FederationConfig(
        keep_best=True, rounds=12)))).config.federation
    assert (given_rounds.rounds, given_rounds.patience) == (12, 0)
    given_patience = choose_rounds(Defaults(RunConfig(federation=FederationConfig(
        keep_best=True, patience=0)))).config.federation
    assert (given_patience.rounds, given_patience.patience) == (ROUNDS, 0)
    only_patience = choose_rounds(Defaults(RunConfig(federation=FederationConfig(
        keep_best=True, patience=3)))).config.federation
    assert (only_patience.rounds, only_patience.patience, only_patience.min_rounds) == (ROUNDS, 3, 0)


def test_a_deployments_config_gets_a_fixed_round_count():
    from medfed.task_schema import TaskSchema

    task = TaskSchema(Task.BINARY, ("a", "b"), 0, 22)
    config = choose_rounds(choose_defaults(RunConfig(), DataFacts.of_task(task))).config
    assert (config.federation.rounds, config.federation.patience) == (ROUNDS, 0)
