"""Peer-to-peer gossip in a deployment: the server as a relay that stores and forwards ciphertexts.

Hospitals accept no inbound connections, so a site's model for a neighbour travels through the
server, sealed end to end with the neighbour's round key (privacy/peer_seal.py). Each round:

    1  p2p.keys   every connected site advertises a fresh X25519 key, signed with its certificate
                  key; the server checks each advert against the CA (liveness only: each site
                  checks the book again) and builds the key book
    2  p2p.train  each site gets the book, verifies it, trains from its own model, and sends its
                  model sealed for each of its neighbours on the gossip graph (which it derives
                  itself from the federation's seed and sites, as the simulation does)
    3  relay      the server reads only the envelopes (sender, receiver, round): each ciphertext
                  is audited (`p2p_relayed`: sender, receiver, round, sha256, bytes) and queued
                  for its receiver; a message whose envelope does not fit is dropped and audited
    4  p2p.mix    each site that trained gets the messages addressed to it, opens them, and mixes
                  (gossip.mix: its own and its neighbours' models weighted by their samples); it
                  answers with its distance to that mean

The server never holds a key that opens a message and never sees a model in the clear; it learns
who sent how much to whom, and the sites' sample counts and distances. The consensus gap recorded
per round (`p2p_round_closed`, summary.json) is the mean of the distances the sites report: how
far a site's trained model was from the mean of its neighbourhood, which needs no model at the
server (in simulation the gap is measured against the consensus instead; both shrink together).

Not built (README "Topologies"): resuming a p2p federation (the models live at the sites, which
keep them in memory only), scoring the sites' final models (each site holds its own; nothing
combines them), BrainTorrent's pulls (they need a site to know its peers' versions through the
relay). A round in which fewer than min_sites sites train fails the federation (NotEnoughSites).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from medfed.algorithms.graphs import Graph
from medfed.algorithms.topologies import gossip_graph
from medfed.algorithms.topology_spec import P2P
from medfed.config import RunConfig
from medfed.deploy.relay_site import KEYS, MIX, TRAIN
from medfed.errors import ConfigError, NotEnoughSites, TransportError
from medfed.experiment import train_options
from medfed.output import write_json
from medfed.privacy import peer_seal
from medfed.privacy import secagg_json as wire
from medfed.privacy.peer_seal import PeerSealError, SealedMessage, round_params
from medfed.privacy.secagg import KeyAdvert, SecureAggregationError, advert_refusal
from medfed.transport.codec import encode_state
from medfed.transport.grpc_server import Reply
from medfed.types import SiteId

if TYPE_CHECKING:
    from medfed.deploy.server import Federation

ENVELOPE_BYTES = 1 << 10  # what a sealed message may add to a model: framing, names, its tag


@dataclass
class RelayRound:
    round: int  # 1-based
    trained: list[SiteId] = field(default_factory=list)
    messages: int = 0
    bytes_relayed: int = 0  # sealed bytes in, and the same bytes out again
    distances: dict[SiteId, float] = field(default_factory=dict)

    @property
    def consensus_gap(self) -> float | None:
        return statistics.fmean(self.distances.values()) if self.distances else None


def relays(config: RunConfig) -> bool:
    """Whether a federation runs through the relay instead of the server's round loop."""
    return config.federation.topology == P2P


def check_certificates(config: RunConfig, insecure: bool) -> None:
    if relays(config) and insecure:
        raise ConfigError("topology p2p needs certificates (--certs): each site signs its round "
                          "keys with its certificate key, so the relay cannot substitute them")


def run_relay(fed: Federation, wait_for_sites: Callable[[], None]) -> dict[str, Any]:
    """Every round of a p2p federation through the relay; summary.json in the state folder."""
    f = fed.config.federation
    graph = gossip_graph(f.gossip, fed.sites, fed.config.seed)
    model_bytes = len(encode_state(fed.model.initial))
    started, history = time.perf_counter(), []
    fed.audit.record("p2p_graph", graph={s: sorted(p) for s, p in graph.items()})
    for r in range(f.rounds):
        wait_for_sites()
        fed.transport.begin_round(r)
        fed.audit.record("round_started", round=r + 1, sites=fed.transport.registry.connected())
        result = relay_round(fed, graph, r, model_bytes)
        fed.audit.record("p2p_round_closed", round=r + 1, trained=result.trained,
                         messages=result.messages, bytes_relayed=result.bytes_relayed,
                         consensus_gap=result.consensus_gap)
        _say(f"round {r + 1}: {len(result.trained)} sites trained, {result.messages} sealed "
             f"models relayed, consensus gap {result.consensus_gap}")
        history.append(result)
    summary = {"mode": "deployment", "topology": "p2p", "gossip": f.gossip,
               "algorithm": f.algorithm, "rounds": len(history), "sites": fed.sites,
               "graph": {s: sorted(p) for s, p in graph.items()},
               "consensus_gap": [h.consensus_gap for h in history],
               "rounds_detail": [asdict(h) for h in history],
               "bytes_relayed": sum(h.bytes_relayed for h in history),
               "wall_seconds": time.perf_counter() - started,
               "note": "each site holds its own model; the relay never held one in the clear"}
    write_json(fed.store.folder / "summary.json", summary, private=True)
    fed.audit.record("federation_finished", rounds=len(history))
    return summary


