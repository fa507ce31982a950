"""`medfed job submit FILE.toml | list | status ID | abort ID`: what an administrator types; the
calls go to the coordinator (deploy/admin.py) with the administrator's certificate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medfed.errors import ConfigError


def add_parser(commands: argparse._SubParsersAction) -> None:
    job = commands.add_parser("job", help="submit and follow experiments on a running coordinator")
    what = job.add_subparsers(dest="job_command", required=True, parser_class=type(job))
    for name, text in (("submit", "queue a federation file as a job"), ("list", "every job"),
                       ("status", "one job"), ("abort", "stop a queued or running job")):
        sub = what.add_parser(name, help=text)
        if name == "submit":
            sub.add_argument("file", type=Path, help="a federation file ([task], [deployment] ...)")
            sub.add_argument("--name", help="a name for the job (default: the file's name)")
        elif name in ("status", "abort"):
            sub.add_argument("id", type=int, help="the job's number (medfed job list)")
        sub.add_argument("--server", required=True, help="HOST:PORT of the coordinator")
        sub.add_argument("--certs", type=Path, required=True,
                         help="folder with ca.crt and the administrator's admin.NAME.crt/.key")
        sub.add_argument("--admin", required=True, help="the administrator's NAME (certs issue "
                                                        "--admin --name NAME)")


def execute_job(args: argparse.Namespace) -> int:
    from medfed.deploy.admin import call_admin

    if args.job_command == "submit":
        try:
            text = args.file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from None
        body = {"op": "submit", "config": text, "name": args.name or args.file.stem}
    elif args.job_command == "list":
        body = {"op": "list"}
    else:
        body = {"op": args.job_command, "job": args.id}
    answer = call_admin(args.server, args.certs, args.admin, body)
    if args.job_command == "list":
        for job in answer["jobs"]:
            auc = f" test AUC {job['test_auc']:.3f}" if job.get("test_auc") is not None else ""
            print(f"{job['id']:>4}  {job['status']:<8} {job['name']}  submitted {job['submitted']} "
                  f"by {job['submitted_by']}{auc}")
    else:
        print(json.dumps(answer, indent=2))
    return 0
