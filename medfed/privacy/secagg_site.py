"""A site's side of secure aggregation (secagg.py has the protocol, its messages and the server's
steps): Bonawitz et al. 2017, Figure 4, rounds 0-4 with the active-adversary checks of §4 and §6.

A site verifies the key book before sharing anything (signed adverts, signing.py), signs one
survivor set per round (ConsistencyCheck), and reveals shares only for that set once t sites of it
have signed it. Every refusal is a SecureAggregationError that starts "site u stops the round:"
and says why.
"""

from __future__ import annotations

import secrets

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medfed.privacy import shamir
from medfed.privacy.secagg import (
    SEED_BYTES,
    EncryptedShare,
    KeyAdvert,
    MaskedInput,
    Params,
    SecureAggregationError,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
    advert_message,
    advert_refusal,
    agree,
    prg,
    raw_private,
    raw_public,
    survivors_message,
)
from medfed.privacy.signing import SignatureError, SigningIdentity
from medfed.types import SiteId


class SiteSession:
    """One site's part of one round of the protocol (fresh keys and self-mask every round)."""

    def __init__(self, site: SiteId, params: Params, identity: SigningIdentity) -> None:
        if site not in params.sites:
            raise SecureAggregationError(f"site {site} is not among the round's sites")
        if identity.site != site:
            raise SecureAggregationError(f"site {site} was given the signing key of {identity.site}")
        self.site, self.params, self.identity = site, params, identity
        self._cipher = X25519PrivateKey.generate()
        self._mask = X25519PrivateKey.generate()
        self._self_seed = secrets.token_bytes(SEED_BYTES)  # b_u
        self._book: dict[SiteId, KeyAdvert] = {}
        self._held: dict[SiteId, tuple[bytes, bytes]] = {}  # v -> (share of b_v, share of s_v^SK)
        self._masked = False
        self._signed: tuple[SiteId, ...] | None = None  # the one survivor set U3 it signed

    def advertise(self) -> KeyAdvert:
        """Round 0: the two public keys, signed with the site's certificate key."""
        cipher, mask = raw_public(self._cipher), raw_public(self._mask)
        signature = self.identity.sign(advert_message(self.params, self.site, cipher, mask))
        return KeyAdvert(self.site, cipher, mask, self.identity.certificate, signature)

    def share_keys(self, book: dict[SiteId, KeyAdvert]) -> list[EncryptedShare]:
        """Round 1: verify every advert of the book, then Shamir-share b_u and s_u^SK among its
        sites, each share encrypted for its recipient; this site keeps its own share."""
        self._check_book(book)
        self._book = dict(book)
        n, t = len(self.params.sites), self.params.threshold
        self_shares = shamir.split(self._self_seed, n, t)
        key_shares = shamir.split(raw_private(self._mask), n, t)
        out = []
        for v, advert in book.items():
            i = self.params.index(v) - 1
            pair = (self_shares[i].to_bytes(), key_shares[i].to_bytes())
            if v == self.site:
                self._held[v] = pair
                continue
            key = agree(self._cipher, advert.cipher_key, b"share", self.params.context)
            nonce = secrets.token_bytes(12)
            sealed = AESGCM(key).encrypt(nonce, pair[0] + pair[1], _header(self.site, v))
            out.append(EncryptedShare(self.site, v, nonce + sealed))
        return out

    def _check_book(self, book: dict[SiteId, KeyAdvert]) -> None:
        """Every advert signed, under the CA's certificate of the site it names, for this round;
        this site's own advert as it sent it."""
        if len(book) < self.params.threshold or self.site not in book:
            raise SecureAggregationError(f"{len(book)} sites advertised keys, fewer than the "
                                         f"threshold {self.params.threshold}")
        for v, advert in book.items():
            if advert.site != v or v not in self.params.sites:
                raise self._stop(f"the key book lists {advert.site} as {v}, or a site outside the "
                                 "round")
            refusal = advert_refusal(advert, self.params, self.identity.trust)
            if refusal is not None:
                raise self._stop(f"{refusal}; the server may have substituted its keys")
        mine = (book[self.site].cipher_key, book[self.site].mask_key)
        if mine != (raw_public(self._cipher), raw_public(self._mask)):
            raise self._stop("its own key advert came back altered")

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
        """Round 2: y_u = x_u + PRG(b_u) + sum_v sign(u, v) PRG(s_uv) in Z_{2^64}."""
        if x.dtype != np.uint64 or x.shape != (self.params.length,):
            raise SecureAggregationError(f"a masked input is {self.params.length} uint64 ring "
                                         f"elements, got {x.dtype} {x.shape}")
        if not self._book:
            raise SecureAggregationError(f"site {self.site} has no verified key book to mask with")
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
        self._masked = True
        return MaskedInput(self.site, y)

    def sign_survivors(self, survivors: tuple[SiteId, ...]) -> SurvivorSignature:
        """Round 3, ConsistencyCheck: sign the survivor set U3, and never another one this round."""
        chosen = self._survivor_set(survivors)
        if self._signed is not None and self._signed != chosen:
            raise self._stop(f"it already signed the survivor set {_names(self._signed)} and will "
                             f"not sign {_names(chosen)}: the server is showing sites different "
                             "survivor sets")
        self._signed = chosen
        return SurvivorSignature(self.site,
                                 self.identity.sign(survivors_message(self.params, chosen)))

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Round 4: shares of b_v for v in U3 and of s_v^SK for the book's other sites, only for
        the U3 this site signed and only with the signatures of at least t sites of U3 on it."""
        survivors = self._survivor_set(request.survivors)
        if survivors != self._signed:
            raise self._stop(f"it answers only for the survivor set it signed "
                             f"({_names(self._signed or ())}), and was asked about "
                             f"{_names(survivors)}")
        dropped = tuple(v for v in self.params.sites if v in self._book and v not in survivors)
        if set(request.dropped) != set(dropped):
            raise self._stop(f"the request calls {_names(tuple(request.dropped))} dropped, but the "
                             f"key book's sites outside the survivor set are {_names(dropped)}")
        self._check_signatures(survivors, request.signatures)
        return UnmaskResponse(self.site,
                              {v: self._held[v][0] for v in survivors if v in self._held},
                              {v: self._held[v][1] for v in dropped if v in self._held})

    def _survivor_set(self, survivors: tuple[SiteId, ...]) -> tuple[SiteId, ...]:
        """U3 in the round's order, after checking it can be one: >= t sites of the book, this
        site among them (and it did send a masked input)."""
        listed = set(survivors)
        chosen = tuple(v for v in self.params.sites if v in listed)
        if len(chosen) != len(survivors) or not set(chosen) <= set(self._book):
            raise self._stop(f"the survivor set {_names(tuple(survivors))} is not a set of the key "
                             "book's sites")
        if len(chosen) < self.params.threshold:
            raise self._stop(f"the survivor set has {len(chosen)} sites, fewer than t = "
                             f"{self.params.threshold}")
        if self.site not in chosen or not self._masked:
            raise self._stop("it is not a survivor of its own round (it sent no masked input, or "
                             "the server says so)")
        return chosen

    def _check_signatures(self, survivors: tuple[SiteId, ...], signatures: dict[SiteId, bytes]
                          ) -> None:
        message = survivors_message(self.params, survivors)
        for v, signature in signatures.items():
            if v not in survivors:
                raise self._stop(f"the request carries a signature of {v}, who is no survivor")
            try:
                self.identity.trust.verify(self._book[v].certificate, v, signature, message)
            except SignatureError:
                raise self._stop(f"the signature of {v} is not on this survivor set; the server "
                                 "may be showing sites different survivor sets") from None
        if len(signatures) < self.params.threshold:
            signers = f"{len(signatures)} site" + ("s" if len(signatures) != 1 else "")
            raise self._stop(f"only {signers} signed the survivor set, fewer than t = "
                             f"{self.params.threshold}; the server may be showing sites different "
                             "survivor sets")

    def _stop(self, why: str) -> SecureAggregationError:
        return SecureAggregationError(f"site {self.site} stops the round: {why}")


def _names(sites: tuple[SiteId, ...]) -> str:
    return "{" + ", ".join(sites) + "}"


def _header(sender: SiteId, recipient: SiteId) -> bytes:
    return f"{sender}->{recipient}".encode()
