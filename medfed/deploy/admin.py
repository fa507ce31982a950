"""`medfed job submit | list | status | abort`: an administrator talks to the coordinator.

One unary gRPC method (medfed.Admin/Call) over the same mutual-TLS port as the sites, with small
JSON requests and answers. Only a certificate issued by the federation's authority with
`medfed certs issue --admin --name NAME` (common name "admin.NAME") may call it, and no site
certificate can; a site can never be an administrator nor an administrator a site ([deployment]
sites named "admin.*" are refused). Every call is audited with the administrator's name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from medfed.deploy.certs import load_identity
from medfed.deploy.jobs import JobStore
from medfed.deploy.settings import load_federation_text
from medfed.errors import ConfigError, MedfedError
from medfed.transport.grpc_channel import CLIENT_OPTIONS, channel_credentials

SERVICE = "medfed.Admin"
METHOD = f"/{SERVICE}/Call"
ADMIN_PREFIX = "admin."
MAX_REQUEST = 1 << 20  # a federation file is a few KB


class AdminServicer:
    """The coordinator's side: jobs in, jobs' status out; abort asks the running job to stop."""

    def __init__(self, jobs: JobStore, audit: Callable[..., None],
                 abort_running: Callable[[int], bool]) -> None:
        self.jobs, self.audit, self.abort_running = jobs, audit, abort_running

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(self.call)
        return grpc.method_handlers_generic_handler(SERVICE, {"Call": method})

    def call(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        names = context.auth_context().get("x509_common_name") or []
        admin = names[0].decode(errors="replace") if names else ""
        if not admin.startswith(ADMIN_PREFIX):
            self.audit("admin_refused", peer=context.peer(), reason="not an administrator's certificate")
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "only an administrator's certificate "
                          "(medfed certs issue --admin) may manage jobs")
        try:
            body = _parse(request)
            answer = self._answer(body, admin[len(ADMIN_PREFIX):])
        except MedfedError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return json.dumps(answer).encode()

    def _answer(self, body: dict[str, Any], admin: str) -> dict[str, Any]:
        op = body.get("op")
        if op == "submit":
            text = body.get("config")
            if not isinstance(text, str):
                raise ConfigError("submit needs the federation file's text")
            federation = load_federation_text(text, str(body.get("name", "job")))
            job = self.jobs.submit(text, str(body.get("name", "job")), admin)
            self.audit("job_submitted", job=job, admin=admin,
                       algorithm=federation.config.federation.algorithm,
                       sites=list(federation.deployment.sites))
            return {"job": job, "status": "queued"}
        if op == "list":
            return {"jobs": self.jobs.jobs()}
        job_id = _job_id(body)
        if op == "status":
            return self.jobs.job(job_id)
        if op == "abort":
            return {"job": job_id, "status": self._abort(job_id, admin)}
        raise ConfigError(f"unknown operation {op!r}; valid: submit, list, status, abort")

    def _abort(self, job_id: int, admin: str) -> str:
        status = self.jobs.job(job_id)["status"]
        if status == "queued":
            self.jobs.set_status(job_id, "aborted", f"aborted by {admin} before it started")
            status = "aborted"
        elif status == "running" and self.abort_running(job_id):
            status = "aborting"
        self.audit("job_abort_requested", job=job_id, admin=admin, status=status)
        return status


def _parse(request: bytes) -> dict[str, Any]:
    if len(request) > MAX_REQUEST:
        raise ConfigError(f"request over {MAX_REQUEST} bytes")
    try:
        body = json.loads(request)
    except ValueError:
        raise ConfigError("request is not JSON") from None
    if not isinstance(body, dict):
        raise ConfigError("request is not a JSON object")
    return body


def _job_id(body: dict[str, Any]) -> int:
    job = body.get("job")
    if isinstance(job, bool) or not isinstance(job, int) or job < 1:
        raise ConfigError(f"a job id is a positive whole number, got {job!r}")
    return job


def call_admin(server: str, certs: Path, admin: str, body: dict[str, Any],
               timeout: float = 30.0) -> dict[str, Any]:
    """An administrator's call; a refusal or an unreachable coordinator is one ConfigError."""
    identity = load_identity(certs, ADMIN_PREFIX + admin)
    with grpc.secure_channel(server, channel_credentials(identity), options=CLIENT_OPTIONS) as channel:
        call = channel.unary_unary(METHOD)
        try:
            return json.loads(call(json.dumps(body).encode(), timeout=timeout))
        except grpc.RpcError as exc:
            raise ConfigError(f"the coordinator at {server} answered {exc.code().name}: "
                              f"{exc.details()}") from None
