"""Peer-to-peer through the relay: FedAvg against p2p (ring, random 2-regular, BrainTorrent) and
hybrid, with what each site sends and receives when peers' models travel sealed through the server.

    .venv/bin/python benchmarks/p2p_relay.py                         # 3 seeds (0, 1, 2), 20 rounds
    .venv/bin/python benchmarks/p2p_relay.py --seeds 1 --rounds 2    # a quick check that it runs
    .venv/bin/python benchmarks/p2p_relay.py --table-only            # the table of --out again

PneumoniaMNIST, 5 sites, Dirichlet 0.5, the default cnn, 1 local epoch a round, no baselines: the
setting of benchmarks/topologies.py, whose run_one trains and scores each topology (the learning of
a deployed p2p federation is the simulation's: the same gossip.mix at each site). Per run: the
final test AUC (p2p: the consensus, which no site holds) with its DeLong interval, the sites' own
models' mean test AUC, the rounds to reach FedAvg's final AUC of the same seed, and bytes per site:

- direct: model bytes as topologies.py counts them (to and from the server; p2p: sent + received
  between peers, as if hospitals could call each other);
- relayed: what each site's link carries in a deployment (deploy/relay.py): FedAvg and hybrid are
  unchanged (the server averages; hybrid's regional averages are computed by the server too), a p2p
  message crosses the site's link once sealed (peer_seal.OVERHEAD bytes more, plus its framing),
  and each round a site sends its signed key advert and receives its neighbours' (ADVERT_BYTES
  each, a certificate and a signature as the deployment's JSON carries them).

Each run appends one line to --out; the end prints a markdown table, mean ± sd over seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from topologies import DATA, REPO, _mean_sd, accuracy_cells, base_config, run_one

from medfed.experiment import prepare
from medfed.privacy import peer_seal
from medfed.transport.codec import encode_state

TOPOLOGIES: dict[str, dict[str, Any]] = {
    "fedavg (server)": {},
    "p2p ring": {"topology": "p2p", "gossip": "ring"},
    "p2p random 2-regular": {"topology": "p2p", "gossip": "k-regular:2"},
    "p2p braintorrent": {"topology": "p2p", "gossip": "braintorrent"},
    "hybrid 2 regions": {"topology": "hybrid", "regions": "{regions}"},
}
ADVERT_BYTES = 1400  # a peer KeyAdvert as JSON: a ~800-byte PEM certificate, two keys, a signature
FRAMING = 4 * 4 + 2 * len("site-x") + 2  # peer_seal.pack's length prefixes, names and round


def relayed_bytes(row: dict[str, Any], model_bytes: int, degree: int) -> float:
    """Bytes per site over its link to the server in a deployment (see the module docstring)."""
    if not row["topology"].startswith("p2p"):
        return row["bytes_per_site"]
    messages = row["bytes_per_site"] / model_bytes  # sent + received models per site
    adverts = row["rounds"] * (1 + degree) * ADVERT_BYTES
    return row["bytes_per_site"] + messages * (peer_seal.OVERHEAD + FRAMING) + adverts


def table(rows: list[dict[str, Any]]) -> str:
    target = {r["seed"]: r["test_auc"] for r in rows if r["topology"] == "fedavg (server)"}
    header = ("| architecture | test AUC (mean ± sd) | DeLong 95 % CI per seed | sites' own models | "
              "rounds to FedAvg's final AUC | consensus gap (last round) | MB per site, direct | "
              "MB per site through the relay |")
    lines = [header, "|---" * 8 + "|"]
    for name in TOPOLOGIES:
        runs = [r for r in rows if r["topology"] == name]
        if not runs:
            continue
        lines.append("| " + " | ".join(accuracy_cells(name, runs, target) + [
            _mean_sd([r["bytes_per_site"] / 1e6 for r in runs], 2),
            _mean_sd([r["bytes_relayed_per_site"] / 1e6 for r in runs], 2)]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-file", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--only", nargs="*", default=list(TOPOLOGIES), choices=list(TOPOLOGIES),
                        metavar="NAME", help="run these architectures only")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "p2p_relay.jsonl")
    parser.add_argument("--table-only", action="store_true", help="print the table of --out")
    args = parser.parse_args()
    if not args.data_file.is_file() and not args.table_only:
        raise SystemExit(f"{args.data_file} not found (PneumoniaMNIST .npz); pass --data-file")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            setup = prepare(base_config(args.data_file, args.rounds, seed))
            model_bytes = len(encode_state(setup.initial))
            for name in args.only:
                row = run_one(setup, name, TOPOLOGIES[name])
                degree = 2 if "ring" in name or "2-regular" in name else len(setup.federation.sites) - 1
                row["bytes_relayed_per_site"] = relayed_bytes(row, model_bytes, degree)
                with args.out.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"seed {seed} {name}: test AUC {row['test_auc']:.3f}", flush=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    print(table([r for r in rows if r["rounds"] == args.rounds]))


if __name__ == "__main__":
    main()
