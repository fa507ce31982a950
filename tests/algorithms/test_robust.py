"""Robust aggregation, as properties and against brute-force references: the median and the
trimmed mean ignore f arbitrarily large updates, Krum picks an honest update among n >= 2f + 3,
norm bounding clips, and every aggregator says whether it streams."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from medfed.algorithms import robust
from medfed.algorithms.aggregators import AGGREGATORS, RobustSettings, build_aggregator
from medfed.algorithms.fedavg import FedAvg
from medfed.config import AGGREGATORS as AGGREGATOR_NAMES
from medfed.errors import ConfigError
from medfed.types import Update

SHAPES = {"w": (3, 2), "b": (2,)}
COUNTER = "bn.num_batches_tracked"


def make_state(values: np.ndarray, counter: int = 0) -> dict[str, torch.Tensor]:
    """A state dict from a flat vector of 8 floats (w: 3x2, b: 2) and a counter."""
    v = torch.tensor(values, dtype=torch.float32)
    return {"w": v[:6].reshape(3, 2).clone(), "b": v[6:8].clone(),
            COUNTER: torch.tensor(counter, dtype=torch.int64)}


def flat(state) -> np.ndarray:
    return np.concatenate([state["w"].double().numpy().ravel(), state["b"].double().numpy()])


honest_vectors = st.lists(st.lists(st.floats(-1, 1, width=32), min_size=8, max_size=8),
                          min_size=1, max_size=7).map(np.asarray)


@st.composite
def honest_and_outliers(draw, min_honest_for_f):
    """(honest (n_h, 8), outlier directions (f, 8), f) with n_h >= min_honest_for_f(f)."""
    f = draw(st.integers(1, 3))
    n_h = draw(st.integers(min_honest_for_f(f), min_honest_for_f(f) + 3))
    honest = np.asarray(draw(st.lists(st.lists(st.floats(-1, 1, width=32), min_size=8, max_size=8),
                                      min_size=n_h, max_size=n_h)))
    signs = np.asarray(draw(st.lists(st.lists(st.sampled_from([-1.0, 1.0]), min_size=8,
                                              max_size=8), min_size=f, max_size=f)))
    return honest, signs, f


# --- median and trimmed mean -------------------------------------------------------------------

@given(honest_vectors)
def test_median_matches_numpy(vectors):
    result = robust.coordinate_median([make_state(v) for v in vectors])
    np.testing.assert_allclose(flat(result), np.median(vectors.astype(np.float64), axis=0),
                               rtol=1e-6, atol=1e-6)


@given(honest_vectors, st.integers(0, 3))
def test_trimmed_mean_matches_a_sort_and_slice_reference(vectors, trim):
    result = robust.trimmed_mean([make_state(v) for v in vectors], trim)
    n = len(vectors)
    k = min(trim, (n - 1) // 2)
    expected = np.sort(vectors.astype(np.float64), axis=0)[k:n - k].mean(axis=0)
    np.testing.assert_allclose(flat(result), expected, rtol=1e-6, atol=1e-6)


@given(honest_and_outliers(lambda f: f + 1), st.floats(1e3, 1e30))
def test_median_is_unmoved_by_f_arbitrarily_large_updates(case, magnitude):
    honest, signs, f = case
    states = [make_state(v) for v in honest]
    near = robust.coordinate_median(states + [make_state(s * 1e3) for s in signs])
    far = robust.coordinate_median(states + [make_state(s * magnitude) for s in signs])
    assert np.array_equal(flat(near), flat(far))  # only ranks matter, not how far they lie
    assert np.all(flat(far) >= honest.min(axis=0) - 1e-6)
    assert np.all(flat(far) <= honest.max(axis=0) + 1e-6)


@given(honest_and_outliers(lambda f: f + 1), st.floats(1e3, 1e30))
def test_trimmed_mean_is_unmoved_by_f_arbitrarily_large_updates(case, magnitude):
    honest, signs, f = case
    states = [make_state(v) for v in honest]
    near = robust.trimmed_mean(states + [make_state(s * 1e3) for s in signs], f)
    far = robust.trimmed_mean(states + [make_state(s * magnitude) for s in signs], f)
    np.testing.assert_allclose(flat(near), flat(far), rtol=1e-6)
    assert np.all(flat(far) >= honest.min(axis=0) - 1e-6)
    assert np.all(flat(far) <= honest.max(axis=0) + 1e-6)


def test_coordinatewise_rules_keep_counters_as_their_maximum_and_dtypes():
    states = [make_state(np.full(8, float(i)), counter=c) for i, c in enumerate([3, 9, 5])]
    for result in (robust.coordinate_median(states), robust.trimmed_mean(states, 1)):
        assert result[COUNTER].item() == 9 and result[COUNTER].dtype == torch.int64
        assert result["w"].dtype == torch.float32
        assert torch.equal(result["w"], torch.full((3, 2), 1.0))


def test_median_of_an_even_count_is_the_mean_of_the_middle_two():
    states = [make_state(np.full(8, v)) for v in (0.0, 1.0, 3.0, 10.0)]
    assert torch.equal(robust.coordinate_median(states)["b"], torch.full((2,), 2.0))


# --- Krum ----------------------------------------------------------------------------------------

def brute_force_krum_scores(vectors: np.ndarray, f: int) -> np.ndarray:
    n = len(vectors)
    k = min(max(n - f - 2, 1), n - 1)
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((vectors[i] - vectors[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[:k]))
    return np.asarray(scores)


@given(st.lists(st.lists(st.floats(-10, 10, width=32), min_size=8, max_size=8), min_size=2,
                max_size=8).map(np.asarray), st.integers(0, 3))
def test_krum_scores_match_brute_force(vectors, f):
    scores = robust.krum_scores([make_state(v) for v in vectors], f).numpy()
    expected = brute_force_krum_scores(vectors.astype(np.float32).astype(np.float64), f)
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-9)


@given(honest_and_outliers(lambda f: f + 3), st.floats(1e2, 1e12), st.randoms())
def test_krum_picks_an_honest_update_among_n_at_least_2f_plus_3(case, distance, shuffle):
    honest, signs, f = case  # n = n_h + f >= 2f + 3
    outliers = [make_state(s * distance + np.ones(8)) for s in signs]  # colluding, far from the rest
    states = [make_state(v) for v in honest] + outliers
    order = list(range(len(states)))
    shuffle.shuffle(order)
    shuffled = [states[i] for i in order]
    chosen = robust.krum_select(shuffled, f)
    assert len(chosen) == 1 and order[chosen[0]] < len(honest)
    kept = robust.krum_select(shuffled, f, keep=len(states) - f)  # Multi-Krum's m = n - f
    assert {order[i] for i in kept} == set(range(len(honest)))


def test_krum_is_defined_for_fewer_sites_than_its_guarantee_needs():
    states = [make_state(np.full(8, v)) for v in (0.0, 0.1, 5.0)]
    assert robust.krum_select(states, byzantine=2) in ([0], [1])
    assert robust.krum_select(states[:1], byzantine=1) == [0]


def test_pairwise_distances_cover_every_float_tensor_and_skip_counters():
    a, b = make_state(np.zeros(8), counter=0), make_state(np.ones(8), counter=10**6)
    distances = robust.pairwise_sq_distances([a, b])
    assert distances[0, 1].item() == pytest.approx(8.0) and distances[0, 0].item() == 0


# --- norm bounding --------------------------------------------------------------------------------

@given(st.lists(st.floats(-100, 100, width=32), min_size=8, max_size=8), st.floats(0.01, 10))
def test_clip_to_norm_bounds_the_change_and_keeps_its_direction(values, bound):
    reference = make_state(np.zeros(8) + 0.5)
    state = make_state(np.asarray(values) + 0.5)
    norm_before = robust.update_norm(state, reference)
    clipped = robust.clip_to_norm(state, reference, bound)
    assert robust.update_norm(clipped, reference) <= bound * (1 + 1e-5) + 1e-6
    if norm_before <= bound:
        assert clipped is state
    else:
        change, clipped_change = flat(state) - 0.5, flat(clipped) - 0.5
        np.testing.assert_allclose(clipped_change, change * bound / norm_before, rtol=1e-4, atol=1e-5)


def test_norm_bound_with_a_given_bound_streams_and_equals_the_mean_of_clipped_updates():
    reference = make_state(np.zeros(8))
    states = [make_state(np.full(8, v)) for v in (0.1, -0.2, 50.0)]
    weights = [10.0, 20.0, 30.0]
    aggregator = build_aggregator("norm-bound", RobustSettings(norm_bound=1.0))(reference)
    assert aggregator.streams
    for s, w in zip(states, weights, strict=True):
        aggregator.add(s, w)
    clipped = [flat(robust.clip_to_norm(s, reference, 1.0)) for s in states]
    expected = np.average(clipped, axis=0, weights=weights)
    np.testing.assert_allclose(flat(aggregator.result()), expected, rtol=1e-6)


def test_norm_bound_without_a_bound_clips_to_the_median_norm_of_the_round():
    reference = make_state(np.zeros(8))
    states = [make_state(np.full(8, v)) for v in (1.0, 2.0, 1000.0)]  # norms sqrt(8) * (1, 2, 1000)
    aggregator = build_aggregator("norm-bound", RobustSettings())(reference)
    assert not aggregator.streams
    for s in states:
        aggregator.add(s, 1.0)
    np.testing.assert_allclose(flat(aggregator.result()), np.full(8, (1 + 2 + 2) / 3), rtol=1e-6)


# --- the aggregator registry and the strategy that uses it ---------------------------------------

def test_the_registry_holds_the_configured_names_and_refuses_others_with_a_hint():
    assert list(AGGREGATORS) == list(AGGREGATOR_NAMES)
    with pytest.raises(ConfigError, match=r"unknown aggregator 'medain' \(did you mean 'median'\?\)"):
        build_aggregator("medain", RobustSettings())


@pytest.mark.parametrize(("name", "streams"), [
    ("mean", True), ("median", False), ("trimmed-mean", False), ("krum", False),
    ("multi-krum", False)])
def test_each_aggregator_says_whether_it_streams(name, streams):
    assert build_aggregator(name, RobustSettings())(make_state(np.zeros(8))).streams is streams


@pytest.mark.parametrize("name", ["median", "trimmed-mean", "krum", "multi-krum", "norm-bound"])
def test_fedavg_with_a_robust_aggregator_withstands_one_scaled_update(name):
    """5 sites, one sends its change x100 (and claims the most samples): the robust rules stay
    inside the honest updates' range; the mean is dragged far outside it."""
    initial = make_state(np.zeros(8))
    honest = [make_state(np.full(8, v)) for v in (0.9, 1.0, 1.1, 1.05)]
    attacker = make_state(np.full(8, 100.0))

    def aggregate(aggregator_name: str):
        strategy = FedAvg(initial, aggregator=build_aggregator(aggregator_name, RobustSettings()))
        strategy.open_stage()
        for k, s in enumerate([attacker, *honest]):
            strategy.receive(Update(f"site-{k}", s, n_samples=10_000 if k == 0 else 100, n_steps=1))
        strategy.close_stage()
        return flat(strategy.global_state)

    robust_result = aggregate(name)
    assert np.all((robust_result >= 0.0) & (robust_result <= 1.1 + 1e-6)), robust_result
    assert np.all(aggregate("mean") > 90)


