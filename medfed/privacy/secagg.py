"""Secure aggregation: the server learns the sum of the sites' vectors and nothing else, even if it
is malicious.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017,
Figure 4 with the active-adversary additions of §4 and §6 (signed adverts, ConsistencyCheck), as
messages and pure steps:

    site u (secagg_site.SiteSession)                server (here)
    0  advertise(): KeyAdvert(c_u^PK, s_u^PK,       ->   key_book(adverts)            (needs >= t sites)
       certificate, signature over params + keys)
    1  share_keys(book): verify every advert (signing.py), then for each v
       Enc_{c_uv}(u, v, b_u share, s_u^SK share)    ->   route_shares()
       receive_shares(the ciphertexts addressed to u)
    2  mask(x_u): y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)  (mod 2^64)
                                                    ->   unmask_request(masked)  (survivors U3 >= t)
    3  sign_survivors(U3): sign U3, once per round  ->   signed_request(...)     (>= t signatures)
    4  unmask(request): verify >= t signatures of   ->   unmask(...) = sum of the survivors' x_u
       U3 on U3; shares of b_v for each v in U3, of s_v^SK for each v in the book but not in U3

s_uv = HKDF(X25519(s_u^SK, s_v^PK)) is the seed u and v share; the lower site (in the order of
`Params.sites`) adds its mask and the higher one subtracts it, so the masks of two survivors cancel.
A site that dropped after round 1 left its pairwise masks in the survivors' vectors: the survivors
reveal shares of its mask key s_v^SK, the server recomputes s_uv and removes them. The self-mask b_u
stops the server from learning x_u of a site that was only slow (its key would be recovered as if
dropped). Shares travel encrypted (AES-GCM under HKDF(X25519(c_u^SK, c_v^PK))), so the server that
routes them cannot read them. Keys are fresh per round; `Params.context` binds every derived key
and every signature to the round.

Against a malicious server:
- Signed adverts: a site signs (params, its name, c_u^PK, s_u^PK) with its certificate's key and
  verifies every advert of the book against the federation's CA before sharing anything; a server
  that substitutes keys (to read the shares, or to pose as a site) is caught there. Signing the
  params makes the book's sites agree on the round (sites, t, vector length, context).
- ConsistencyCheck: a site signs one survivor set U3 per round, and reveals shares only for the set
  it signed, once at least t sites of U3 have signed that same set. Each site commits to one set,
  so the server cannot get shares of b_v from some sites and of s_v^SK from others (split view),
  nor drop v after the check.
- t > n/2 (Params): two disjoint groups of t sites cannot exist, so the server cannot commit two
  groups to two different sets. With c sites colluding with the server (they sign and reveal
  anything) the same counting needs t > (n + c) / 2: a limit the README states.
The PRG is the ChaCha20 stream cipher keyed by the 32-byte seed.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection
from dataclasses import dataclass, field, replace

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medfed.errors import MedfedError
from medfed.privacy import shamir
from medfed.privacy.signing import SignatureError, Trust, encode
from medfed.types import SiteId

SEED_BYTES = 32
KEY_BYTES = 32  # raw X25519 private and public keys
RAW = serialization.Encoding.Raw


class SecureAggregationError(MedfedError):
    """The protocol cannot finish: too few sites, or a message that does not fit."""


@dataclass(frozen=True)
class Params:
    sites: tuple[SiteId, ...]  # every site of the round, in the order that decides mask signs
    threshold: int  # t: shares needed to rebuild a secret; survivors needed to finish
    length: int  # ring elements per vector
    context: bytes = b""  # e.g. the round number: keys of one round never serve another

    def __post_init__(self) -> None:
        n, t = len(self.sites), self.threshold
        if len(set(self.sites)) != n:
            raise SecureAggregationError("the round lists a site twice")
        if not 2 <= t <= n:
            raise SecureAggregationError(f"threshold must be between 2 and the {n} sites of the "
                                         f"round, got {t}")
        if 2 * t <= n:
            raise SecureAggregationError(
                f"threshold t = {t} is not above half of the round's {n} sites: a malicious server "
                f"could unmask one site's input from two disjoint groups of t sites; use t >= "
                f"{n // 2 + 1}")

    @functools.cached_property
    def digest(self) -> bytes:
        """What every signature of the round is bound to: its sites, t, length and context."""
        return hashlib.sha256(encode(*(s.encode() for s in self.sites), str(self.threshold).encode(),
                                     str(self.length).encode(), self.context)).digest()

    def index(self, site: SiteId) -> int:
        """The site's Shamir evaluation point (1-based)."""
        return self.sites.index(site) + 1


