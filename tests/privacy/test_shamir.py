import itertools
import secrets

import pytest

from medfed.privacy import shamir


def test_any_t_shares_rebuild_the_secret():
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, 6, 4)
    for chosen in itertools.combinations(shares, 4):
        assert shamir.reconstruct(chosen, 4, 32) == secret


def test_fewer_than_t_shares_is_an_error():
    shares = shamir.split(b"\x01" * 32, 5, 3)
    with pytest.raises(shamir.SharingError, match="fewer than the threshold 3"):
        shamir.reconstruct(shares[:2], 3, 32)
    with pytest.raises(shamir.SharingError, match="distinct"):
        shamir.reconstruct([shares[0], shares[0], shares[1]], 3, 32)


def test_share_bytes_round_trip():
    share = shamir.split(b"abc", 3, 2)[2]
    assert shamir.Share.from_bytes(share.to_bytes()) == share


def test_bad_threshold():
    with pytest.raises(shamir.SharingError, match="threshold"):
        shamir.split(b"x", 3, 4)
