"""Configuration: defaults, TOML, clear errors naming the valid choices, a lossless to_toml, and
registries that hold exactly the names the config accepts."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medfed import config as cfg
from medfed.config import (
    AdversaryConfig,
    DataConfig,
    FederationConfig,
    ModelConfig,
    RunConfig,
    TrainingConfig,
)
from medfed.config_file import config_from_dict, load_config, section_of, to_toml, with_overrides
from medfed.config_split import SPLIT_BLOCKS
from medfed.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults ----------------------------------------------------------------------------------

def test_defaults_are_valid_and_as_documented():
    c = RunConfig()
    assert (c.seed, c.device, c.baselines) == (0, "auto", True)
    assert c.data == DataConfig() and c.data.dataset == "synthetic" and c.data.partition is None
    assert c.model == ModelConfig(model=None, norm=None)  # chosen from the data (defaults.py)
    assert c.data.augment is None and c.training.local_epochs is None
    assert c.federation.algorithm == "fedavg" and c.federation.rounds is None  # chosen (defaults.py)
    assert c.training.optimizer == "adam" and c.training.batch_size == 32
    assert c.federation.aggregator == "mean" and c.adversary == AdversaryConfig("none", 1)
    assert config_from_dict({}) == c


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().seed = 3  # type: ignore[misc]


# --- TOML --------------------------------------------------------------------------------------

def test_a_toml_file_loads_into_every_section(tmp_path):
    path = write(tmp_path, """