# ---- messages (what a transport carries) --------------------------------------------------------

@dataclass(frozen=True)
class KeyAdvert:
    site: SiteId
    cipher_key: bytes  # c_u^PK: encrypts the shares sent to u
    mask_key: bytes  # s_u^PK: agrees the pairwise mask seeds
    certificate: bytes  # the site's certificate (PEM), issued by the federation's CA
    signature: bytes  # the site's signature of advert_message(...)


@dataclass(frozen=True)
class EncryptedShare:
    sender: SiteId
    recipient: SiteId
    ciphertext: bytes  # nonce (12 bytes) + AES-GCM of the shares of b_sender and s_sender^SK


@dataclass(frozen=True)
class MaskedInput:
    site: SiteId
    vector: np.ndarray  # uint64, Params.length elements


@dataclass(frozen=True)
class SurvivorSignature:
    site: SiteId
    signature: bytes  # the site's signature of survivors_message(params, U3)


@dataclass(frozen=True)
class UnmaskRequest:
    survivors: tuple[SiteId, ...]  # U3: their masked inputs arrived
    dropped: tuple[SiteId, ...]  # advertised keys, but no masked input arrived
    signatures: dict[SiteId, bytes] = field(default_factory=dict)  # v -> v's signature of U3


@dataclass(frozen=True)
class UnmaskResponse:
    site: SiteId
    self_mask_shares: dict[SiteId, bytes]  # v -> this site's share of b_v, for survivors v
    key_shares: dict[SiteId, bytes]  # v -> this site's share of s_v^SK, for dropped v


# ---- primitives ----------------------------------------------------------------------------------

def prg(seed: bytes, length: int) -> np.ndarray:
    """`length` pseudo-random uint64s (read-only): the ChaCha20 keystream under a single-use 32-byte
    seed (a zero nonce is safe: no seed is used twice)."""
    encryptor = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return np.frombuffer(encryptor.update(_zeros(8 * length)), dtype=np.uint64)


@functools.lru_cache(maxsize=2)
def _zeros(n: int) -> bytes:
    """The plaintext the keystream is read from (allocating 8 MB per mask costs more than ChaCha20)."""
    return bytes(n)


def derive(secret: bytes, purpose: bytes, context: bytes) -> bytes:
    return HKDF(hashes.SHA256(), SEED_BYTES, salt=None, info=b"medfed/secagg/" + purpose + context
                ).derive(secret)


def agree(private: X25519PrivateKey, public: bytes, purpose: bytes, context: bytes) -> bytes:
    """The 32-byte key u and v both derive: HKDF(X25519(u's private key, v's public key))."""
    return derive(private.exchange(X25519PublicKey.from_public_bytes(public)), purpose, context)


def advert_message(params: Params, site: SiteId, cipher_key: bytes, mask_key: bytes) -> bytes:
    """What a site signs in round 0: the round, its name and its two public keys."""
    return encode(b"medfed/secagg/advert", params.digest, site.encode(), cipher_key, mask_key)


def advert_refusal(advert: KeyAdvert, params: Params, trust: Trust) -> str | None:
    """Why the advert is not its site's for this round (None when it is): a site outside the
    round, or no valid signature under the CA's certificate of the site it names. Each site
    checks the whole key book with it; a deployed server checks each advert with it first, so
    that one site's unsigned advert cannot make every honest site refuse the book."""
    if advert.site not in params.sites:
        return f"{advert.site} is not a site of the round"
    message = advert_message(params, advert.site, advert.cipher_key, advert.mask_key)
    try:
        trust.verify(advert.certificate, advert.site, advert.signature, message)
    except SignatureError as exc:
        return f"the key advert of {advert.site} {exc}"
    return None


