"""The command line: `medfed run` (more commands arrive with deployment, privacy and reports).

A user's mistake gets one line on stderr naming what was wrong and what is valid, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import medfed
from medfed import bundle_commands
from medfed.config import DataConfig, RunConfig
from medfed.config_file import load_config, with_overrides
from medfed.deploy import commands as deploy_commands
from medfed.errors import ConfigError, MedfedError
from medfed.output_dir import check_out_dir
from medfed.privacy import dp_plan

# flag -> (config key, type, help). Names mirror the config keys (DESIGN.md's CLI contract).
RUN_FLAGS: dict[str, tuple[str, type, str]] = {
    "--dataset": ("dataset", str, ("synthetic (built in), medmnist, dicom, nifti, chestxray14, "
                                   "heart-disease or images")),
    "--data-file": ("data_file", str, ("the data file (a MedMNIST .npz; one heart-disease "
                                       "processed.<hospital>.data)")),
    "--sites": ("sites", int, "number of sites (default: the data's natural sites, else 5)"),
    "--partition": ("partition", str, "iid, dirichlet, quantity or natural"),
    "--alpha": ("alpha", float, "Dirichlet concentration of the label skew"),
    "--sizes": ("sizes", str, "exact samples per site, comma-separated, e.g. 400,500,300"),
    "--proportions": ("proportions", str, "relative site sizes, e.g. 20,25,15,30,22"),
    "--image-size": ("image_size", int, "resize images to this side length"),
    "--algorithm": ("algorithm", str, "fedavg, fedavgm, fedprox, fedbn, fedadam, fedyogi, fednova, scaffold, "
                                      "swt, cwt, ensemble, split"),
    "--cut": ("cut", str, "split: blocks a site keeps at each end, H,T (default 2,1)"),
    "--aggregator": ("aggregator", str, "mean, median, trimmed-mean, krum, multi-krum, norm-bound"),
    "--byzantine": ("byzantine", int, "faulty sites Krum and the trimmed mean tolerate (f)"),
    "--krum-keep": ("krum_keep", int, "updates Multi-Krum averages (default n - f)"),
    "--norm-bound": ("norm_bound", float, "norm-bound's M (default: the round's median update norm)"),
    "--attack": ("attack", str, "simulated attack of the first --attackers sites: label-flip, "
                                "scale:F, sign-flip, noise[:S], nan, free-ride"),
    "--attackers": ("attackers", int, "how many sites attack (default 1)"),
    "--rounds": ("rounds", int, "federated rounds"),
    "--fraction": ("fraction", float, "share of sites sampled per round"),
    "--patience": ("patience", int, ("stop after N scored rounds without a better federated "
                                     "validation AUC; --rounds is then a cap (default: chosen)")),
    "--min-rounds": ("min_rounds", int, ("patience never stops a run before this round "
                                         "(default: chosen)")),
    "--compress": ("compress", str, "the sites' updates: none, q8 (8-bit) or topk:F (the largest F "
                                    "share, with error feedback), e.g. topk:0.1"),
    "--topology": ("topology", str, ("server (a central aggregator), p2p (gossip between peers) or "
                                     "hybrid (regional, then global aggregation)")),
    "--gossip": ("gossip", str, ("p2p graph: ring, k-regular:K (random, from --seed), full, or "
                                 "braintorrent (a site a step pulls its peers' newer models)")),
    "--regions": ("regions", str, "hybrid: sites per region, e.g. 'north:site-a,site-b;south:site-c'"),
    "--global-every": ("global_every", int, "hybrid: regional rounds per global average (1)"),
    "--mu": ("mu", float, "FedProx proximal weight"),
    "--server-lr": ("server_lr", float, "server learning rate (FedAdam/FedYogi 0.01, FedAvgM 1)"),
    "--server-momentum": ("server_momentum", float, "FedAvgM's server momentum beta (0.9)"),
    "--local-epochs": ("local_epochs", int, "epochs of local training per round (default 1)"),
    "--local-steps": ("local_steps", int, ("at least this many optimizer steps per round; a small "
                                           "site repeats its data (default 20; 0: epochs only)")),
    "--batch-size": ("batch_size", int, "local batch size"),
    "--lr": ("lr", float, "local learning rate"),
    "--lr-schedule": ("lr_schedule", str, "constant, or cosine: the local lr decays over the rounds"),
    "--optimizer": ("optimizer", str, "adam or sgd"),
    "--momentum": ("momentum", float, "SGD momentum"),
    "--logit-adjust": ("logit_adjust", float, "label skew: train on logits + tau log(site's label prior)"),
    "--model": ("model", str, ("cnn, resnet18, resnet50, densenet121, scatter, mlp, logistic (default: "
                               "from the data: cnn for images, mlp for tabular rows)")),
    "--norm": ("norm", str, "batch, group or instance (default: from the data)"),
    "--width": ("width", int, "cnn: channels of its first stage (default 16, ~70k parameters; 60: ~1M)"),
    "--seed": ("seed", int, "random seed"),
    "--device": ("device", str, "auto, cpu, cuda or mps"),
    # data a site holds (dicom, nifti, chestxray14)
    "--data-dir": ("data_dir", str, "the data folder; each top-level subfolder is one site"),
    "--site-name": ("site_name", str, "the data folder (or heart-disease file) is this one site"),
    "--labels": ("labels", str, "CSV of labels: file (or a DICOM UID) and label"),
    "--label-map": ("label_map", str, "TOML mapping each site's label names to the federation's"),
    "--harmonize": ("harmonize", str, "per-site intensity harmonization: none, zscore or histogram"),
    "--test-fraction": ("test_fraction", float, "share of each site held out as the test set"),
    "--site-by": ("site_by", str, "chestxray14 pseudo-sites: view, sex or age"),
    # Privacy (medfed/privacy/); the switches --dp-sgd, --client-dp, --secure-aggregation and
    # --homomorphic are below.
    "--noise-multiplier": ("noise_multiplier", float, "DP-SGD noise multiplier sigma"),
    "--max-grad-norm": ("max_grad_norm", float, "DP-SGD per-sample clipping norm C"),
    "--target-epsilon": ("target_epsilon", float, "DP-SGD budget per site (derives sigma if not given)"),
    "--delta": ("delta", float, "the delta of (epsilon, delta)-DP (default 1e-5)"),
    "--logical-batch": ("logical_batch", int, (f"DP-SGD: expected images per noisy step "
                                               f"(default {dp_plan.LOGICAL_BATCH})")),
    "--physical-batch": ("physical_batch", int, (f"DP-SGD: images per forward pass, copies "
                                                 f"included (memory only; default "
                                                 f"{dp_plan.PHYSICAL_BATCH})")),
    "--augment-multiplicity": ("augment_multiplicity", int, (
        f"DP-SGD: augmented copies per image, averaged before its clip (default "
        f"{dp_plan.MULTIPLICITY})")),
    "--ema-decay": ("ema_decay", float, (f"DP-SGD: average of the weights along the noisy steps "
                                         f"(default {dp_plan.EMA_DECAY:g}; 0: off)")),
    "--dp-optimizer": ("dp_optimizer", str, f"DP-SGD: adam or sgd (default {dp_plan.OPTIMIZER})"),
    "--dp-lr": ("dp_lr", float, f"DP-SGD: learning rate (default {dp_plan.LR:g})"),
    "--dp-momentum": ("dp_momentum", float, f"DP-SGD: SGD momentum (default {dp_plan.MOMENTUM:g})"),
    "--clip": ("clip", float, "client-level DP: clip each site's update to this norm S"),
    "--noise": ("noise", float, "client-level DP: noise multiplier (std sigma * S on the sum)"),
    "--threshold": ("threshold", int, "secure aggregation: survivors t needed to unmask"),
    # [execution]: where the simulation runs (config_execution.py)
    "--backend": ("backend", str, "inprocess (default: sites one after another here) or ray"),
    "--ray-address": ("ray_address", str, "ray: join this cluster ('auto' or HOST:PORT); default: "
                                          "a local Ray for the run"),
    "--cpus-per-site": ("cpus_per_site", float, "ray: CPUs a worker reserves per site (1)"),
    "--gpus-per-site": ("gpus_per_site", float, "ray: GPU share a worker reserves (0)"),
    "--max-workers": ("max_workers", int, "ray: at most this many workers (default: CPUs / "
                                          "cpus-per-site)"),
    "--pooled-workers": ("pooled_workers", int, "the pooled baseline over N DistributedDataParallel "
                                                "workers (default 1)"),
    "--encrypt-layers": ("encrypt_layers", str, "homomorphic: encrypt only the layers matching "
                                                "these comma-separated glob patterns, e.g. 'fc.*'"),
}
BOOL_FLAGS = ("baselines", "augment", "allow_phi", "series_volumes", "keep_best", "baselines_beside")
PRIVACY_SWITCHES = {"--dp-sgd": "dp_sgd", "--client-dp": "client_dp",
                    "--secure-aggregation": "secure_aggregation", "--homomorphic": "homomorphic"}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2), not usage plus error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="medfed", description="Federated learning for medical imaging.")
    parser.add_argument("--version", action="version", version=f"medfed {medfed.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    run = commands.add_parser("run", help="one experiment in simulation, with baselines")
    _add_run_flags(run)
    run.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=None,
                     help="also train local-only and pooled baselines (on by default)")
    run.add_argument("--resume", type=Path, metavar="DIR",
                     help="continue an interrupted run from its last completed round")
    _add_target_sensitivity(run)
    compare = commands.add_parser("compare", help="algorithms against local-only and pooled "
                                                  "baselines over seeds, with statistics")
    compare.add_argument("--algorithms", help="comma-separated, e.g. fedavg,fedprox,fedbn")
    compare.add_argument("--resume", type=Path, metavar="DIR",
                         help="continue an interrupted compare with the seeds it finished")
    compare.add_argument("--seeds", type=int, default=3, help="seeds: --seed, --seed + 1, ... (3)")
    compare.add_argument("--bootstrap", type=int, default=1000,
                         help="bootstrap resamples of the test set for intervals (1000)")
    _add_target_sensitivity(compare)
    _add_run_flags(compare)
    report = commands.add_parser("report", help="rebuild DIR/report.html from a run or compare "
                                                "folder's saved results")
    report.add_argument("dir", type=Path, help="a `medfed run` or `medfed compare` --out folder, "
                                               "or a `medfed server` --state folder")
    data = commands.add_parser("data", help="look at the data a site holds")
    checks = data.add_subparsers(dest="data_command", required=True, parser_class=OneLineParser)
    check = checks.add_parser("check", help="per-site data report: counts, labels, intensities, "
                                            "sizes, skipped files, identifying tags")
    for flag in ("--dataset", "--data-dir", "--labels", "--label-map", "--image-size", "--site-by"):
        check.add_argument(flag, type=RUN_FLAGS[flag][1], help=RUN_FLAGS[flag][2])
    _add_data_flags(check, allow_phi=False)
    check.add_argument("--json", type=Path, help="also write the shareable aggregates (no file "
                                                 "names) to this JSON file")
    deploy_commands.add_parsers(commands)  # certs, server, client, audit (deployment)
    bundle_commands.add_parsers(commands)  # predict, export (the model bundle)
    return parser


def _add_target_sensitivity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target-sensitivity", type=float, metavar="S",
                        help="operating point: the highest threshold whose validation sensitivity "
                             "reaches S, in (0, 1] (default: Youden's J)")


def operating_rule(args: argparse.Namespace):
    """--target-sensitivity, checked before anything trains (one line and exit 2 if wrong)."""
    from medfed.evaluation.operating_rule import OperatingRule

    return OperatingRule(args.target_sensitivity)


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a simulation (`run` and `compare`): every config key, see RUN_FLAGS."""
    parser.add_argument("--config", type=Path, help="a TOML config file (see README)")
    parser.add_argument("--out", type=Path, help="output folder (default runs/<time>)")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty --out folder that is not a medfed output")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write the round metrics as TensorBoard event files under "
                             "OUT/tensorboard/ (needs: pip install tensorboard)")
    for flag, (_, kind, text) in RUN_FLAGS.items():
        parser.add_argument(flag, type=kind, help=text)
    parser.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=None,
                        help="keep the global model of the round with the best validation AUC "
                             "(off)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="training-only augmentation (default: on for images, off for "
                             "binary masks and tabular rows)")
    parser.add_argument("--baselines-beside", action=argparse.BooleanOptionalAction, default=None,
                        help="medfed run: train the baselines in a second process while the "
                             "federation trains, half the torch threads each (on; off: after "
                             "it, in this process)")
    for flag in PRIVACY_SWITCHES:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                            help=f"privacy: {flag[2:]} (off by default)")
    _add_data_flags(parser)


