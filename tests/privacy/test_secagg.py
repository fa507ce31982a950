"""The protocol of secagg.py end to end, with sites that drop out (an honest server; a malicious
one is test_malicious_server.py)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medfed.privacy import secagg
from medfed.privacy.fixed_point import FixedPoint, ring_sum
from medfed.privacy.secagg_site import SiteSession
from medfed.privacy.signing import ephemeral_identities

IDENTITIES = ephemeral_identities(f"site-{k}" for k in range(10))


def sessions_with_shares(params):
    """Rounds 0 and 1 for every site of params: sessions that hold each other's shares."""
    sessions = {s: SiteSession(s, params, IDENTITIES[s]) for s in params.sites}
    book = secagg.key_book([sessions[s].advertise() for s in params.sites], params)
    inbox = secagg.route_shares([sessions[s].share_keys(book) for s in params.sites])
    for s in params.sites:
        sessions[s].receive_shares(inbox.get(s, []))
    return sessions, book


def run_protocol(vectors, threshold, drop=(), drop_before_unmask=()):
    """All five rounds in process; `drop` sites vanish after sharing their keys (their masked
    input never arrives), `drop_before_unmask` after sending it and signing the survivor set."""
    sites = tuple(vectors)
    length = len(next(iter(vectors.values())))
    params = secagg.Params(sites, threshold, length, context=b"round-0")
    sessions, book = sessions_with_shares(params)
    masked = {s: sessions[s].mask(vectors[s]) for s in sites if s not in drop}
    request = secagg.unmask_request(masked, book, params)
    signatures = [sessions[s].sign_survivors(request.survivors) for s in request.survivors]
    request = secagg.signed_request(request, signatures, params)
    responses = [sessions[s].unmask(request) for s in request.survivors if s not in drop_before_unmask]
    masked_sum = None
    for message in masked.values():
        masked_sum = secagg.add_masked(masked_sum, message)
    return secagg.unmask(masked_sum, request, responses, book, params), masked


def ring_vectors(n, length, seed):
    rng = np.random.default_rng(seed)
    codec = FixedPoint(scale=2.0**24, sites=n)
    floats = {f"site-{k}": rng.normal(0, 1, length) for k in range(n)}
    return codec, floats, {s: codec.encode(x) for s, x in floats.items()}


@settings(max_examples=12)
@given(st.integers(2, 8), st.integers(1, 40), st.integers(0, 2**31))
def test_masked_sum_equals_plain_sum(n, length, seed):
    codec, floats, ring = ring_vectors(n, length, seed)
    total, _ = run_protocol(ring, threshold=max(2, n // 2 + 1))
    np.testing.assert_array_equal(total, ring_sum(list(ring.values())))  # exact in the ring
    np.testing.assert_allclose(codec.decode(total), np.sum(list(floats.values()), axis=0),
                               atol=n * 0.5 / codec.scale)


def test_the_server_never_sees_a_site_vector():
    codec, floats, ring = ring_vectors(4, 64, 1)
    _, masked = run_protocol(ring, threshold=3)
    for site, message in masked.items():
        assert not np.array_equal(message.vector, ring[site])
        # neither close in the ring: a masked element is uniform, not x plus small noise
        decoded = codec.decode(message.vector)
        assert np.abs(decoded - floats[site]).min() > 1.0


@pytest.mark.parametrize("dropped", [0, 1, 4])
def test_ten_sites_threshold_six_survive_up_to_four_dropouts(dropped):
    _, _, ring = ring_vectors(10, 100, 2)
    # from the middle: the sign of a pairwise mask depends on the order of the sites
    gone = tuple(list(ring)[1:1 + dropped])
    total, _ = run_protocol(ring, threshold=6, drop=gone)
    expected = ring_sum([v for s, v in ring.items() if s not in gone])
    np.testing.assert_array_equal(total, expected)


def test_five_dropouts_of_ten_with_threshold_six_fail_clearly():
    _, _, ring = ring_vectors(10, 10, 3)
    with pytest.raises(secagg.SecureAggregationError,
                       match=r"only 5 of 10 sites delivered masked updates, fewer than the "
                             r"threshold t = 6"):
        run_protocol(ring, threshold=6, drop=tuple(list(ring)[:5]))


def test_too_few_unmask_answers_fail_clearly():
    _, _, ring = ring_vectors(5, 10, 4)
    with pytest.raises(secagg.SecureAggregationError, match="answered the unmask request"):
        run_protocol(ring, threshold=4, drop=("site-0",), drop_before_unmask=("site-1",))


def test_a_site_answers_only_for_the_one_survivor_set_it_signed():
    _, _, ring = ring_vectors(4, 5, 5)
    params = secagg.Params(tuple(ring), 3, 5)
    sessions, book = sessions_with_shares(params)
    for s in params.sites:
        sessions[s].mask(ring[s])
    first = secagg.unmask_request(["site-0", "site-1", "site-2"], book, params)
    signed = secagg.signed_request(
        first, [sessions[s].sign_survivors(first.survivors) for s in first.survivors], params)
    sessions["site-0"].unmask(signed)
    with pytest.raises(secagg.SecureAggregationError, match="will not sign"):
        sessions["site-0"].sign_survivors(("site-0", "site-1", "site-3"))
    other = secagg.UnmaskRequest(("site-0", "site-1", "site-2", "site-3"), (), signed.signatures)
    with pytest.raises(secagg.SecureAggregationError, match="answers only for the survivor set"):
        sessions["site-0"].unmask(other)


def test_shares_are_encrypted_for_their_recipient():
    _, _, ring = ring_vectors(3, 5, 6)
    sites = tuple(ring)
    params = secagg.Params(sites, 2, 5)
    sessions = {s: SiteSession(s, params, IDENTITIES[s]) for s in sites}
    book = secagg.key_book([sessions[s].advertise() for s in sites], params)
    bundle = sessions["site-0"].share_keys(book)
    wrong = secagg.EncryptedShare("site-0", "site-2", bundle[0].ciphertext)  # meant for site-1
    sessions["site-2"].share_keys(book)
    with pytest.raises(secagg.SecureAggregationError, match="failed authentication"):
        sessions["site-2"].receive_shares([wrong])


def test_threshold_must_fit_the_round():
    with pytest.raises(secagg.SecureAggregationError, match="threshold must be between 2 and the 3"):
        secagg.Params(("a", "b", "c"), 4, 10)


@pytest.mark.parametrize("n, t", [(4, 2), (5, 2), (6, 3), (10, 5)])
def test_a_threshold_at_or_below_half_the_round_is_refused(n, t):
    with pytest.raises(secagg.SecureAggregationError,
                       match=rf"threshold t = {t} is not above half of the round's {n} sites"):
        secagg.Params(tuple(f"s{k}" for k in range(n)), t, 10)
    secagg.Params(tuple(f"s{k}" for k in range(n)), n // 2 + 1, 10)  # a majority is fine
