"""Privacy benchmarks: what DP costs in test AUC, what DP-SGD costs per epoch, what secure
aggregation costs per round.

    .venv/bin/python benchmarks/privacy.py auc --rounds 20 --seeds 0 1 2   # no DP; DP-SGD eps 8 ...
    .venv/bin/python benchmarks/privacy.py epoch             # DP-SGD epoch time against non-DP
    .venv/bin/python benchmarks/privacy.py secagg            # masking + unmasking against a plain sum
    .venv/bin/python benchmarks/privacy.py round             # whole secure rounds against plain ones

`auc` is `medfed run`'s federated training (no baselines) on PneumoniaMNIST, 5 sites, Dirichlet 0.5,
proportions 20:25:15:30:22 (the setting of the robustness benchmarks), for each seed: no DP; DP-SGD
with its DP-friendly defaults at epsilon 8, sigma 1 and epsilon 1; DP-SGD at epsilon 8 with the
issue-5 recipe (the non-private training settings). It prints mean +- sd over the seeds and appends
one line per run to benchmarks/out/privacy-auc.jsonl. `secagg` times the aggregation path alone on random
updates of a 1,000,000-parameter model: the plain sample-weighted sum (WeightedMean) against the
whole protocol (signed key adverts verified against a CA, key agreement, share encryption,
fixed-point encoding and masking at every site, the consistency check's signatures, unmasking at
the server), with and without a site dropping after masking. `round` times whole simulated FedAvg
rounds (every site's local epoch, signing and verifying the adverts, encoding, masking, signing and
verifying the survivor set, unmasking) of `cnn --width 60` (975,362 parameters) on PneumoniaMNIST
split over 5, 10 and 20 sites (Dirichlet 0.5), plain and secure alternately; the sites train one
after another in this process, so the ratio is of the total work of a round, not of a
deployment's latency. The simulation's ephemeral CA and site keys (privacy/signing.py) are made
once per run, before its first round, as a deployment's certificates are made before it starts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from medfed.algorithms.aggregate import WeightedMean
from medfed.config import PrivacyConfig, RunConfig
from medfed.config_file import config_from_dict
from medfed.experiment import prepare, train, train_options
from medfed.privacy import secagg
from medfed.privacy.dp_sgd import DPSite
from medfed.privacy.fixed_point import FixedPoint
from medfed.privacy.secagg_site import SiteSession
from medfed.privacy.signing import ephemeral_identities

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"
PARAMETERS = 1_000_000


def base_config(data_file: Path, rounds: int, seed: int) -> RunConfig:
    return config_from_dict({
        "seed": seed, "device": "cpu", "baselines": False,
        "data": {"dataset": "medmnist", "data_file": str(data_file), "sites": 5,
                 "partition": "dirichlet", "alpha": 0.5, "proportions": [20, 25, 15, 30, 22]},
        "federation": {"rounds": rounds, "eval_every": 0},
        "training": {"lr_schedule": "constant"},  # as RESULTS was measured
    })


# The issue-5 recipe: DP-SGD with the non-private training settings (Adam 1e-3, batch 32).
ISSUE_5 = {"logical_batch": 32, "physical_batch": 32, "augment_multiplicity": 1, "ema_decay": 0.0,
           "dp_optimizer": "adam", "dp_lr": 1e-3}
AUC_RUNS = {
    "no DP": PrivacyConfig(),
    "DP-SGD eps 8": PrivacyConfig(dp_sgd=True, target_epsilon=8.0),  # the DP-friendly defaults
    "DP-SGD sigma 1.0": PrivacyConfig(dp_sgd=True, noise_multiplier=1.0),
    "DP-SGD eps 1": PrivacyConfig(dp_sgd=True, target_epsilon=1.0),
    "DP-SGD eps 8, issue-5 recipe": PrivacyConfig(dp_sgd=True, target_epsilon=8.0, **ISSUE_5),
}


def bench_auc(args: argparse.Namespace) -> None:
    out = REPO / "benchmarks" / "out" / "privacy-auc.jsonl"
    out.parent.mkdir(exist_ok=True)
    aucs: dict[str, list[float]] = {}
    for seed in args.seeds:
        config = base_config(args.data_file, args.rounds, seed)
        setup = prepare(config)
        config = setup.config  # with the settings chosen from the data (medfed/defaults.py)
        print(f"seed {seed}: sites {({s: len(d.train) for s, d in setup.federation.sites.items()})}, "
              f"{args.rounds} rounds", flush=True)
        for label, privacy in AUC_RUNS.items():
            if args.only and label not in args.only:
                continue
            row = _auc_run(setup, label, privacy, args.rounds, seed)
            aucs.setdefault(label, []).append(row["test"]["auc"])
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    for label, values in aucs.items():
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{label:30s} AUC {statistics.mean(values):.3f} +- {sd:.3f} over seeds {args.seeds}: "
              f"{[round(v, 3) for v in values]}")


def _auc_run(setup, label: str, privacy: PrivacyConfig, rounds: int, seed: int) -> dict:
    run_config = replace(setup.config, privacy=privacy)
    start = time.perf_counter()
    outcome = train(replace(setup, config=run_config), "fedavg", setup.federation.sites, label)
    eps = outcome.privacy.get("epsilon", {})
    dp = outcome.privacy.get("dp_sgd", {})
    row = {"run": label, "rounds": rounds, "seed": seed, "test": outcome.test,
           "epsilon": eps, "noise_multiplier": dp.get("noise_multiplier", {}),
           "recipe": dp.get("recipe"), "delta": privacy.delta,
           "failed": {r.round: r.failed for r in outcome.history if r.failed},
           "seconds": round(time.perf_counter() - start, 1)}
    reached = f"eps {min(eps.values()):.2f}-{max(eps.values()):.2f}" if eps else "eps -"
    sigma = sorted({round(s, 3) for s in row["noise_multiplier"].values()})
    print(f"{label:30s} seed {seed} AUC {outcome.test['auc']:.3f}  acc {outcome.test['accuracy']:.3f}  "
          f"{reached}  sigma {sigma}", flush=True)
    return row


def bench_epoch(args: argparse.Namespace) -> None:
    """One local epoch at the largest site, alternately plain and DP-SGD (same model and options)."""
    config = base_config(args.data_file, 1, args.seed)
    setup = prepare(config)
    config = setup.config  # with the settings chosen from the data (medfed/defaults.py)
    site = max(setup.federation.sites, key=lambda s: len(setup.federation.sites[s].train))
    one_site = {site: setup.federation.sites[site]}
    # Two separate site objects: Opacus' per-sample hooks stay on the DP site's model.
    plain = train(setup, "fedavg", one_site, "plain").transport.trainers[site]
    dp_config = replace(config, privacy=PrivacyConfig(dp_sgd=True, noise_multiplier=1.0))
    dp_setup = replace(setup, config=dp_config)
    private = train(dp_setup, "fedavg", one_site, "dp").transport.trainers[site]
    if not isinstance(private, DPSite):
        raise SystemExit("the DP run did not build a DP-SGD site")
    options = train_options(config)
    times: dict[str, list[float]] = {"plain": [], "DP-SGD": []}
    for _ in range(args.repeats):
        for name, trainer in (("plain", plain), ("DP-SGD", private)):
            start = time.perf_counter()
            trainer.train(setup.initial, options)
            times[name].append(time.perf_counter() - start)
    plain_s, dp_s = statistics.median(times["plain"]), statistics.median(times["DP-SGD"])
    print(f"site {site} ({len(setup.federation.sites[site].train)} images), batch "
          f"{options.batch_size}, {args.repeats} alternating repeats")
    print(f"plain  {[round(t, 2) for t in times['plain']]}  median {plain_s:.2f} s")
    print(f"DP-SGD {[round(t, 2) for t in times['DP-SGD']]}  median {dp_s:.2f} s  "
          f"ratio {dp_s / plain_s:.2f}")


def bench_secagg(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    for n in args.sites:
        states = [{"w": torch.from_numpy(rng.normal(0, 0.01, PARAMETERS).astype(np.float32))}
                  for _ in range(n)]
        weights = [int(w) for w in rng.integers(100, 2000, n)]
        plain = [_plain(states, weights) for _ in range(args.repeats)]
        secure = [_secure(states, weights, drop=0) for _ in range(args.repeats)]
        dropped = [_secure(states, weights, drop=1) for _ in range(args.repeats)]
        p = statistics.median(plain)
        s = {k: statistics.median(r[k] for r in secure) for k in secure[0]}
        d = {k: statistics.median(r[k] for r in dropped) for k in dropped[0]}
        print(f"{n:2d} sites: plain sum {p * 1000:7.1f} ms | secure: per site {s['site'] * 1000:7.1f} ms "
              f"(setup {s['setup'] * 1000:.1f}), server {s['server'] * 1000:7.1f} ms, all sites + server "
              f"{(s['all']) * 1000:8.1f} ms | one dropout: server {d['server'] * 1000:7.1f} ms",
              flush=True)


def _plain(states: list[dict], weights: list[int]) -> float:
    start = time.perf_counter()
    mean = WeightedMean()
    for state, w in zip(states, weights, strict=True):
        mean.add(state, w)
    mean.result()
    return time.perf_counter() - start


def _secure(states: list[dict], weights: list[int], drop: int) -> dict[str, float]:
    """Seconds: setup (rounds 0-1, per site), masking (per site), consistency check and
    unmasking (rounds 3-4: the sites' signing and verifying and the server's unmasking)."""
    n = len(states)
    sites = tuple(f"site-{k}" for k in range(n))
    params = secagg.Params(sites, n // 2 + 1, PARAMETERS + 1, b"bench")
    codec = FixedPoint(sites=n)
    identities = ephemeral_identities(sites)  # a deployment's certificates exist before it runs
    start = time.perf_counter()
    sessions = {s: SiteSession(s, params, identities[s]) for s in sites}
    book = secagg.key_book([sessions[s].advertise() for s in sites], params)
    inbox = secagg.route_shares([sessions[s].share_keys(book) for s in sites])
    for s in sites:
        sessions[s].receive_shares(inbox[s])
    setup = (time.perf_counter() - start) / n
    start = time.perf_counter()
    masked = {}
    for k, s in enumerate(sites[drop:], start=drop):
        x = states[k]["w"].to(torch.float64).numpy() * weights[k]
        ring = np.concatenate([codec.encode(x), np.array([weights[k]], np.uint64)])
        masked[s] = sessions[s].mask(ring)
    mask = (time.perf_counter() - start) / (n - drop)
    start = time.perf_counter()
    request = secagg.unmask_request(masked, book, params)
    signatures = [sessions[s].sign_survivors(request.survivors) for s in request.survivors]
    request = secagg.signed_request(request, signatures, params)
    responses = [sessions[s].unmask(request) for s in request.survivors]
    masked_sum = None
    for message in masked.values():  # the server streams them as they arrive
        masked_sum = secagg.add_masked(masked_sum, message)
    total = secagg.unmask(masked_sum, request, responses, book, params)
    codec.decode(total[:-1]) / int(total[-1:].view(np.int64)[0])
    server = time.perf_counter() - start
    return {"setup": setup, "site": setup + mask, "server": server,
            "all": n * setup + (n - drop) * mask + server}


def bench_round(args: argparse.Namespace) -> None:
    for n in args.sites:
        config = base_config(args.data_file, args.rounds, args.seed)
        config = replace(config, data=replace(config.data, sites=n, proportions=()),
                         model=replace(config.model, width=args.width))
        setup = prepare(config)
        config = setup.config  # with the settings chosen from the data (medfed/defaults.py)
        params = sum(v.numel() for k, v in setup.initial.items() if k in setup.parameter_keys)
        runs: dict[str, list] = {"plain": [], "secure": []}
        for _ in range(args.repeats):
            for name, privacy in (("plain", PrivacyConfig()),
                                  ("secure", PrivacyConfig(secure_aggregation=True))):
                run_setup = replace(setup, config=replace(config, privacy=privacy))
                runs[name].append(train(run_setup, "fedavg", setup.federation.sites, name))
        seconds = {k: [r.seconds for o in v for r in o.history] for k, v in runs.items()}
        plain, secure = statistics.median(seconds["plain"]), statistics.median(seconds["secure"])
        auc = {k: v[0].test["auc"] for k, v in runs.items()}
        up = {k: v[0].history[0].bytes_up / 1e6 for k, v in runs.items()}
        print(f"{n:2d} sites, {params:,} parameters: plain {_list(seconds['plain'])} s, secure "
              f"{_list(seconds['secure'])} s; medians {plain:.2f} / {secure:.2f} s, ratio "
              f"{secure / plain:.2f}; test AUC {auc['plain']:.3f} / {auc['secure']:.3f}; "
              f"bytes up per round {up['plain']:.1f} / {up['secure']:.1f} MB", flush=True)


def _list(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=["auc", "epoch", "secagg", "round"])
    parser.add_argument("--data-file", type=Path, default=DATA)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sites", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="auc: the seeds to run")
    parser.add_argument("--only", nargs="+", help="auc: run only these labels (exactly as listed)")
    parser.add_argument("--width", type=int, default=60, help="round: the cnn's width (60: ~1M parameters)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.suite != "secagg" and not args.data_file.is_file():
        raise SystemExit(f"{args.data_file} not found (PneumoniaMNIST: https://zenodo.org/records/10519652)")
    suites = {"auc": bench_auc, "epoch": bench_epoch, "secagg": bench_secagg, "round": bench_round}
    suites[args.suite](args)


if __name__ == "__main__":
    main()