def test_multi_krum_averages_the_m_most_central_updates():
    states = [make_state(np.full(8, v)) for v in (1.0, 1.2, 1.4, 9.0, -9.0)]
    settings = RobustSettings(byzantine=1, krum_keep=3)
    aggregator = build_aggregator("multi-krum", settings)(make_state(np.zeros(8)))
    for s in states:
        aggregator.add(s, 1.0)
    np.testing.assert_allclose(flat(aggregator.result()), np.full(8, 1.2), rtol=1e-6)


def test_robust_rules_ignore_sample_counts():
    states = [make_state(np.full(8, v)) for v in (0.0, 1.0, 2.0)]
    for name, (w1, w2) in itertools.product(["median", "trimmed-mean", "krum"],
                                            [((1, 1, 1), (1, 1000, 1))]):
        results = []
        for weights in (w1, w2):
            aggregator = build_aggregator(name, RobustSettings())(make_state(np.zeros(8)))
            for s, w in zip(states, weights, strict=True):
                aggregator.add(s, float(w))
            results.append(flat(aggregator.result()))
        np.testing.assert_array_equal(results[0], results[1])


def test_notes_name_the_updates_krum_left_out_and_norm_bounding_clipped():
    states = [make_state(np.full(8, v)) for v in (1.0, 1.1, 50.0, 0.9, 1.05)]
    reference = make_state(np.zeros(8))
    notes = {}
    for name, settings in (("krum", RobustSettings()), ("multi-krum", RobustSettings()),
                           ("norm-bound", RobustSettings(norm_bound=4.0)),
                           ("median", RobustSettings()), ("mean", RobustSettings())):
        aggregator = build_aggregator(name, settings)(reference)
        for s in states:
            aggregator.add(s, 1.0)
        aggregator.result()
        notes[name] = aggregator.notes()
    assert 2 in notes["krum"]["left_out"] and len(notes["krum"]["left_out"]) == 4
    assert notes["multi-krum"] == {"left_out": [2]}  # m = n - f = 4 kept
    assert notes["norm-bound"] == {"clipped": [2]}  # norms sqrt(8) x (1, 1.1, 50, 0.9, 1.05) vs 4
    assert notes["median"] == {} and notes["mean"] == {}