def compare_options(args: argparse.Namespace, config: RunConfig):
    """`medfed compare`'s own flags, checked against the config before anything trains."""
    from medfed.compare import CompareOptions  # after the flags: torch loads only for valid input

    algorithms = tuple(a.strip() for a in (args.algorithms or "").split(",") if a.strip())
    if not algorithms:
        raise MedfedError("--algorithms needs at least one algorithm, e.g. fedavg,fedprox")
    for algorithm in algorithms:  # each must be valid with the rest of the config (swt rounds ...)
        with_overrides(config, {"algorithm": algorithm})
    if args.seeds < 1 or args.bootstrap < 100:
        raise MedfedError(f"--seeds must be >= 1 and --bootstrap >= 100, got {args.seeds} and "
                          f"{args.bootstrap}")
    return CompareOptions(algorithms, args.seeds, args.bootstrap,
                          operating_rule(args).target_sensitivity)


def _add_data_flags(parser: argparse.ArgumentParser, allow_phi: bool = True) -> None:
    if allow_phi:
        parser.add_argument("--allow-phi", action=argparse.BooleanOptionalAction, default=None,
                            help="use DICOM files that still carry identifying tags (off)")
    parser.add_argument("--series-volumes", action=argparse.BooleanOptionalAction, default=None,
                        help="dicom: one 3D sample per series instead of one per instance (off)")