def survivors_message(params: Params, survivors: tuple[SiteId, ...]) -> bytes:
    """What a site signs in the ConsistencyCheck: the round and the survivor set U3."""
    return encode(b"medfed/secagg/survivors", params.digest, *(s.encode() for s in survivors))


def raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(RAW, serialization.PublicFormat.Raw)


# ---- server side ---------------------------------------------------------------------------------

def key_book(adverts: list[KeyAdvert], params: Params) -> dict[SiteId, KeyAdvert]:
    book = {a.site: a for a in adverts if a.site in params.sites}
    if len(book) < params.threshold:
        raise SecureAggregationError(f"only {len(book)} sites advertised keys, fewer than the "
                                     f"threshold {params.threshold}")
    return book


def route_shares(bundles: list[list[EncryptedShare]]) -> dict[SiteId, list[EncryptedShare]]:
    """The server forwards each ciphertext to its recipient (it cannot read them)."""
    inbox: dict[SiteId, list[EncryptedShare]] = {}
    for bundle in bundles:
        for message in bundle:
            inbox.setdefault(message.recipient, []).append(message)
    return inbox


def signed_request(request: UnmaskRequest, signatures: list[SurvivorSignature], params: Params
                   ) -> UnmaskRequest:
    """The unmask request with the survivors' signatures of U3 (the ConsistencyCheck's answers);
    fewer than t signers and no site would reveal a share, so the round stops here."""
    signed = {s.site: s.signature for s in signatures if s.site in request.survivors}
    if len(signed) < params.threshold:
        raise SecureAggregationError(
            f"only {len(signed)} of the {len(request.survivors)} survivors signed the survivor "
            f"set, fewer than the threshold t = {params.threshold}: no site reveals a share and "
            "the round fails")
    return replace(request, signatures=signed)


def add_masked(total: np.ndarray | None, message: MaskedInput) -> np.ndarray:
    """The server's running sum of masked inputs (it streams: one vector, whatever the sites)."""
    return message.vector.copy() if total is None else total + message.vector


def unmask_request(masked: Collection[SiteId], book: dict[SiteId, KeyAdvert],
                   params: Params) -> UnmaskRequest:
    """Survivors: the sites whose masked inputs arrived; dropped: the others that shared keys."""
    survivors = tuple(s for s in params.sites if s in masked)
    if len(survivors) < params.threshold:
        raise SecureAggregationError(
            f"only {len(survivors)} of {len(book)} sites delivered masked updates, fewer than the "
            f"threshold t = {params.threshold}: the masks cannot be removed and the round fails")
    dropped = tuple(s for s in params.sites if s in book and s not in masked)
    return UnmaskRequest(survivors, dropped)


def unmask(masked_sum: np.ndarray, request: UnmaskRequest, responses: list[UnmaskResponse],
           book: dict[SiteId, KeyAdvert], params: Params) -> np.ndarray:
    """The sum over survivors of their unmasked vectors, in Z_{2^64}, from the sum of their masked
    vectors (add_masked)."""
    if len(responses) < params.threshold:
        raise SecureAggregationError(f"only {len(responses)} sites answered the unmask request, "
                                     f"fewer than the threshold t = {params.threshold}")
    total = masked_sum.copy()
    for u in request.survivors:
        seed = _rebuild([r.self_mask_shares.get(u) for r in responses], params, u, SEED_BYTES)
        total -= prg(seed, params.length)
    for v in request.dropped:
        raw = _rebuild([r.key_shares.get(v) for r in responses], params, v, KEY_BYTES)
        key_v = X25519PrivateKey.from_private_bytes(raw)
        for u in request.survivors:
            pairwise = prg(agree(key_v, book[u].mask_key, b"mask", params.context), params.length)
            if params.index(u) < params.index(v):  # u added this mask: take it out
                total -= pairwise
            else:
                total += pairwise
    return total


def _rebuild(blobs: list[bytes | None], params: Params, owner: SiteId, length: int) -> bytes:
    shares = [shamir.Share.from_bytes(b) for b in blobs if b is not None]
    try:
        return shamir.reconstruct(shares, params.threshold, length)
    except shamir.SharingError as exc:
        raise SecureAggregationError(f"cannot rebuild the secret of {owner}: {exc}") from None
