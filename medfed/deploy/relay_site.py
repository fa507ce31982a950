"""A deployed site's part of peer-to-peer gossip through the relay (deploy/relay.py has the server's).

Each round, three tasks on the site's session (the site dials out; it accepts no connection):

    p2p.keys   {sites, round}          -> {advert}   a fresh X25519 round key, signed with the
                                                      site's certificate key (privacy/peer_seal.py)
    p2p.train  {book, options}         -> sealed     verify the book; train from the site's own
                                                      model; seal it for each neighbour
    p2p.mix    sealed (to this site)   -> {distance} open, check, mix (gossip.mix): the new model

The site derives its neighbours itself, from the federation's seed, gossip graph and sites (the
simulation's graph, algorithms/topologies.gossip_graph): the relay cannot redirect a site's model to
a site that is not its neighbour, nor slip it a model from one. A sealed message's plaintext is the
sender's sample count (8 bytes) and its trained model (safetensors); a model that does not fit the
federation's (keys, shapes, dtypes, finite) is dropped as an offline peer's would be.

What the site reports besides ciphertexts: its sample count and training loss (as a FedAvg update's
metadata, under its policy), and its distance to the mean of what it mixed (the L2 norm of its
trained model minus the mixed one), from which the server records a consensus gap without reading a
model. The site's model lives in the worker's memory: a restarted site starts from the initial
model (p2p has no coordinator checkpoint; README "Topologies").
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medfed.algorithms import robust
from medfed.algorithms.gossip import mix
from medfed.algorithms.topologies import gossip_graph
from medfed.client.trainer import LocalSite, TrainOptions
from medfed.config import RunConfig
from medfed.errors import IncompatibleUpdate
from medfed.privacy import peer_seal
from medfed.privacy import secagg_json as wire
from medfed.privacy.peer_seal import PeerKeys, PeerSealError, round_params
from medfed.privacy.signing import SigningIdentity
from medfed.server.validation import check_update
from medfed.transport.codec import decode_state, encode_state
from medfed.types import SiteId, StateDict, Update

KEYS, TRAIN, MIX = "p2p.keys", "p2p.train", "p2p.mix"
KINDS = (KEYS, TRAIN, MIX)
COUNT = struct.Struct(">Q")  # the sender's sample count, before its model in the plaintext


@dataclass
class PeerSite:
    site: SiteId
    identity: SigningIdentity
    trainer: LocalSite
    config: RunConfig
    sites: list[SiteId]
    model: StateDict  # the site's own current model: the initial one until its first round
    before_send: Callable[[], None] = lambda: None  # the privacy ledger, written before sending

    def __post_init__(self) -> None:
        fed = self.config.federation
        self.neighbours = gossip_graph(fed.gossip, self.sites, self.config.seed)[self.site]
        self._keys: PeerKeys | None = None
        self._fresh: Update | None = None

    def answer(self, kind: str, options: dict[str, Any], blob: bytes
               ) -> tuple[dict[str, Any], bytes]:
        if kind == KEYS:
            return self._advertise(json.loads(blob)), b""
        if kind == TRAIN:
            return self._train(json.loads(blob), options)
        if kind == MIX:
            return self._mix(blob), b""
        raise ValueError(f"unknown p2p task '{kind}'")

    def _advertise(self, body: Any) -> dict[str, Any]:
        sites, number = _get(body, "sites", list), _get(body, "round", int)
        if not set(self.neighbours) | {self.site} <= set(sites):
            raise PeerSealError(f"site {self.site} refuses a round without its neighbours "
                                f"{sorted(self.neighbours)}")
        self._keys = PeerKeys(self.identity, round_params(tuple(map(str, sites)), number), number)
        self._fresh = None
        return {"advert": wire.advert_to_json(self._keys.advert())}

    def _train(self, body: Any, options: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        if self._keys is None:
            raise PeerSealError(f"site {self.site} has no round key: p2p.keys comes first")
        book = {a.site: a for a in map(wire.advert_from_json, _get(body, "book", list))}
        self._keys.accept(book)
        self._fresh = self.trainer.train(self.model, TrainOptions(**options))
        self.before_send()
        plain = COUNT.pack(self._fresh.n_samples) + encode_state(self._fresh.state)
        sealed = [self._keys.seal(peer, plain) for peer in sorted(self.neighbours) if peer in book]
        meta = {"n_samples": self._fresh.n_samples, "n_steps": self._fresh.n_steps,
                "metrics": dict(self._fresh.metrics), "sent_to": [m.receiver for m in sealed]}
        return meta, peer_seal.pack(sealed)

    def _mix(self, blob: bytes) -> dict[str, Any]:
        """Open each neighbour's model, drop what does not open or fit, mix with its own."""
        if self._keys is None or self._fresh is None:
            raise PeerSealError(f"site {self.site} did not train this round; nothing to mix")
        own = self._fresh
        pairs: list[tuple[StateDict, int]] = [(own.state, own.n_samples)]
        mixed_from, dropped = [], {}
        for message in peer_seal.unpack(blob):
            try:
                if message.sender not in self.neighbours:
                    raise PeerSealError(f"{message.sender} is not a neighbour of {self.site}")
                pairs.append(self._opened(self._keys, message))
                mixed_from.append(message.sender)
            except (PeerSealError, IncompatibleUpdate, ValueError) as exc:
                dropped[message.sender] = str(exc)[:200]
        self.model = mix(pairs, self.model)
        self._fresh = None
        return {"mixed_from": mixed_from, "dropped": dropped,
                "distance": robust.update_norm(own.state, self.model)}

    def _opened(self, keys: PeerKeys, message: peer_seal.SealedMessage
                ) -> tuple[StateDict, int]:
        plain = keys.open(message)
        if len(plain) < COUNT.size:
            raise PeerSealError(f"the message from {message.sender} holds no model")
        (n_samples,) = COUNT.unpack_from(plain)
        state = decode_state(plain[COUNT.size:])
        check_update(Update(message.sender, state, n_samples, 0, {}), self.model)
        return state, n_samples


def _get(body: Any, name: str, kind: type) -> Any:
    if not isinstance(body, dict) or not isinstance(body.get(name), kind) \
            or isinstance(body.get(name), bool):
        raise PeerSealError(f"a p2p message without a {kind.__name__} '{name}'")
    return body[name]
