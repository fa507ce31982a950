"""p2p through the relay (deploy/relay.py, deploy/relay_site.py): `medfed server` and three
`medfed client` processes on 127.0.0.1 with mutual TLS gossip for 2 rounds; the relay audits
each sealed model's hash; its routing reads envelopes only; a site drops what does not open.

Hand mutations that turn these tests red (checked once): the relay forwards a message to a site
that is not the sender's neighbour (route skips its checks): test_route_*; a site mixes a
message that did not open (drop the except in PeerSite._mix): test_a_site_drops_a_tampered_model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from medfed.algorithms.gossip import mix
from medfed.algorithms.graphs import build_graph
from medfed.algorithms.topology_spec import parse_gossip
from medfed.client.trainer import TrainOptions
from medfed.config import FederationConfig, RunConfig
from medfed.deploy.relay import route
from medfed.deploy.relay_site import KEYS, MIX, TRAIN, PeerSite
from medfed.privacy import peer_seal
from medfed.privacy.peer_seal import PeerKeys, PeerSealError, round_params
from medfed.privacy.signing import ephemeral_identities
from medfed.transport.grpc_server import Reply
from medfed.types import Update
from tests.deploy.processes import SITES, events, free_port, make_certs, write_federation

P2P = 'algorithm = "fedavg"\ntopology = "p2p"\ngossip = "ring"'


def test_a_p2p_deployment_relays_sealed_models_for_two_rounds(tmp_path: Path, procs):
    certs, port = make_certs(tmp_path / "certs"), free_port()
    config = write_federation(tmp_path / "federation.toml", port, rounds=2, min_sites=3)
    config.write_text(config.read_text().replace('algorithm = "fedavg"', P2P))
    state = tmp_path / "state"
    procs.start("server", "server", "--config", str(config), "--certs", str(certs), "--state",
                str(state))
    for site in SITES:
        procs.client(site, port, certs)
    assert procs.wait("server", 240) == 0, procs.log_text()  # seconds when quiet
    audit = state / "audit.jsonl"
    relayed = events(audit, "p2p_relayed")
    # a ring of 3 sites: each sends its model to its 2 neighbours, every round
    assert len(relayed) == 2 * 3 * 2, procs.log_text()
    assert {(e["sender"], e["receiver"]) for e in relayed} == {
        (a, b) for a in SITES for b in SITES if a != b}
    assert all(len(e["sha256"]) == 64 and e["bytes"] > 1000 for e in relayed)
    assert len({e["sha256"] for e in relayed}) == len(relayed)  # fresh keys and nonces each time
    closed = events(audit, "p2p_round_closed")
    assert [e["round"] for e in closed] == [1, 2] and all(e["consensus_gap"] > 0 for e in closed)
    assert not events(audit, "update_rejected") and not events(audit, "p2p_mix_failed")
    summary = json.loads((state / "summary.json").read_text())
    assert summary["topology"] == "p2p" and len(summary["consensus_gap"]) == 2
    assert summary["bytes_relayed"] == sum(e["bytes"] for e in relayed)


@pytest.fixture(scope="module")
def identities():
    return ephemeral_identities(SITES)


def sealed_reply(identities, sender: str, receivers: list[str], number: int = 1) -> Reply:
    params = round_params(SITES, number)
    keys = {s: PeerKeys(identities[s], params, number) for s in SITES}
    book = {s: k.advert() for s, k in keys.items()}
    keys[sender].accept(book)
    return Reply({}, peer_seal.pack([keys[sender].seal(r, b"model") for r in receivers]))


RING = build_graph(parse_gossip("ring"), [*SITES, "site-d"], seed=0)  # a: b, d; b: a, c ...


def test_route_gives_each_message_to_its_receiver_with_its_hash(identities):
    reply = sealed_reply(identities, "site-a", ["site-b"])
    [message] = route("site-a", reply, RING, 1)
    assert message.receiver == "site-b"
    assert message.sha256 == hashlib.sha256(peer_seal.unpack(reply.blob)[0].ciphertext).hexdigest()


@pytest.mark.parametrize("sender, receivers, number", [
    ("site-a", ["site-c"], 1),  # site-c is not site-a's neighbour on RING
    ("site-b", ["site-a"], 1),  # site-b's message, sent as site-a's
    ("site-a", ["site-b"], 2),  # another round's
    ("site-a", ["site-b", "site-b"], 1),  # two to one neighbour
])
def test_route_refuses_a_message_whose_envelope_does_not_fit(identities, sender, receivers,
                                                             number):
    reply = sealed_reply(identities, sender, receivers, number)
    with pytest.raises(PeerSealError, match="not its own|two messages"):
        route("site-a", reply, RING, 1)


class Trainer:
    """One step towards a per-site target, as tests/algorithms/test_gossip.py's transport."""

    def __init__(self, site: str, n: int) -> None:
        self.target, self.n = torch.full((3,), float(SITES.index(site) + 1)), n

    def train(self, state, options):
        return Update("x", {"w": 0.5 * state["w"] + 0.5 * self.target}, self.n, 1, {})


def peers(identities) -> dict[str, PeerSite]:
    config = RunConfig(federation=FederationConfig(topology="p2p", gossip="full"))
    return {s: PeerSite(s, identities[s], Trainer(s, 10 * (k + 1)), config, list(SITES),
                        {"w": torch.zeros(3)}) for k, s in enumerate(SITES)}


def one_round(sites: dict[str, PeerSite], tamper: bool = False) -> dict[str, dict]:
    keys = {"sites": list(SITES), "round": 1}
    adverts = [sites[s].answer(KEYS, {}, json.dumps(keys).encode())[0]["advert"] for s in SITES]
    inbox: dict[str, list] = {s: [] for s in SITES}
    options = asdict(TrainOptions())
    for s in SITES:
        _, blob = sites[s].answer(TRAIN, options, json.dumps({"book": adverts}).encode())
        for m in peer_seal.unpack(blob):
            inbox[m.receiver].append(m)
    if tamper:
        m = inbox["site-a"][0]
        inbox["site-a"][0] = replace(m, ciphertext=m.ciphertext[:-1] + bytes([m.ciphertext[-1] ^ 1]))
    return {s: sites[s].answer(MIX, {}, peer_seal.pack(inbox[s]))[0] for s in SITES}


def test_sites_mix_as_gossip_does(identities):
    sites = peers(identities)
    answers = one_round(sites)
    trained = [({"w": 0.5 * torch.full((3,), float(k + 1))}, 10 * (k + 1)) for k in range(3)]
    expected = mix(trained, {"w": torch.zeros(3)})  # the full graph: every site the same mean
    for s in SITES:
        torch.testing.assert_close(sites[s].model["w"], expected["w"])
        assert answers[s]["dropped"] == {} and answers[s]["distance"] > 0


def test_a_site_drops_a_tampered_model(identities):
    sites = peers(identities)
    answers = one_round(sites, tamper=True)
    assert list(answers["site-a"]["dropped"]) == ["site-b"] and answers["site-a"]["mixed_from"] == [
        "site-c"]
    own = 0.5 * torch.full((3,), 1.0)
    expected = mix([({"w": own}, 10), ({"w": 0.5 * torch.full((3,), 3.0)}, 30)],
                   {"w": torch.zeros(3)})
    torch.testing.assert_close(sites["site-a"].model["w"], expected["w"])
