"""Sealed peer-to-peer messages: a site's model for one neighbour, carried by a relay that cannot
read it.

Hospitals accept no inbound connections, so in a deployed p2p federation every model a site sends
a neighbour travels through the server (deploy/relay.py). Each one is sealed end to end:

    k   = HKDF-SHA256(X25519(sender's round key, receiver's round key))   (secagg.agree)
    ad  = (round digest, sender, receiver, sender's public key, receiver's public key)
    out = nonce (12 random bytes) || ChaCha20-Poly1305_k(nonce, plaintext, ad)

The round keys are the ones secure aggregation already advertises: a fresh X25519 pair per round,
announced in a KeyAdvert signed with the site's certificate key and checked against the
federation's CA (secagg.advert_refusal, signing.py); no second PKI. A KeyAdvert has two keys
(secure aggregation's cipher and mask keys); a peer advert names the one round key in both (the
seal has no masks), so the signed message and its checks are secagg's own.

What the relay can do, and what it cannot: it holds every ciphertext and all its own keys, but not
the sites' round private keys, so it cannot open a message (tests/privacy/test_peer_seal.py). It
cannot pass off a message as another site's, or for another round or receiver: the key agreement
and the associated data name them, and the tag fails. It cannot substitute its own keys in the
book: each site verifies every advert under the CA. It can drop or delay messages (the receiver
then mixes over fewer neighbours, as an offline peer) and it sees who sends to whom, when and how
much, which the audit trail records anyway.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from medfed.errors import MedfedError
from medfed.privacy.secagg import KeyAdvert, Params, advert_message, advert_refusal, agree, raw_public
from medfed.privacy.signing import SigningIdentity, encode
from medfed.types import SiteId

NONCE_BYTES = 12
OVERHEAD = NONCE_BYTES + 16  # nonce and Poly1305 tag: what sealing adds to a plaintext
PURPOSE = b"p2p-seal"


class PeerSealError(MedfedError):
    """A sealed message that does not open: tampered, misaddressed, or from an unknown key."""


@dataclass(frozen=True)
class SealedMessage:
    sender: SiteId
    receiver: SiteId
    round: int  # 1-based, as the audit trail counts rounds
    ciphertext: bytes  # nonce || ChaCha20-Poly1305 ciphertext and tag

    @property
    def sha256(self) -> str:
        """What the relay's audit trail records of the message (never its content)."""
        return hashlib.sha256(self.ciphertext).hexdigest()


def round_params(sites: tuple[SiteId, ...], round_number: int) -> Params:
    """The round every peer advert is signed for: its sites and its number (secagg's Params; no
    threshold or vector is used by the seal, so t is the least the Params accept)."""
    return Params(sites, threshold=len(sites) // 2 + 1, length=0,
                  context=f"medfed/p2p/round-{round_number}".encode())


