"""Aggregation mathematics, as properties: identity, permutation invariance, the weighted average,
integer counters, streaming equals batch, and no reference kept to any site's state."""

from __future__ import annotations

import gc
import math
import weakref

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from medfed.algorithms.aggregate import WeightedMean, cast_like, weighted_mean
from medfed.errors import IncompatibleUpdate

SHAPES = {"conv.weight": (2, 3), "conv.bias": (3,), "bn.running_var": ()}
COUNTER = "bn.num_batches_tracked"
values = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@st.composite
def a_state(draw) -> dict[str, torch.Tensor]:
    state = {}
    for key, shape in SHAPES.items():
        n = int(np.prod(shape))
        state[key] = torch.tensor(draw(st.lists(values, min_size=n, max_size=n)),
                                  dtype=torch.float32).reshape(shape)
    state[COUNTER] = torch.tensor(draw(st.integers(0, 10**9)), dtype=torch.int64)
    return state


states_and_weights = st.integers(1, 6).flatmap(lambda k: st.tuples(
    st.lists(a_state(), min_size=k, max_size=k),
    st.lists(st.integers(1, 10_000), min_size=k, max_size=k)))


def manual_weighted_mean(states, weights, key):
    w = np.asarray(weights, np.float64)
    stacked = np.stack([s[key].double().numpy() for s in states])
    return np.tensordot(w, stacked, axes=1) / w.sum()


@given(state=a_state(), k=st.integers(1, 5), weights=st.lists(st.integers(1, 1000), min_size=5))
def test_identical_updates_give_the_same_model(state, k, weights):
    result = cast_like(weighted_mean([state] * k, weights[:k]), state)
    for key, value in state.items():
        assert result[key].dtype == value.dtype
        torch.testing.assert_close(result[key], value, rtol=1e-6, atol=1e-6)


@given(sw=states_and_weights)
def test_weighting_by_sample_count_is_the_manual_weighted_average(sw):
    states, weights = sw
    result = weighted_mean(states, weights)
    for key in SHAPES:
        np.testing.assert_allclose(result[key].numpy(), manual_weighted_mean(states, weights, key),
                                   rtol=1e-10, atol=1e-9)


@given(sw=states_and_weights, data=st.data())
def test_permutation_invariance(sw, data):
    states, weights = sw
    order = data.draw(st.permutations(range(len(states))))
    a = weighted_mean(states, weights)
    b = weighted_mean([states[i] for i in order], [weights[i] for i in order])
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-12, atol=1e-9)


@given(sw=states_and_weights, scale=st.sampled_from([0.001, 0.5, 3.0, 1000.0]))
def test_only_relative_weights_matter(sw, scale):
    states, weights = sw
    a = weighted_mean(states, weights)
    b = weighted_mean(states, [w * scale for w in weights])
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-9, atol=1e-9)


@given(sw=states_and_weights)
def test_integer_buffers_keep_their_dtype_and_take_the_maximum(sw):
    states, weights = sw
    result = weighted_mean(states, weights)
    assert result[COUNTER].dtype == torch.int64
    assert result[COUNTER].item() == max(s[COUNTER].item() for s in states)


def test_an_integer_counter_is_not_averaged():
    states = [{"n": torch.tensor(3)}, {"n": torch.tensor(4)}]
    result = weighted_mean(states, [1, 1])
    assert result["n"].dtype == torch.int64 and result["n"].item() == 4  # not 3.5, not 3


@given(sw=states_and_weights)
def test_streaming_weighted_mean_equals_weighted_mean(sw):
    states, weights = sw
    mean = WeightedMean()
    for state, weight in zip(states, weights, strict=True):
        mean.add(state, weight)
    assert mean.count == len(states)
    streamed, batch = mean.result(), weighted_mean(states, weights)
    assert streamed.keys() == batch.keys()
    for key in batch:
        assert torch.equal(streamed[key], batch[key])


def test_float_sums_are_kept_in_float64_and_cast_back():
    states = [{"w": torch.full((2,), 0.1, dtype=torch.float32)} for _ in range(3)]
    result = weighted_mean(states, [1, 2, 3])
    assert result["w"].dtype == torch.float64
    assert cast_like(result, states[0])["w"].dtype == torch.float32


def test_weighted_mean_does_not_keep_references_to_added_states():
    mean = WeightedMean()
    refs = []
    for k in range(20):
        state = {"w": torch.full((4,), float(k)), "b": torch.full((2,), 1.0, dtype=torch.float64),
                 COUNTER: torch.tensor(k)}
        refs += [weakref.ref(t) for t in state.values()]
        mean.add(state, weight=1 + k)
        del state
    gc.collect()
    assert all(r() is None for r in refs), "WeightedMean holds on to a site's tensors"
    expected = sum(k * (1 + k) for k in range(20)) / sum(1 + k for k in range(20))
    torch.testing.assert_close(mean.result()["w"], torch.full((4,), expected, dtype=torch.float64))


def test_weighted_mean_holds_one_running_sum_whatever_the_number_of_sites():
    mean = WeightedMean()
    for k in range(50):
        mean.add({"w": torch.full((3,), float(k))}, 1)
    tensors = [o for o in vars(mean).values() if isinstance(o, torch.Tensor)]
    tensors += [t for o in vars(mean).values() if isinstance(o, dict) for t in o.values()]
    assert len(tensors) == 1 and tensors[0].shape == (3,)


def test_changing_an_input_after_adding_it_does_not_change_the_mean():
    a, b = {"w": torch.ones(2), "n": torch.tensor(1)}, {"w": torch.zeros(2), "n": torch.tensor(2)}
    mean = WeightedMean()
    mean.add(a, 1)
    mean.add(b, 1)
    a["w"].fill_(100.0)
    a["n"].fill_(100)
    result = mean.result()
    torch.testing.assert_close(result["w"], torch.full((2,), 0.5, dtype=torch.float64))
    assert result["n"].item() == 2


def test_the_result_does_not_alias_the_running_sum():
    mean = WeightedMean()
    mean.add({"w": torch.ones(2), "n": torch.tensor(1)}, 1)
    first = mean.result()
    first["w"].fill_(7.0)
    first["n"].fill_(7)
    second = mean.result()
    assert second["w"].tolist() == [1.0, 1.0] and second["n"].item() == 1


@pytest.mark.parametrize("weight", [0, -1, -0.5])
def test_a_weight_that_is_not_positive_is_refused(weight):
    with pytest.raises(IncompatibleUpdate, match="> 0"):
        WeightedMean().add({"w": torch.ones(1)}, weight)


@pytest.mark.parametrize("weight", [math.nan, math.inf])
def test_a_weight_that_is_not_finite_is_refused(weight):
    with pytest.raises(IncompatibleUpdate):
        WeightedMean().add({"w": torch.ones(1)}, weight)


def test_states_with_different_keys_are_refused():
    mean = WeightedMean()
    mean.add({"a": torch.ones(1)}, 1)
    with pytest.raises(IncompatibleUpdate, match="different keys"):
        mean.add({"b": torch.ones(1)}, 1)


def test_no_updates_have_no_mean():
    with pytest.raises(ValueError):
        WeightedMean().result()
    with pytest.raises(ValueError):
        weighted_mean([], [])


def test_states_and_weights_must_pair_up():
    with pytest.raises(ValueError):
        weighted_mean([{"w": torch.ones(1)}], [1, 2])