seed = 7
baselines = false
[data]
dataset = "medmnist"
data_file = "x/pneumoniamnist.npz"
sites = 4
partition = "dirichlet"
alpha = 1
proportions = [1, 2, 3, 4]
[model]
model = "resnet18"
norm = "group"
[federation]
algorithm = "fedprox"
rounds = 3
mu = 0.1
[training]
lr = 0.01
optimizer = "sgd"
""")
    c = load_config(path)
    assert c.seed == 7 and c.baselines is False
    assert c.data.dataset == "medmnist" and c.data.data_file == "x/pneumoniamnist.npz"
    assert c.data.sites == 4 and c.data.partition == "dirichlet"
    assert c.data.alpha == 1.0 and isinstance(c.data.alpha, float)  # an int is fine for a float
    assert c.data.proportions == (1.0, 2.0, 3.0, 4.0) and isinstance(c.data.proportions, tuple)
    assert c.model == ModelConfig("resnet18", "group")
    assert (c.federation.algorithm, c.federation.rounds, c.federation.mu) == ("fedprox", 3, 0.1)
    assert c.training.lr == 0.01 and c.training.optimizer == "sgd"
    assert c.training.batch_size == 32  # untouched keys keep their defaults


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[data\nsites = 3"))


# --- errors name the valid choices -------------------------------------------------------------

def test_an_unknown_top_level_key_names_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"sed": 1})
    message = str(info.value)
    assert "'sed'" in message and "did you mean 'seed'" in message
    assert all(k in message for k in ("seed", "device", "baselines", "data", "model", "federation",
                                      "training"))


def test_an_unknown_section_key_names_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[federation]\nalgoritm = 'fedavg'\n"))
    message = str(info.value)
    assert "[federation]" in message and "did you mean 'algorithm'" in message
    assert all(f.name in message for f in dataclasses.fields(FederationConfig))


@pytest.mark.parametrize("section,key,valid", [
    ("data", "dataset", cfg.DATASETS), ("data", "partition", cfg.PARTITIONS),
    ("model", "model", cfg.MODELS), ("model", "norm", cfg.NORMS),
    ("federation", "algorithm", cfg.ALGORITHMS), ("training", "optimizer", cfg.OPTIMIZERS),
])
def test_a_bad_choice_names_every_valid_one(section, key, valid):
    with pytest.raises(ConfigError) as info:
        config_from_dict({section: {key: "nope"}})
    message = str(info.value)
    assert f"unknown {key} 'nope'" in message
    assert all(v in message for v in valid)
    assert "\n" not in message


def test_a_bad_device_names_every_valid_one():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"device": "tpu"})
    assert all(v in str(info.value) for v in cfg.DEVICES)


@pytest.mark.parametrize("raw,fragment", [
    ({"data": {"sites": 0}}, "sites must be >= 1"),
    ({"data": {"alpha": 0}}, "alpha must be > 0"),
    ({"data": {"val_fraction": 1.0}}, "val_fraction"),
    ({"data": {"sites": 2, "sizes": [1, 2, 3]}}, "sizes has 3 entries but sites is 2"),
    ({"data": {"sites": 2, "sizes": [1, -2]}}, "sizes must all be > 0"),
    ({"data": {"image_size": 4}}, "image_size must be >= 8"),
    ({"data": {"synthetic_samples": 5}}, "synthetic_samples must be >= 10"),
    ({"federation": {"rounds": 0}}, "rounds must be >= 1"),
    ({"federation": {"fraction": 1.5}}, "fraction must be in (0, 1]"),
    ({"federation": {"fraction": 0}}, "fraction must be in (0, 1]"),
    ({"federation": {"min_sites": 0}}, "min_sites must be >= 1"),
    ({"federation": {"mu": -0.1}}, "mu must be >= 0"),
    ({"federation": {"beta1": 1.0}}, "beta1 must be in [0, 1)"),
    ({"federation": {"tau": 0}}, "tau must be > 0"),
    ({"training": {"lr": 0}}, "lr must be > 0"),
    ({"training": {"batch_size": 0}}, "batch_size must be >= 1"),
    ({"training": {"momentum": -1}}, "momentum and weight_decay must be >= 0"),
    ({"training": {"logit_adjust": -0.5}}, "logit_adjust must be >= 0"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"model": {"width": 0}}, "width must be >= 1"),
    ({"model": {"model": "mlp", "width": 32}}, "width applies to --model cnn only, not mlp"),
])
def test_a_bad_value_is_a_config_error_saying_what_is_valid(raw, fragment):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert fragment in str(info.value)


@pytest.mark.parametrize("raw,fragment", [
    ({"data": {"sites": "3"}}, "sites must be int, got '3'"),
    ({"data": {"sites": 3.0}}, "sites must be int"),
    ({"data": {"sites": True}}, "sites must be int"),
    ({"seed": True}, "seed must be int"),
    ({"data": {"alpha": "x"}}, "alpha must be float"),
    ({"data": {"alpha": False}}, "alpha must be float"),
    ({"data": {"sizes": 3}}, "sizes must be a list"),
    ({"data": {"sizes": [1, "a"]}}, "sizes must be int"),
    ({"data": {"proportions": [1, "a"]}}, "proportions must be float"),
    ({"data": {"sites": 2, "sizes": [1, 2], "proportions": [1, 2]}}, "not both"),
    ({"data": {"augment": "yes"}}, "augment must be bool"),
    ({"data": {"data_file": 3}}, "data_file must be str"),
    ({"baselines": 1}, "baselines must be bool"),
    ({"data": 3}, "[data] must be a table"),
    ({"model": "cnn"}, "[model] must be a table"),
])
def test_a_bad_type_is_a_config_error_naming_the_expected_type(raw, fragment):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert fragment in str(info.value)


# --- to_toml round trip ------------------------------------------------------------------------

def round_trip(c: RunConfig) -> RunConfig:
    return config_from_dict(tomllib.loads(to_toml(c)))


def test_to_toml_of_the_defaults_loads_back_equal():
    assert round_trip(RunConfig()) == RunConfig()


def test_to_toml_of_a_full_config_loads_back_equal(tmp_path):
    c = RunConfig(seed=11, device="cpu", baselines=False,
                  data=DataConfig(dataset="medmnist", data_file="d/retinamnist_28.npz", sites=5,
                                  partition="quantity", alpha=0.3, sizes=(20, 25, 15, 30, 22),
                                  val_fraction=0.2, image_size=64, augment=False),
                  model=ModelConfig("densenet121", "instance"),
                  federation=FederationConfig("fedyogi", rounds=4, fraction=0.6, min_sites=2,
                                              eval_every=0, server_lr=0.1, beta1=0.5, tau=1e-4),
                  training=TrainingConfig(local_epochs=2, batch_size=8, lr=0.3, optimizer="sgd",
                                          momentum=0.5, weight_decay=1e-4))
    assert round_trip(c) == c
    path = tmp_path / "config.toml"
    path.write_text(to_toml(c))
    assert load_config(path) == c


@st.composite
def run_configs(draw) -> RunConfig:
    sites = draw(st.integers(1, 6))
    proportions = draw(st.one_of(st.just(()), st.lists(st.floats(0.01, 1e4), min_size=sites,
                                                        max_size=sites).map(tuple)))
    finite = dict(allow_nan=False, allow_infinity=False)
    data = DataConfig(dataset=draw(st.sampled_from(cfg.DATASETS)),
                      data_file=draw(st.one_of(st.none(), st.text(min_size=1, max_size=20))),
                      sites=sites,
                      partition=draw(st.one_of(st.none(), st.sampled_from(cfg.PARTITIONS))),
                      alpha=draw(st.floats(1e-3, 1e3, **finite)), proportions=proportions,
                      val_fraction=draw(st.floats(0.01, 0.99)),
                      image_size=draw(st.one_of(st.none(), st.integers(8, 512))),
                      augment=draw(st.booleans()))
    algorithm = draw(st.sampled_from(cfg.ALGORITHMS))
    # split learning cuts only the models made of blocks, and runs honest sites (config_split.py)
    models = tuple(SPLIT_BLOCKS) if algorithm == "split" else cfg.MODELS
    model = ModelConfig(draw(st.sampled_from(models)), draw(st.sampled_from(cfg.NORMS)))
    # swt needs a round per site (RunConfig refuses fewer), so draw rounds from what is valid.
    aggregator, byzantine = draw(robust_settings(algorithm, sites))
    federation = FederationConfig(algorithm,
                                  rounds=draw(st.integers(sites if algorithm == "swt" else 1, 500)),
                                  fraction=draw(st.floats(0.01, 1.0)),
                                  mu=draw(st.floats(0, 10, **finite)),
                                  beta2=draw(st.floats(0, 0.999)),
                                  aggregator=aggregator, byzantine=byzantine,
                                  norm_bound=draw(st.one_of(st.none(), st.floats(1e-3, 1e3))))
    attacks = ["none"] if algorithm == "split" else ["none", "scale:-10", "sign-flip", "noise:0.5",
                                                     "label-flip", "nan", "free-ride"]
    adversary = AdversaryConfig(draw(st.sampled_from(attacks)),
                                draw(st.integers(1, sites)))
    training = TrainingConfig(draw(st.integers(1, 20)), draw(st.integers(1, 512)),
                              draw(st.floats(1e-6, 1.0)), draw(st.sampled_from(cfg.OPTIMIZERS)))
    return RunConfig(seed=draw(st.integers(0, 2**31)), device=draw(st.sampled_from(cfg.DEVICES)),
                     baselines=draw(st.booleans()), data=data, model=model,
                     federation=federation, training=training, adversary=adversary)


@st.composite
def robust_settings(draw, algorithm: str, sites: int):
    """(aggregator, byzantine) that RunConfig accepts for this algorithm and number of sites."""
    if algorithm not in cfg.AVERAGING:
        return "mean", draw(st.integers(0, 5))
    aggregator = draw(st.sampled_from(cfg.AGGREGATORS))
    most = {"krum": (sites - 3) // 2, "multi-krum": (sites - 3) // 2,
            "trimmed-mean": (sites - 1) // 2}.get(aggregator, 5)
    if most < 0:
        return "mean", 1
    return aggregator, draw(st.integers(0, most))


@given(c=run_configs())
def test_to_toml_output_loads_back_equal(c):
    assert round_trip(c) == c


# --- overrides (the CLI's flags) ---------------------------------------------------------------

def test_overrides_reach_their_sections_and_keep_the_rest():
    base = RunConfig(data=DataConfig(sites=3, alpha=0.2))
    c = with_overrides(base, {"sites": 4, "algorithm": "fedbn", "model": "resnet18", "lr": 1,
                              "seed": 5, "baselines": False, "augment": False,
                              "sizes": [1, 1, 1, 2], "proportions": []})
    assert c.data.sites == 4 and c.data.alpha == 0.2 and c.data.augment is False
    assert c.data.sizes == (1, 1, 1, 2) and c.data.proportions == ()
    assert c.federation.algorithm == "fedbn" and c.model.model == "resnet18"
    assert c.training.lr == 1.0 and c.seed == 5 and c.baselines is False
    assert with_overrides(base, {}) == base


@pytest.mark.parametrize("key", ["bogus", "data", "federation"])
def test_an_unknown_override_key_names_the_valid_ones(key):
    with pytest.raises(ConfigError) as info:
        with_overrides(RunConfig(), {key: 1})
    assert f"unknown config key '{key}'" in str(info.value)
    assert "algorithm" in str(info.value) and "sites" in str(info.value)


def test_overrides_are_validated():
    with pytest.raises(ConfigError, match="valid: fedavg"):
        with_overrides(RunConfig(), {"algorithm": "nope"})
    with pytest.raises(ConfigError, match="rounds must be >= 1"):
        with_overrides(RunConfig(), {"rounds": 0})


def test_section_of():
    assert section_of("alpha") == "data" and section_of("model") == "model"
    assert section_of("mu") == "federation" and section_of("lr") == "training"
    assert section_of("seed") is None


# --- registries hold exactly the config's names ------------------------------------------------

def test_registries_hold_exactly_the_names_in_config():
    from medfed.algorithms.registry import ALGORITHMS
    from medfed.data.sources import SOURCES
    from medfed.models import MODELS

    for registry, names in ((SOURCES, cfg.DATASETS), (MODELS, cfg.MODELS),
                            (ALGORITHMS, cfg.ALGORITHMS)):
        assert sorted(registry) == sorted(names)


def test_registries_refuse_unknown_names_with_the_valid_ones():
    from medfed.data.sources import SOURCES

    with pytest.raises(ConfigError) as info:
        SOURCES["medmnst"]
    assert "did you mean 'medmnist'" in str(info.value) and "synthetic" in str(info.value)


@pytest.mark.parametrize(("federation", "sites", "fragment"), [
    ({"aggregator": "krum"}, 4, "krum tolerates f faulty sites only among n >= 2f + 3; with "
                                "byzantine = 1 it needs >= 5 sites (got 4)"),
    ({"aggregator": "multi-krum", "byzantine": 2}, 6, "needs >= 7 sites"),
    ({"aggregator": "multi-krum", "krum_keep": 5}, 5, "krum_keep is 5, but Multi-Krum can keep at "
                                                      "most n - f = 4"),
    ({"aggregator": "trimmed-mean", "byzantine": 2}, 4, "needs >= 5 sites (got 4); lower byzantine"),
    ({"aggregator": "median", "algorithm": "scaffold"}, 5, "scaffold has no average to replace"),
    ({"aggregator": "krum", "algorithm": "cwt"}, 5, "cwt has no average to replace"),
    ({"norm_bound": 0.0}, 5, "norm_bound must be > 0"),
    ({"byzantine": -1}, 5, "byzantine must be >= 0"),
    ({"aggregator": "krun"}, 5, "did you mean 'krum'"),
])
def test_robust_aggregation_settings_are_checked_against_the_sites(federation, sites, fragment):
    with pytest.raises(ConfigError) as info:
        RunConfig(data=DataConfig(sites=sites), federation=FederationConfig(**federation))
    assert fragment in str(info.value)


def test_an_attack_is_checked_when_the_config_is_made():
    with pytest.raises(ConfigError, match="attackers is 6 but there are only 5 sites"):
        RunConfig(adversary=AdversaryConfig("sign-flip", attackers=6))
    with pytest.raises(ConfigError, match="needs a factor"):
        config_from_dict({"adversary": {"attack": "scale"}})
    with pytest.raises(ConfigError, match="attackers must be >= 1"):
        AdversaryConfig("nan", attackers=0)
    assert config_from_dict({"adversary": {"attack": "scale:-3", "attackers": 2}}).adversary == \
        AdversaryConfig("scale:-3", 2)


def test_impossible_federation_settings_are_refused_before_any_work():
    with pytest.raises(ConfigError, match="min_sites is 6 but there are only 5 sites"):
        RunConfig(federation=FederationConfig(min_sites=6))
    with pytest.raises(ConfigError, match="needs --rounds >= 5"):
        RunConfig(federation=FederationConfig(algorithm="swt", rounds=3))


def test_a_federation_file_runs_in_simulation_its_task_and_deployment_tables_left_aside():
    example = Path(__file__).resolve().parents[1] / "examples" / "federation.toml"
    config = load_config(example)  # no data in a federation file: the simulation's default data
    assert config.data.dataset == "synthetic" and config.federation.rounds == 3


def test_sites_unset_means_the_data_decides_for_a_natural_partition():
    from medfed.config import DEFAULT_SITES

    data = DataConfig(dataset="dicom")
    assert data.sites is None and data.known_sites is None  # counted when the data is read
    assert DataConfig().site_count == DEFAULT_SITES == DataConfig().known_sites  # synthetic
    assert DataConfig(dataset="dicom", partition="iid").known_sites == DEFAULT_SITES
    assert DataConfig(proportions=(1, 2, 3)).site_count == 3
    # checks against the count wait for the data when it gives the count...
    RunConfig(data=data, federation=FederationConfig(aggregator="krum"))
    # ...and run at once when the count is known
    with pytest.raises(ConfigError, match="needs >= 5 sites"):
        RunConfig(data=DataConfig(dataset="dicom", sites=3),
                  federation=FederationConfig(aggregator="krum"))


def test_site_name_must_name_something():
    with pytest.raises(ConfigError, match="site_name"):
        DataConfig(dataset="images", site_name=" ")