class PeerKeys:
    """One site's round key pair, its signed advert, and the verified round keys of its peers."""

    def __init__(self, identity: SigningIdentity, params: Params, round_number: int) -> None:
        if identity.site not in params.sites:
            raise PeerSealError(f"site {identity.site} is not among the round's sites")
        self.site, self.params, self.round = identity.site, params, round_number
        self._identity = identity
        self._private = X25519PrivateKey.generate()  # fresh every round, never leaves the site
        self._book: dict[SiteId, bytes] = {}

    def advert(self) -> KeyAdvert:
        key = raw_public(self._private)
        signature = self._identity.sign(advert_message(self.params, self.site, key, key))
        return KeyAdvert(self.site, key, key, self._identity.certificate, signature)

    def accept(self, book: dict[SiteId, KeyAdvert]) -> None:
        """Verify each advert (signed under the CA's certificate of the site it names, for this
        round, one round key) before sealing to or opening from anyone; its own as it sent it."""
        for site, advert in book.items():
            refusal = advert_refusal(advert, self.params, self._identity.trust)
            if advert.site != site or advert.cipher_key != advert.mask_key:
                refusal = f"the advert listed as {site}'s is {advert.site}'s or has two keys"
            if refusal is not None:
                raise PeerSealError(f"site {self.site} refuses the key book: {refusal}; the relay "
                                    "may have substituted its keys")
        if self.site in book and book[self.site].cipher_key != raw_public(self._private):
            raise PeerSealError(f"site {self.site} refuses the key book: its own key came back "
                                "altered")
        self._book = {site: advert.cipher_key for site, advert in book.items()}

    def seal(self, receiver: SiteId, plaintext: bytes) -> SealedMessage:
        nonce = secrets.token_bytes(NONCE_BYTES)
        aead = ChaCha20Poly1305(self._key(receiver))
        data = self._associated(self.site, receiver)
        return SealedMessage(self.site, receiver, self.round,
                             nonce + aead.encrypt(nonce, plaintext, data))

    def open(self, message: SealedMessage) -> bytes:
        if message.receiver != self.site or message.round != self.round:
            raise PeerSealError(f"a message for {message.receiver} in round {message.round} "
                                f"reached {self.site} in round {self.round}")
        nonce, body = message.ciphertext[:NONCE_BYTES], message.ciphertext[NONCE_BYTES:]
        try:
            return ChaCha20Poly1305(self._key(message.sender)).decrypt(
                nonce, body, self._associated(message.sender, self.site))
        except InvalidTag:
            raise PeerSealError(f"the message from {message.sender} to {self.site} in round "
                                f"{self.round} does not open: altered, or not {message.sender}'s"
                                ) from None

    def _key(self, peer: SiteId) -> bytes:
        if peer not in self._book:
            raise PeerSealError(f"site {self.site} has no verified round key of {peer}")
        return agree(self._private, self._book[peer], PURPOSE, self.params.context)

    def _associated(self, sender: SiteId, receiver: SiteId) -> bytes:
        return associated_data(self.params, sender, receiver, self._book[sender],
                               self._book[receiver])


def associated_data(params: Params, sender: SiteId, receiver: SiteId, sender_key: bytes,
                    receiver_key: bytes) -> bytes:
    """What a seal binds besides its plaintext: the round, who sends to whom, and both round keys
    (all public: the relay can compute it, and still cannot open the message)."""
    return encode(b"medfed/p2p/seal", params.digest, sender.encode(), receiver.encode(),
                  sender_key, receiver_key)


def pack(messages: list[SealedMessage]) -> bytes:
    """Messages as one byte string (length-prefixed fields; no pickle, no base64)."""
    return b"".join(encode(m.sender.encode(), m.receiver.encode(), str(m.round).encode(),
                           m.ciphertext) for m in messages)


def unpack(blob: bytes, limit: int = 1 << 16) -> list[SealedMessage]:
    """The messages of pack(); a blob that does not parse exactly is one PeerSealError."""
    fields, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            raise PeerSealError("a sealed bundle ends inside a length field")
        size = int.from_bytes(blob[at:at + 4], "big")
        if at + 4 + size > len(blob):
            raise PeerSealError("a sealed bundle's field runs past its end")
        fields.append(blob[at + 4:at + 4 + size])
        at += 4 + size
    if len(fields) % 4 or len(fields) > 4 * limit:
        raise PeerSealError("a sealed bundle is not a list of (sender, receiver, round, message)")
    out = []
    for k in range(0, len(fields), 4):
        sender, receiver, number, ciphertext = fields[k:k + 4]
        if not number.isdigit() or len(number) > 9 or len(ciphertext) < OVERHEAD:
            raise PeerSealError("a sealed message has no round number or is too short")
        try:
            out.append(SealedMessage(sender.decode(), receiver.decode(), int(number), ciphertext))
        except UnicodeDecodeError:
            raise PeerSealError("a sealed message's site name is not text") from None
    return out
