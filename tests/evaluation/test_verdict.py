"""The verdict line: the algorithm's name, the best single site chosen on validation (never on the
test set), paired DeLong on the same test images, signs a reader cannot misread.

Hand mutations that must fail a test here: pick the best single site by test AUC; swap the
operands of the DeLong test (the signs flip); print an ASCII hyphen for a negative difference;
drop "(DeLong)"; say nothing when the baselines are off."""

from __future__ import annotations

import re

import numpy as np
import pytest

from medfed.evaluation import statistics as st
from medfed.evaluation.verdict import (
    MINUS,
    best_by_validation,
    compare_verdicts,
    deployment_verdict,
    display_name,
    p_text,
    run_verdict,
    signed,
)
from medfed.types import Task

N = 400
RNG = np.random.default_rng(0)
Y = RNG.integers(0, 2, N)


def scores(separation: float, seed: int) -> np.ndarray:
    """(N, 2) probabilities whose AUC grows with separation."""
    noise = np.random.default_rng(seed).normal(0, 1, N)
    p = 1 / (1 + np.exp(-(separation * (Y - 0.5) + noise)))
    return np.stack([1 - p, p], 1)


FEDERATED, POOLED = scores(2.0, 1), scores(3.5, 2)
# site-a has the better test AUC, site-b the better validation AUC: the verdict takes site-b.
LOCAL = {"site-a": (scores(1.5, 3), 0.70), "site-b": (scores(0.8, 4), 0.90)}

LINE = re.compile(
    r"^FedAvg vs best single site \(site-b\): \+\d\.\d{3} AUC \[95% CI [+−]\d\.\d{3}, \+\d\.\d{3}\], "
    r"p (= [\d.e-]+|< 0\.001) \(DeLong\); vs pooled: −\d\.\d{3} \[−\d\.\d{3}, [+−]\d\.\d{3}\], "
    r"p (= [\d.e-]+|< 0\.001)$")


def test_the_line_names_the_algorithm_and_the_site_chosen_on_validation():
    verdict = run_verdict("fedavg", Task.BINARY, Y, FEDERATED, POOLED, LOCAL)
    assert LINE.match(verdict["text"]), verdict["text"]
    assert st.auc(Y, LOCAL["site-a"][0][:, 1]) > st.auc(Y, LOCAL["site-b"][0][:, 1])  # the premise
    best = verdict["vs_best_single_site"]
    assert best["site"] == "site-b" and best["validation_auc"] == 0.90
    assert verdict["algorithm"] == "FedAvg" and verdict["method"] == "DeLong"


def test_the_numbers_are_delongs_federated_minus_baseline():
    verdict = run_verdict("fedavg", Task.BINARY, Y, FEDERATED, POOLED, LOCAL)
    for key, other in (("vs_pooled", POOLED), ("vs_best_single_site", LOCAL["site-b"][0])):
        expected = st.delong_test(Y, FEDERATED[:, 1], other[:, 1])
        got = verdict[key]
        assert (got["difference"], got["low"], got["high"], got["p_value"]) == pytest.approx(
            (expected.difference, expected.low, expected.high, expected.p_value))
    assert verdict["vs_pooled"]["difference"] < 0 < verdict["vs_best_single_site"]["difference"]


def test_signs_and_p_values_read_as_a_clinician_quotes_them():
    assert signed(0.021) == "+0.021" and signed(-0.004) == f"{MINUS}0.004"
    assert signed(-0.0001) == "0.000" and signed(float("nan")) == "n/a"
    assert (p_text(0.012), p_text(0.61), p_text(0.0004), p_text(1.0)) == (
        "= 0.012", "= 0.61", "< 0.001", "= 1")


def test_without_baselines_the_line_says_what_it_cannot_compare():
    verdict = run_verdict("fedprox", Task.BINARY, Y, FEDERATED, None, None)
    assert verdict["text"].startswith("FedProx: not compared with a single site or with pooling")
    assert verdict["vs_pooled"] is None and verdict["vs_best_single_site"] is None


