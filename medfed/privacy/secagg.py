"""Secure aggregation: the server learns the sum of the sites' vectors and nothing else.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017,
Figure 4 (the honest-but-curious server, one server), as messages and pure steps:

    site u                                          server
    0  advertise(): KeyAdvert(c_u^PK, s_u^PK)  ->   key_book(adverts)            (needs >= t sites)
    1  share_keys(book): for each v, Enc_{c_uv}(u, v, b_u share, s_u^SK share) -> route_shares()
       receive_shares(the ciphertexts addressed to u)
    2  mask(x_u): y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)  (mod 2^64)
                                                    ->   unmask_request(masked)  (survivors >= t)
    3  unmask(request): shares of b_v for each      ->   unmask(...) = sum of the survivors' x_u
       survivor v, of s_v^SK for each dropped v

s_uv = HKDF(X25519(s_u^SK, s_v^PK)) is the seed u and v share; the lower site (in the order of
`Params.sites`) adds its mask and the higher one subtracts it, so the masks of two survivors cancel.
A site that dropped after round 1 left its pairwise masks in the survivors' vectors: the survivors
reveal shares of its mask key s_v^SK, the server recomputes s_uv and removes them. The self-mask b_u
stops the server from learning x_u of a site that was only slow (its key would be recovered as if
dropped): a site never reveals shares of both b_v and s_v^SK for the same v. Shares travel
encrypted (AES-GCM under HKDF(X25519(c_u^SK, c_v^PK))), so the server that routes them cannot read
them. Keys are fresh per round; `Params.context` binds every derived key to the round.

Simplifications: no signatures (the paper's active-adversary variant), no consistency check round.
The PRG is the ChaCha20 stream cipher keyed by the 32-byte seed.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medfed.errors import MedfedError
from medfed.privacy import shamir
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
        if not 2 <= self.threshold <= len(self.sites):
            raise SecureAggregationError(f"threshold must be between 2 and the {len(self.sites)} "
                                         f"sites of the round, got {self.threshold}")

    def index(self, site: SiteId) -> int:
        """The site's Shamir evaluation point (1-based)."""
        return self.sites.index(site) + 1


# ---- messages (what a transport carries) --------------------------------------------------------

@dataclass(frozen=True)
class KeyAdvert:
    site: SiteId
    cipher_key: bytes  # c_u^PK: encrypts the shares sent to u
    mask_key: bytes  # s_u^PK: agrees the pairwise mask seeds


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
class UnmaskRequest:
    survivors: tuple[SiteId, ...]  # their masked inputs arrived
    dropped: tuple[SiteId, ...]  # advertised keys, but no masked input arrived


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


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def _raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(RAW, serialization.PublicFormat.Raw)


# ---- site side -----------------------------------------------------------------------------------

class SiteSession:
    """One site's part of one round of the protocol (fresh keys and self-mask every round)."""

    def __init__(self, site: SiteId, params: Params) -> None:
        if site not in params.sites:
            raise SecureAggregationError(f"site {site} is not among the round's sites")
        self.site, self.params = site, params
        self._cipher = X25519PrivateKey.generate()
        self._mask = X25519PrivateKey.generate()
        self._self_seed = secrets.token_bytes(SEED_BYTES)  # b_u
        self._book: dict[SiteId, KeyAdvert] = {}
        self._held: dict[SiteId, tuple[bytes, bytes]] = {}  # v -> (share of b_v, share of s_v^SK)
        self._revealed: dict[SiteId, str] = {}  # v -> "self" or "key": never both for one v

    def advertise(self) -> KeyAdvert:
        return KeyAdvert(self.site, _raw_public(self._cipher), _raw_public(self._mask))

    def share_keys(self, book: dict[SiteId, KeyAdvert]) -> list[EncryptedShare]:
        """Shamir-share b_u and s_u^SK among the sites of the book, each share encrypted for its
        recipient; this site keeps its own share."""
        if len(book) < self.params.threshold or self.site not in book:
            raise SecureAggregationError(f"{len(book)} sites advertised keys, fewer than the "
                                         f"threshold {self.params.threshold}")
        self._book = dict(book)
        n, t = len(self.params.sites), self.params.threshold
        self_shares = shamir.split(self._self_seed, n, t)
        key_shares = shamir.split(_raw_private(self._mask), n, t)
        out = []
        for v in book:
            i = self.params.index(v) - 1
            pair = (self_shares[i].to_bytes(), key_shares[i].to_bytes())
            if v == self.site:
                self._held[v] = pair
                continue
            key = agree(self._cipher, book[v].cipher_key, b"share", self.params.context)
            nonce = secrets.token_bytes(12)
            sealed = AESGCM(key).encrypt(nonce, pair[0] + pair[1], _header(self.site, v))
            out.append(EncryptedShare(self.site, v, nonce + sealed))
        return out

    def receive_shares(self, shares: list[EncryptedShare]) -> None:
        for message in shares:
            if message.recipient != self.site or message.sender not in self._book:
                raise SecureAggregationError(f"share from {message.sender} to {message.recipient} "
                                             f"reached {self.site}")
            key = agree(self._cipher, self._book[message.sender].cipher_key, b"share",
                        self.params.context)
            nonce, sealed = message.ciphertext[:12], message.ciphertext[12:]
            try:
                plain = AESGCM(key).decrypt(nonce, sealed, _header(message.sender, self.site))
            except InvalidTag:
                raise SecureAggregationError(f"share from {message.sender} failed authentication"
                                             ) from None
            half = len(plain) // 2
            self._held[message.sender] = (plain[:half], plain[half:])

    def mask(self, x: np.ndarray) -> MaskedInput:
        """y_u = x_u + PRG(b_u) + sum_v sign(u, v) PRG(s_uv) in Z_{2^64}."""
        if x.dtype != np.uint64 or x.shape != (self.params.length,):
            raise SecureAggregationError(f"a masked input is {self.params.length} uint64 ring "
                                         f"elements, got {x.dtype} {x.shape}")
        y = x + prg(self._self_seed, self.params.length)  # a new array: x stays as it was
        me = self.params.index(self.site)
        for v, advert in self._book.items():
            if v == self.site:
                continue
            pairwise = prg(agree(self._mask, advert.mask_key, b"mask", self.params.context),
                           self.params.length)
            if me < self.params.index(v):
                y += pairwise
            else:
                y -= pairwise
        return MaskedInput(self.site, y)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Shares of b_v for survivors and of s_v^SK for dropped sites, never both for one v."""
        survivors, dropped = set(request.survivors), set(request.dropped)
        if survivors & dropped or self.site not in survivors \
                or len(survivors) < self.params.threshold or not (survivors | dropped) <= set(self._book):
            raise SecureAggregationError(f"site {self.site} refuses an inconsistent unmask request")
        for v in survivors | dropped:
            kind = "self" if v in survivors else "key"
            if self._revealed.setdefault(v, kind) != kind:
                raise SecureAggregationError(f"site {self.site} already revealed the other secret "
                                             f"of {v}; revealing both would expose its input")
        return UnmaskResponse(self.site,
                              {v: self._held[v][0] for v in request.survivors if v in self._held},
                              {v: self._held[v][1] for v in request.dropped if v in self._held})


def _header(sender: SiteId, recipient: SiteId) -> bytes:
    return f"{sender}->{recipient}".encode()


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
