import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medfed.privacy.fixed_point import FixedPoint, FixedPointError, ring_sum


@given(st.integers(1, 30), st.integers(1, 50), st.integers(0, 2**31))
def test_sum_of_encodings_decodes_to_the_sum(sites, size, seed):
    rng = np.random.default_rng(seed)
    codec = FixedPoint(scale=2.0**20, sites=sites)
    xs = [rng.normal(0, 100, size) for _ in range(sites)]
    got = codec.decode(ring_sum([codec.encode(x) for x in xs]))
    np.testing.assert_allclose(got, np.sum(xs, axis=0), rtol=0, atol=sites * 0.5 / codec.scale + 1e-9)


def test_negative_values_survive_the_ring():
    codec = FixedPoint(scale=4.0, sites=2)
    assert codec.decode(ring_sum([codec.encode(np.array([-1.5])), codec.encode(np.array([0.25]))])) \
        == pytest.approx([-1.25])


def test_values_beyond_the_bound_are_refused():
    codec = FixedPoint(scale=2.0**24, sites=10)
    with pytest.raises(FixedPointError, match="exceeds the fixed-point bound"):
        codec.encode(np.array([codec.bound * 1.01]))
    with pytest.raises(FixedPointError):
        codec.encode(np.array([np.nan]))
    # at the bound, the sum of all sites still reads back without wrapping
    x = np.array([codec.bound, -codec.bound])
    total = codec.decode(ring_sum([codec.encode(x)] * 10))
    np.testing.assert_allclose(total, 10 * x, rtol=1e-12)