def test_a_multiclass_task_gives_auc_differences_and_says_there_is_no_paired_test():
    y = RNG.integers(0, 3, N)
    def probs(sharpness: float, seed: int) -> np.ndarray:
        logits = sharpness * np.eye(3)[y] + np.random.default_rng(seed).normal(0, 1, (N, 3))
        return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    verdict = run_verdict("fedavg", Task.ORDINAL, y, probs(2, 1), probs(3, 2),
                          {"a": (probs(1, 3), 0.6), "b": (probs(0.5, 4), 0.7)})
    assert verdict["method"] is None and "p_value" not in verdict["vs_pooled"]
    assert re.match(r"^FedAvg vs best single site \(b\): \+\d\.\d{3} AUC; vs pooled: −\d\.\d{3} "
                    r"\(macro AUC; no paired test: DeLong's is for binary tasks, this is ordinal\)$",
                    verdict["text"]), verdict["text"]


def test_best_by_validation_ignores_undefined_aucs_and_names():
    assert best_by_validation({"a": float("nan"), "b": 0.6, "c": 0.7}) == "c"
    assert best_by_validation({}) is None
    assert display_name("scaffold") == "SCAFFOLD" and display_name("newalgo") == "newalgo"


def test_a_deployment_summarizes_each_hospitals_own_test_and_says_what_it_cannot_compare():
    def paired(diff: float, p: float) -> dict:
        return {"test": {}, "paired": {"method": "DeLong", "difference": diff, "low": diff - 0.1,
                                       "high": diff + 0.1, "p_value": p}}
    local = {"h1": paired(0.05, 0.01), "h2": paired(0.02, 0.4), "h3": paired(-0.03, 0.2),
             "h4": {"test": {}, "paired": {"method": "none", "reason": "one class"}}}
    text = deployment_verdict("fedavg", local)["text"]
    assert text.startswith("FedAvg vs each hospital's own model (DeLong at the hospital): higher "
                           "AUC at 2 of 3 (p < 0.05 at 1), lower at 1 (p < 0.05 at 0), mean "
                           "difference +0.013;")
    assert "not measurable in a deployment" in text
    off = deployment_verdict("fedavg", None)
    assert "without baselines" in off["text"] and off["method"] is None


def test_a_comparison_over_seeds_quotes_the_t_test_and_every_site_it_chose():
    def entry(diff: float, sites: list[str], t: bool) -> dict:
        delong = [{"against": s, "difference": diff, "low": diff - 0.02, "high": diff + 0.02,
                   "p_value": 0.3} for s in sites]
        return {"delong": delong} | ({"t_test": {"difference": diff, "low": diff - 0.05,
                                                 "high": diff + 0.05, "p_value": 0.04}} if t else {})
    paired = {"fedavg vs best_local": entry(0.02, ["local:b", "local:a"], True),
              "fedavg vs pooled": entry(-0.01, ["pooled", "pooled"], True)}
    text = compare_verdicts(["fedavg"], "binary", paired)["fedavg"]["text"]
    assert text == (f"FedAvg vs best single site (chosen per seed: a, b): +0.020 AUC [95% CI "
                    f"{MINUS}0.030, +0.070], p = 0.04 (paired t-test over 2 seeds); vs pooled: "
                    f"{MINUS}0.010 [{MINUS}0.060, +0.040], p = 0.04")
    one = {k: entry(v, s, False) for k, v, s in (("fedavg vs best_local", 0.02, ["local:b"]),
                                                  ("fedavg vs pooled", -0.01, ["pooled"]))}
    assert "(b): +0.020 AUC" in compare_verdicts(["fedavg"], "binary", one)["fedavg"]["text"]
    assert "p = 0.3 (DeLong)" in compare_verdicts(["fedavg"], "binary", one)["fedavg"]["text"]
    multi = compare_verdicts(["fedbn"], "ordinal", None)["fedbn"]
    assert multi["text"].startswith("FedBN: no paired test") and multi["vs_pooled"] is None
