"""A relayed p2p message (privacy/peer_seal.py) is unreadable to the relay and opens only as sent.

Hand mutations that turn these tests red (checked once each):
- seal with a key the relay can derive (e.g. HKDF of the two public keys): test_relay_cannot_open
- leave the sender out of the associated data and the key: test_a_swapped_sender_does_not_open
- skip advert_refusal in PeerKeys.accept: test_a_substituted_key_is_refused
"""

from __future__ import annotations

import secrets
from dataclasses import replace

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from medfed.privacy import peer_seal
from medfed.privacy.peer_seal import NONCE_BYTES, PURPOSE, PeerKeys, PeerSealError, round_params
from medfed.privacy.secagg import KeyAdvert, agree, derive, raw_public
from medfed.privacy.signing import ephemeral_identities

SITES = ("site-a", "site-b", "site-c")


@pytest.fixture(scope="module")
def identities():
    return ephemeral_identities(SITES)


def round_keys(identities, round_number: int = 1) -> dict[str, PeerKeys]:
    params = round_params(SITES, round_number)
    keys = {s: PeerKeys(identities[s], params, round_number) for s in SITES}
    book = {s: k.advert() for s, k in keys.items()}
    for k in keys.values():
        k.accept(book)
    return keys


def test_a_sealed_message_opens_at_its_receiver(identities):
    keys = round_keys(identities)
    plain = secrets.token_bytes(5000)
    message = keys["site-a"].seal("site-b", plain)
    assert keys["site-b"].open(message) == plain
    assert plain not in message.ciphertext and len(message.ciphertext) == len(plain) + peer_seal.OVERHEAD
    assert peer_seal.unpack(peer_seal.pack([message, message])) == [message, message]


def test_relay_cannot_open(identities):
    """The relay holds the ciphertext, every advert (public keys, certificates) and all its own
    keys (its certificate key, any X25519 key it makes): no key it can derive opens the message."""
    keys = round_keys(identities)
    plain = b"model weights of site-a" * 100
    message = keys["site-a"].seal("site-b", plain)
    adverts = {s: k.advert() for s, k in keys.items()}
    relay = X25519PrivateKey.generate()  # the relay's own key agreement key
    context = keys["site-a"].params.context
    candidates = [agree(relay, adverts[s].cipher_key, PURPOSE, context) for s in SITES]
    a, b = adverts["site-a"].cipher_key, adverts["site-b"].cipher_key
    candidates += [derive(a + b, PURPOSE, context), derive(b + a, PURPOSE, context), bytes(32)]
    known = peer_seal.associated_data(keys["site-a"].params, "site-a", "site-b", a, b)
    nonce, body = message.ciphertext[:NONCE_BYTES], message.ciphertext[NONCE_BYTES:]
    for key in candidates:
        for data in (known, b"", None):
            with pytest.raises(InvalidTag):
                ChaCha20Poly1305(key).decrypt(nonce, body, data)
    with pytest.raises(PeerSealError):  # nor can a third site, which holds a verified book
        keys["site-c"].open(replace(message, receiver="site-c"))


def test_tampering_does_not_open(identities):
    keys = round_keys(identities)
    message = keys["site-a"].seal("site-b", b"x" * 1000)
    flipped = bytearray(message.ciphertext)
    flipped[NONCE_BYTES + 10] ^= 1
    with pytest.raises(PeerSealError, match="does not open"):
        keys["site-b"].open(replace(message, ciphertext=bytes(flipped)))


def test_a_swapped_sender_does_not_open(identities):
    """The relay relabels site-a's message as site-c's: the key and the associated data name the
    sender, so it fails."""
    keys = round_keys(identities)
    message = keys["site-a"].seal("site-b", b"x" * 1000)
    with pytest.raises(PeerSealError, match="does not open"):
        keys["site-b"].open(replace(message, sender="site-c"))


def test_another_round_does_not_open(identities):
    """A message replayed in a later round: refused, and under that round's keys it fails anyway."""
    first, second = round_keys(identities, 1), round_keys(identities, 2)
    message = first["site-a"].seal("site-b", b"x" * 100)
    with pytest.raises(PeerSealError, match="round"):
        second["site-b"].open(message)
    with pytest.raises(PeerSealError, match="does not open"):
        second["site-b"].open(replace(message, round=2))


def test_a_substituted_key_is_refused(identities):
    """A relay that puts its own key in site-b's advert (it cannot sign as site-b) is caught
    before site-a seals anything."""
    params = round_params(SITES, 1)
    keys = {s: PeerKeys(identities[s], params, 1) for s in SITES}
    book = {s: k.advert() for s, k in keys.items()}
    mine = raw_public(X25519PrivateKey.generate())
    book["site-b"] = KeyAdvert("site-b", mine, mine, book["site-b"].certificate,
                               book["site-b"].signature)
    with pytest.raises(PeerSealError, match="substituted"):
        keys["site-a"].accept(book)


@pytest.mark.parametrize("blob", [b"\x00\x00\x00", b"\x00\x00\x00\x09abc",
                                  peer_seal.pack([]) + b"\x00\x00\x00\x01a"])
def test_a_malformed_bundle_is_refused(blob):
    with pytest.raises(PeerSealError):
        peer_seal.unpack(blob)