def run_config(args: argparse.Namespace) -> RunConfig:
    config = load_config(args.config) if args.config else RunConfig()
    overrides: dict[str, Any] = {}
    for flag, (key, _, _) in RUN_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            overrides[key] = _parse_list(flag, value, int if key == "sizes" else float) \
                if key in ("sizes", "proportions") else value
            if key == "encrypt_layers":  # glob patterns, comma-separated
                overrides[key] = tuple(p.strip() for p in value.split(","))
    for key in BOOL_FLAGS:  # `compare` has no --baselines: it always trains them
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    for key in PRIVACY_SWITCHES.values():
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return with_overrides(config, overrides)


def _resumed(args: argparse.Namespace) -> tuple[RunConfig, Path]:
    """`medfed run --resume DIR`: the configuration the run was started with, nothing else."""
    given = [f for f in (*RUN_FLAGS, "--target-sensitivity")
             if getattr(args, f[2:].replace("-", "_")) is not None]
    if args.config or args.out or given:
        raise ConfigError("--resume DIR continues the run with the configuration in "
                          "DIR/config.toml; give no --config, --out or other flags with it")
    if not (args.resume / "config.toml").is_file():
        raise ConfigError(f"{args.resume} is not a `medfed {args.command}` folder (no config.toml)")
    return load_config(args.resume / "config.toml"), args.resume