def relay_round(fed: Federation, graph: Graph, r: int, model_bytes: int) -> RelayRound:
    result = RelayRound(r + 1)
    sites = fed.transport.registry.connected()
    book = _key_book(fed, sites, r + 1)
    f = fed.config.federation
    overrides = {"proximal_mu": f.mu} if f.algorithm == "fedprox" else {}
    options = asdict(replace(train_options(fed.config), round=r, **overrides))
    listed = [wire.advert_to_json(a) for a in book.values()]
    body = json.dumps({"book": listed}).encode()
    reply = max(len(graph[s]) for s in book) * (model_bytes + ENVELOPE_BYTES) if book else 0
    answers = fed.transport.ask_blobs(TRAIN, {s: body for s in book}, options,
                                      fed.deployment.round_deadline, reply)
    inbox: dict[SiteId, list[SealedMessage]] = {s: [] for s in book}
    for site, answer in answers.items():
        try:
            messages = route(site, _reply(answer), graph, r + 1)
        except (TransportError, PeerSealError) as exc:
            fed.audit.record("update_rejected", round=r + 1, site=site, reason=str(exc)[:300])
            continue
        result.trained.append(site)
        for m in messages:
            fed.audit.record("p2p_relayed", round=r + 1, sender=m.sender, receiver=m.receiver,
                             sha256=m.sha256, bytes=len(m.ciphertext))
            inbox.setdefault(m.receiver, []).append(m)
            result.messages += 1
            result.bytes_relayed += len(m.ciphertext)
    if len(result.trained) < min(f.min_sites, len(fed.sites)):
        raise NotEnoughSites(f"round {r + 1}: {len(result.trained)} sites trained, fewer than "
                             f"min_sites={f.min_sites}")
    blobs = {s: peer_seal.pack(inbox.get(s, [])) for s in result.trained}
    mixed = fed.transport.ask_blobs(MIX, blobs, {}, fed.deployment.round_deadline)
    for site, answer in mixed.items():
        distance = _reply(answer).meta.get("distance") if isinstance(answer, Reply) else None
        if isinstance(distance, float):
            result.distances[site] = distance
        else:
            fed.audit.record("p2p_mix_failed", round=r + 1, site=site, reason=str(answer)[:300])
    return result


def route(sender: SiteId, reply: Reply, graph: Graph, round_number: int) -> list[SealedMessage]:
    """The sealed messages of one site's reply, each checked on its envelope only: from that site,
    for one of its neighbours, this round, at most one per neighbour. The content stays sealed."""
    messages = peer_seal.unpack(reply.blob)
    receivers = [m.receiver for m in messages]
    for m in messages:
        if m.sender != sender or m.receiver not in graph[sender] or m.round != round_number:
            raise PeerSealError(f"site {sender} sent a message from {m.sender} to {m.receiver} "
                                f"in round {m.round}: not its own, not to a neighbour, or stale")
    if len(set(receivers)) != len(receivers):
        raise PeerSealError(f"site {sender} sent two messages to one neighbour")
    return messages


def _key_book(fed: Federation, sites: list[SiteId], number: int) -> dict[SiteId, KeyAdvert]:
    """The round's signed key adverts, each checked against the CA (the sites check them again)."""
    params = round_params(tuple(fed.sites), number)
    bodies = {s: {"sites": list(fed.sites), "round": number} for s in sites}
    book = {}
    for site, answer in fed.transport.exchange(KEYS, bodies).items():
        try:
            if isinstance(answer, Exception):
                raise answer
            advert = wire.advert_from_json(answer.get("advert"))
            refusal = "it names another site" if advert.site != site else (
                advert_refusal(advert, params, fed.trust) if fed.trust is not None else None)
            if refusal is not None:
                raise PeerSealError(f"advert refused: {refusal}")
            book[site] = advert
        except (TransportError, PeerSealError, SecureAggregationError, AttributeError) as exc:
            fed.audit.record("p2p_no_key", round=number, site=site, reason=str(exc)[:300])
    return book


def _reply(answer: Reply | TransportError) -> Reply:
    if isinstance(answer, TransportError):
        raise answer
    return answer


def _say(text: str) -> None:
    sys.stderr.write(f"medfed server: {text}\n")
    sys.stderr.flush()
