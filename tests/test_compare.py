"""`medfed compare`: every configuration over seeds, with intervals, paired tests and the
cross-site matrix, on tiny synthetic data; and one-line errors for its own flags."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medfed.cli import main

SITES = ["site-a", "site-b", "site-c"]


@pytest.fixture(scope="module")
def tiny(tiny_config) -> list[str]:
    return tiny_config(rounds=1)


def run_cli(args, capsys):
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    return code, *capsys.readouterr()


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("compare")
    assert main(["compare", "--algorithms", "fedavg,fedprox", "--seeds", "2", "--bootstrap", "200",
                 *tiny, "--out", str(out)]) == 0
    return out, json.loads((out / "compare.json").read_text())


def test_every_configuration_has_mean_sd_and_ci95_for_test_and_site_mean(two_seeds):
    out, result = two_seeds
    assert (out / "config.toml").is_file()
    assert result["seeds"] == [0, 1] and result["algorithms"] == ["fedavg", "fedprox"]
    names = ["fedavg", "fedprox", *(f"local:{s}" for s in SITES), "pooled"]
    assert list(result["configurations"]) == names
    for entry in result["configurations"].values():
        for part in ("test", "site_mean"):
            for metric in ("auc", "accuracy", "precision", "recall", "f1", "sensitivity",
                           "specificity"):
                summary = entry[part][metric]
                assert set(summary) == {"mean", "sd", "ci95"} and len(summary["ci95"]) == 2
                assert 0 <= summary["ci95"][0] <= summary["mean"] <= summary["ci95"][1] <= 1


def test_summaries_are_the_mean_and_sd_of_the_seeds(two_seeds):
    _, result = two_seeds
    entry = result["configurations"]["fedavg"]
    aucs = [seed["test"]["auc"] for seed in entry["per_seed"]]
    assert entry["test"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert entry["test"]["auc"]["sd"] == pytest.approx(np.std(aucs, ddof=1))
    site_means = [np.mean([m["auc"] for m in seed["sites"].values()]) for seed in entry["per_seed"]]
    assert entry["site_mean"]["auc"]["mean"] == pytest.approx(np.mean(site_means))
    worst = [min(m["auc"] for m in seed["sites"].values()) for seed in entry["per_seed"]]
    assert entry["worst_site_auc"]["mean"] == pytest.approx(np.mean(worst))


def test_each_seed_has_bootstrap_intervals_calibration_and_an_operating_point(two_seeds):
    _, result = two_seeds
    for seed in result["configurations"]["pooled"]["per_seed"]:
        low, high = seed["ci95"]["auc"]
        assert low <= seed["test"]["auc"] <= high
        assert 0 <= seed["ece"] <= 1 and len(seed["reliability"]["counts"]) == 10
        point = seed["operating_point"]
        assert 0 <= point["threshold"] <= 1 and 0 <= point["sensitivity"] <= 1


def test_paired_tests_compare_each_algorithm_with_pooled_and_the_best_site_by_validation(two_seeds):
    _, result = two_seeds
    configs = result["configurations"]
    assert set(result["paired"]) == {f"{a} vs {b}" for a in ("fedavg", "fedprox")
                                     for b in ("pooled", "best_local")}
    for k, test in enumerate(result["paired"]["fedavg vs best_local"]["delong"]):
        locals_ = {s: configs[f"local:{s}"]["per_seed"][k] for s in SITES}
        best = max(locals_, key=lambda s: locals_[s]["validation_auc"])
        assert test["against"] == f"local:{best}"
        expected = configs["fedavg"]["per_seed"][k]["test"]["auc"] - locals_[best]["test"]["auc"]
        assert test["difference"] == pytest.approx(expected)
        assert 0 <= test["p_value"] <= 1 and test["low"] <= test["difference"] <= test["high"]
    t_test = result["paired"]["fedavg vs pooled"]["t_test"]
    diffs = [configs["fedavg"]["per_seed"][k]["test"]["auc"]
             - configs["pooled"]["per_seed"][k]["test"]["auc"] for k in range(2)]
    assert t_test["difference"] == pytest.approx(np.mean(diffs))


def test_the_cross_site_matrix_scores_every_local_model_at_every_site(two_seeds):
    _, result = two_seeds
    cross = result["cross_site"]
    assert cross["sites"] == SITES and len(cross["auc"]) == 2
    for k, matrix in enumerate(cross["auc"]):
        assert np.asarray(matrix).shape == (3, 3)
        for i, site in enumerate(SITES):  # the diagonal is the local model on its own test split
            own = result["configurations"][f"local:{site}"]["per_seed"][k]["sites"][site]["auc"]
            assert matrix[i][i] == pytest.approx(own)


def test_one_seed_takes_its_interval_from_the_bootstrap(tmp_path, capsys, tiny):
    code, out, _ = run_cli(["compare", "--algorithms", "fedavg", "--seeds", "1", "--bootstrap", "100",
                            "--target-sensitivity", "0.9", *tiny, "--out", str(tmp_path)], capsys)
    assert code == 0 and "mean ± sd over 1 seed" in out.replace("\n", " ")
    result = json.loads((tmp_path / "compare.json").read_text())
    entry = result["configurations"]["fedavg"]
    assert entry["test"]["auc"]["ci95"] == entry["per_seed"][0]["ci95"]["auc"]
    assert result["operating_point_rule"] == "sensitivity >= 0.9" and "t_test" not in \
        result["paired"]["fedavg vs pooled"]
    verdict = result["verdict"]["fedavg"]  # one seed: that seed's DeLong test, first in the console
    assert verdict["method"] == "DeLong" and out.startswith(f"verdict {verdict['text']}")
    assert verdict["text"].startswith("FedAvg vs best single site (site-")


def test_the_verdict_over_seeds_is_the_paired_t_test(two_seeds):
    out, result = two_seeds
    for algorithm, name in (("fedavg", "FedAvg"), ("fedprox", "FedProx")):
        verdict = result["verdict"][algorithm]
        t_test = result["paired"][f"{algorithm} vs pooled"]["t_test"]
        assert verdict["vs_pooled"]["p_value"] == t_test["p_value"]
        assert verdict["text"].startswith(f"{name} vs best single site (")
        assert "(paired t-test over 2 seeds); vs pooled: " in verdict["text"]
    page = (out / "report.html").read_text()
    assert page.split("<h2>")[1].startswith('Overview</h2><p class="verdict">FedAvg vs best')


@pytest.mark.parametrize(("args", "fragment"), [
    (["--algorithms", "fedavgg"], "unknown algorithm 'fedavgg' (did you mean 'fedavg'?)"),
    (["--algorithms", "fedavg", "--seeds", "0"], "--seeds must be >= 1"),
    (["--algorithms", "fedavg", "--target-sensitivity", "2"], "--target-sensitivity must be in (0, 1]"),
    (["--algorithms", "swt", "--rounds", "2"], "swt passes the model through each of the 5 sites"),
    (["--algorithms", ","], "needs at least one algorithm"),
])
def test_a_bad_compare_flag_is_one_line(tmp_path, capsys, args, fragment):
    code, _, err = run_cli(["compare", *args, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err
    assert not (tmp_path / "out").exists()


def test_the_local_baselines_reuse_the_ensembles_models_only_for_an_honest_full_federation(tmp_path):
    from medfed.compare import _ensemble_is_local_baseline
    from medfed.config import AdversaryConfig, FederationConfig, PrivacyConfig, RunConfig

    trained = {"ensemble": object()}
    assert _ensemble_is_local_baseline(RunConfig(), trained)
    assert not _ensemble_is_local_baseline(RunConfig(), {"fedavg": object()})
    assert not _ensemble_is_local_baseline(RunConfig(federation=FederationConfig(fraction=0.5)), trained)
    assert not _ensemble_is_local_baseline(
        RunConfig(adversary=AdversaryConfig(attack="sign-flip")), trained)
    assert not _ensemble_is_local_baseline(RunConfig(privacy=PrivacyConfig(client_dp=True)), trained)