def _resumed_rule(folder: Path):
    """The operating rule an interrupted run was started with (DIR/run-options.json; a folder from
    before that file existed was started with the default, Youden's J)."""
    from medfed.evaluation.operating_rule import OperatingRule

    path = folder / "run-options.json"
    raw = json.loads(path.read_text()) if path.is_file() else {}
    return OperatingRule(raw.get("target_sensitivity"))


def _resumed_options(folder: Path):
    """The compare options an interrupted compare was started with (DIR/compare-options.json)."""
    from medfed.compare import CompareOptions

    path = folder / "compare-options.json"
    if not path.is_file():
        raise ConfigError(f"{folder} is not a `medfed compare` folder (no compare-options.json)")
    raw = json.loads(path.read_text())
    return CompareOptions(tuple(raw["algorithms"]), raw["seeds"], raw["n_boot"],
                          raw["target_sensitivity"])


def data_config(args: argparse.Namespace) -> DataConfig:
    """`medfed data check`'s flags as a [data] config."""
    keys = {flag[2:].replace("-", "_"): RUN_FLAGS[flag][0] for flag in RUN_FLAGS}
    values = {key: getattr(args, name) for name, key in keys.items()
              if getattr(args, name, None) is not None}
    if args.series_volumes is not None:
        values["series_volumes"] = args.series_volumes
    return with_overrides(RunConfig(), values).data


def _parse_list(flag: str, text: str, kind: type) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MedfedError(f"{flag} takes comma-separated {kind.__name__}s, got '{text}'") from None


def _fresh_run_dir() -> Path:
    base = Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _check_tensorboard(args: argparse.Namespace) -> None:
    """--tensorboard without the package fails in one line before anything trains."""
    if args.tensorboard:
        from medfed.report.tensorboard import require_tensorboard

        require_tensorboard()


def _tensorboard(args: argparse.Namespace, out: Path) -> None:
    if args.tensorboard:
        from medfed.report.tensorboard import write_tensorboard

        write_tensorboard(out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            config, out = _resumed(args) if args.resume else (run_config(args), None)
            rule = _resumed_rule(args.resume) if args.resume else operating_rule(args)
            _check_tensorboard(args)  # flags are checked before torch and MONAI load (seconds)
            from medfed.run import execute_run

            out = out or check_out_dir(args.out, args.force) or _fresh_run_dir()
            execute_run(config, out, resume=bool(args.resume), rule=rule)
            _tensorboard(args, out)
        elif args.command == "compare":
            config, out = _resumed(args) if args.resume else (run_config(args), None)
            options = _resumed_options(args.resume) if args.resume else compare_options(args, config)
            _check_tensorboard(args)
            from medfed.compare import execute_compare

            out = out or check_out_dir(args.out, args.force) or _fresh_run_dir()
            execute_compare(config, options, out, resume=bool(args.resume))
            _tensorboard(args, out)
        elif args.command == "report":
            from medfed.report.build import build_report

            print(build_report(args.dir))
        elif args.command == "data":
            from medfed.data.check import check_command

            check_command(data_config(args), json_path=args.json)
        elif args.command in deploy_commands.COMMANDS:
            return deploy_commands.execute(args)
        elif args.command in bundle_commands.COMMANDS:
            return bundle_commands.execute(args)
    except MedfedError as exc:
        sys.stderr.write(f"medfed: error: {exc}\n")
        return 2
    except OSError as exc:  # an --out or data path that cannot be written or read
        sys.stderr.write(f"medfed: error: {exc.strerror or exc}: {exc.filename or ''}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("medfed: interrupted\n")
        return 130
    return 0
