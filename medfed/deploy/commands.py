"""The deployment commands' arguments and what each runs: `medfed certs init|issue|ckks`,
`medfed server`, `medfed client`, `medfed audit verify`. cli.py only adds these parsers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medfed.deploy.job_commands import add_parser as add_job_parser
from medfed.errors import ConfigError

COMMANDS = ("certs", "server", "client", "audit", "job")
# `medfed client` flags for the common keys of a site's [data] (deploy/site_config.py).
SITE_DATA_FLAGS: dict[str, tuple[str, type, str]] = {
    "--dataset": ("dataset", str, ("dicom, nifti, chestxray14, medmnist, heart-disease, images, "
                                  "synthetic")),
    "--data-dir": ("data_dir", str, "the site's data folder (all of it is this one site)"),
    "--data-file": ("data_file", str, "the site's data file (a MedMNIST .npz)"),
    "--labels": ("labels", str, "CSV of labels: file (or a DICOM UID) and label"),
    "--label-map": ("label_map", str, "TOML mapping this site's label names to the federation's"),
    "--image-size": ("image_size", int, "side length the site's loader resizes images to"),
    "--val-fraction": ("val_fraction", float, "share of the site's data kept for validation"),
    "--test-fraction": ("test_fraction", float, "share of the site's data held out for testing"),
}


def add_parsers(commands: argparse._SubParsersAction) -> None:
    certs = commands.add_parser("certs", help="the federation's certificate authority and certificates")
    what = certs.add_subparsers(dest="certs_command", required=True, parser_class=type(certs))
    init = what.add_parser("init", help="create the federation's certificate authority")
    init.add_argument("--out", type=Path, required=True, help="certificates folder")
    issue = what.add_parser("issue", help="issue a site's or the server's certificate and key")
    issue.add_argument("--name", required=True, help="a site name (its identity) or 'server'")
    issue.add_argument("--out", type=Path, required=True, help="the folder that holds the CA")
    issue.add_argument("--hosts", default="", help="server only: host names / IPs it is reached at, "
                                                   "comma-separated (default localhost,127.0.0.1)")
    issue.add_argument("--force", action="store_true", help="replace an existing NAME.key and NAME.crt")
    issue.add_argument("--homomorphic", action="store_true", help="also NAME.ckks, the federation's "
                       "CKKS context: the secret one for a site, the public one for the server")
    context = what.add_parser("ckks", help="issue only NAME.ckks (homomorphic encryption's context) "
                                           "for a name that already has its certificate")
    context.add_argument("--name", required=True, help="a site name or 'server'")
    context.add_argument("--out", type=Path, required=True, help="the folder that holds the CA")
    context.add_argument("--force", action="store_true", help="replace an existing NAME.ckks")
    issue.add_argument("--admin", action="store_true", help="an administrator's certificate "
                       "(admin.NAME: may submit and abort jobs; never a site)")
    server = commands.add_parser("server", help="coordinate a deployed federation (gRPC + mTLS)")
    server.add_argument("--config", type=Path, help="federation TOML file: run it and exit "
                        "(without: a coordinator that runs `medfed job submit` jobs until stopped)")
    server.add_argument("--certs", type=Path, help="folder with ca.crt, server.crt, server.key")
    server.add_argument("--state", type=Path, required=True, help="state folder (SQLite, audit)")
    server.add_argument("--address", help="HOST:PORT to listen on (default: [deployment] address)")
    server.add_argument("--resume", action="store_true", help="continue after the last completed round")
    server.add_argument("--insecure", action="store_true", help="no TLS; loopback addresses only")
    client = commands.add_parser("client", help="run one site of a deployed federation on its own data")
    client.add_argument("--server", required=True, help="HOST:PORT of the server")
    client.add_argument("--site", help="this site's name (its certificate's name; or site = in "
                                       "--site-config)")
    client.add_argument("--certs", type=Path, help="folder with ca.crt, SITE.crt, SITE.key")
    client.add_argument("--insecure", action="store_true", help="no TLS; loopback addresses only")
    client.add_argument("--retry-for", type=float, default=3600.0,
                        help="seconds to keep retrying an unreachable server (default 3600)")
    client.add_argument("--max-backoff", type=float, default=30.0,
                        help="longest wait in seconds between reconnection attempts (default 30)")
    client.add_argument("--site-config", type=Path, help="SITE.toml: this site's data, state "
                        "folder and splits (README: Deployment); the flags below override it")
    client.add_argument("--state", type=Path, help="this site's state folder (default medfed-SITE)")
    client.add_argument("--seed", type=int, help="seed of this site's train/validation/test split")
    for flag, (key, kind, text) in SITE_DATA_FLAGS.items():
        client.add_argument(flag, dest=key, type=kind, help=text)
    client.add_argument("--data", type=Path, help="shorthand for --dataset medmnist --data-file FILE")
    client.add_argument("--once", action="store_true", help="exit when the federation is over "
                        "(default: stay up and serve the next federation)")
    add_job_parser(commands)
    audit = commands.add_parser("audit", help="check an audit trail")
    audit_what = audit.add_subparsers(dest="audit_command", required=True, parser_class=type(audit))
    verify = audit_what.add_parser("verify", help="print ok, or the first broken line (exit 1)")
    verify.add_argument("file", type=Path)
    verify.add_argument("--state", type=Path, help="the server's state folder, whose database "
                        "holds the trail's signed head (default: FILE's folder, if it holds one)")
    verify.add_argument("--cert", type=Path, help="the server's certificate (server.crt) to check "
                        "the signatures with (default: the key recorded in the state database)")
    verify.add_argument("--witness", type=Path, action="append", default=[], metavar="FILE",
                        help="a site's copy of the signed heads it was sent (its state folder's "
                        "audit-witness.jsonl); repeat for each site")


def execute(args: argparse.Namespace) -> int:
    """Run a deployment command; user mistakes raise MedfedError (cli.py prints them, status 2)."""
    if args.command == "certs":
        from medfed.deploy import certs

        if args.certs_command == "init":
            print(certs.init_ca(args.out))
        elif args.certs_command == "ckks":
            print(certs.issue_context(args.out, args.name, force=args.force))
        else:
            hosts = tuple(h.strip() for h in args.hosts.split(",") if h.strip())
            if args.admin and hosts:
                raise ConfigError("--admin issues a client certificate; it takes no --hosts")
            name = f"admin.{args.name}" if args.admin else args.name
            print(certs.issue(args.out, name, hosts, force=args.force))
            if args.homomorphic:
                print(certs.issue_context(args.out, name, force=args.force))
        return 0
    if args.command == "audit":
        return _verify_audit(args)
    if args.command == "job":
        from medfed.deploy.job_commands import execute_job

        return execute_job(args)
    _need_certs(args)
    _check_addresses(args)
    if args.command == "server" and args.config is None:
        from medfed.deploy.coordinator import CoordinatorArgs, coordinate

        if args.resume:
            raise ConfigError("a coordinator resumes its jobs by itself; --resume goes with --config")
        return coordinate(CoordinatorArgs(args.certs, args.state, args.address or "127.0.0.1:50051",
                                          args.insecure))
    if args.command == "server":
        from medfed.deploy.server import ServerArgs, serve

        serve(ServerArgs(args.config, args.certs, args.state, args.address, args.resume,
                         args.insecure))
        return 0
    from medfed.deploy.client import ClientArgs, run_client
    from medfed.deploy.site_config import load_site_config

    data = {key: getattr(args, key) for key, _, _ in SITE_DATA_FLAGS.values()}
    if args.data is not None:
        data |= {"dataset": "medmnist", "data_file": str(args.data)}
    site = load_site_config(args.site_config, args.site, data, args.state, args.seed)
    return run_client(ClientArgs(args.server, site, args.certs, args.insecure, args.retry_for,
                                 args.max_backoff, args.once))


def _verify_audit(args: argparse.Namespace) -> int:
    from medfed.deploy.audit_verify import verify
    from medfed.deploy.signatures import load_public_key, public_from_pem
    from medfed.deploy.state import read_anchor

    state = args.state
    if state is None and (args.file.parent / "medfed.sqlite").is_file():
        state = args.file.parent
    anchor = read_anchor(state) if state is not None else None
    key = load_public_key(args.cert) if args.cert is not None else (
        public_from_pem(anchor.key_pem) if anchor is not None and anchor.key_pem else None)
    verdict = verify(args.file, key, anchor, tuple(args.witness))
    if not verdict.ok:
        print(f"broken at line {verdict.line}: {verdict.reason}" if verdict.line
              else f"broken: {verdict.reason}")
        return 1
    print("ok: " + "; ".join(verdict.notes))
    return 0


def _check_addresses(args: argparse.Namespace) -> None:
    """HOST:PORT with a port gRPC can bind (1-65535; port 0 would pick another), and client
    timings that make sense; checked before anything starts."""
    from medfed.errors import ConfigError
    from medfed.transport.grpc_channel import split_address

    flag, address = (("--address", args.address) if args.command == "server"
                     else ("--server", args.server))
    if address is not None:
        _, port = split_address(address)
        if not 0 < port < 65536:
            raise ConfigError(f"{flag}: port must be 1-65535, got {port}")
    if args.command == "client" and not (args.max_backoff > 0 and args.retry_for >= 0):
        raise ConfigError(f"--max-backoff must be > 0 and --retry-for >= 0 (seconds), got "
                          f"{args.max_backoff:g} and {args.retry_for:g}")


def _need_certs(args: argparse.Namespace) -> None:
    if args.certs is None and not args.insecure:
        sys.stderr.write(f"medfed {args.command}: error: --certs DIR is required "
                         "(or --insecure on loopback)\n")
        raise SystemExit(2)
