"""Split learning in a deployment, the server's side: the Split service (medfed.proto) in front of
the strategy's middle (algorithms/split.py, SplitFed, the simulation's own).

Design: while a site runs its round's train task it calls Forward and Backward once each per batch
(transport/grpc_split.py), on its existing mutual-TLS channel. Each call is checked alone, before
the middle sees anything:

- who: the caller is its certificate's site (without TLS: the site it names, a loopback test only),
  a site of this federation, calling at most as often as a Session's messages are read
  (transport/admission.py);
- when: the call names the site's open train task of this round (transport/open_tasks.py); a
  site can act only for itself, only while its round is open, and the round loop does not go on
  (checkpoint, evaluation) while a call it admitted still runs;
- what: the middle's end (split_channel.MiddleEnd) checks the tensor (its name, float32, the shape
  at that cut, a batch of at most the plan's batch_size, finite values) and refuses a backward with
  no forward of the same task in flight.

A call that is not a protocol message, fails a check, or that the middle cannot compute, fails
that site's train task with one line (the round records it and audits `update_rejected`, as any
failed site) and is refused. A call naming no open task of the site (a late site still on a task
the round gave up on, or a call between rounds) is refused and audited as `site_refused`, without
touching the task it has open. Nothing a site sends here can stop the server. The bytes of every call and answer count into the round's bytes_up / bytes_down.
At the end of the round the sites' heads and tails come back as ordinary train answers and are
averaged by SplitFed as in simulation.

Chosen over messages on the Session stream: the site's forward waits for the answer anyway, the
client reads its stream only between tasks, and gRPC binds a unary call to the caller's
certificate, so each refusal is one status on one call and needs no extra state per stream.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from torch import nn

from medfed.algorithms.split import SplitFed
from medfed.config import RunConfig
from medfed.config_split import parse_cut
from medfed.errors import ConfigError, IncompatibleUpdate
from medfed.models.blocks import SplitLayout
from medfed.transport.admission import Bucket, Limits
from medfed.transport.chunks import MESSAGE_LIMIT
from medfed.transport.grpc_split import BACKWARD, FORWARD, SERVICE, SITE_HEADER, parse_split
from medfed.transport.open_tasks import NotOpen
from medfed.transport.proto import medfed_pb2 as pb
from medfed.transport.split_channel import MiddleEnd
from medfed.types import SiteId

if TYPE_CHECKING:
    from medfed.deploy.server import Federation

HEADER_ALLOWANCE = 4096  # a message's safetensors header and protobuf framing


def middle_end(strategy: SplitFed, config: RunConfig) -> MiddleEnd:
    """The server's end of the seam, for this strategy's middle and the plan's batch size."""
    return MiddleEnd(strategy, strategy.cut_shapes, max_batch=config.training.batch_size)


def check_split_messages(network: Callable[[], nn.Module], config: RunConfig,
                         sample_shape: tuple[int, ...]) -> None:
    """One batch's tensors at either cut must fit one gRPC message: a ConfigError before the
    server listens, rather than every site failing in its first batch."""
    layout = SplitLayout.of(network(), *parse_cut(config.federation.cut))
    batch = config.training.batch_size
    largest = max(math.prod(shape) for shape in layout.cut_shapes(sample_shape)) * 4 * batch
    if largest + HEADER_ALLOWANCE > MESSAGE_LIMIT:
        raise ConfigError(f"split learning: one batch's activations are {largest} bytes at "
                          f"batch_size {batch}, over the {MESSAGE_LIMIT} bytes of a message; lower "
                          "[training] batch_size or cut deeper ([federation] cut)")


class SplitService:
    """The Split RPCs of whichever federation runs (current() returns it, None between jobs)."""

    def __init__(self, current: Callable[[], Federation | None], insecure: bool,
                 limits: Limits | None = None) -> None:
        self.current = current
        self.insecure = insecure
        self.limits = limits or Limits()
        self._pace: dict[SiteId, Bucket] = {}  # each site's calls, at most the Session's pace
        self._pace_lock = threading.Lock()

    def handler(self) -> grpc.GenericRpcHandler:
        # Raw bytes in and out: a request that is not protobuf is this code's to refuse.
        methods = {FORWARD: grpc.unary_unary_rpc_method_handler(self.forward),
                   BACKWARD: grpc.unary_unary_rpc_method_handler(self.backward)}
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    def forward(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self._answer("forward", request, context)

    def backward(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self._answer("backward", request, context)

    def _answer(self, step: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        fed = self.current()
        if fed is None or fed.middle is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "no split-learning federation is running")
        site = self._caller(fed, context)
        if not self._paced(site):
            self._refused(fed, site, context, f"split learning {step}: over "
                          f"{self.limits.messages_per_second:g} calls a second",
                          grpc.StatusCode.RESOURCE_EXHAUSTED)
        task_id = None
        try:
            message = parse_split(request)
            task_id = message.task_id
            return self._within_task(fed, site, step, message)
        except NotOpen as exc:
            self._refused(fed, site, context, f"split learning {step}: {exc}",
                          grpc.StatusCode.FAILED_PRECONDITION)
        except IncompatibleUpdate as exc:  # the site's failure: its train task ends with it
            reason = str(exc)[:300]
            fed.transport.open_tasks.fail(site, f"split learning {step}: {reason}", task_id)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)
        return b""  # not reached: abort raises

    @staticmethod
    def _within_task(fed: Federation, site: SiteId, step: str, message: pb.SplitTensor) -> bytes:
        """The middle's answer to a call of the site's open train task (else NotOpen), its bytes
        counted; a tensor refused, or one the middle cannot compute, is IncompatibleUpdate. A
        backward answers only the forward of the same task."""
        with fed.transport.open_tasks.holding(site, message.task_id):
            try:
                answer = getattr(fed.middle, step)(site, message.tensor, turn=message.task_id)
            except IncompatibleUpdate:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. a batch the middle's layers cannot take
                raise IncompatibleUpdate(f"the middle could not compute it ({type(exc).__name__}: "
                                         f"{str(exc)[:200]})") from None
            fed.transport.count(up=len(message.tensor), down=len(answer))
            return pb.SplitTensor(tensor=answer).SerializeToString()

    @staticmethod
    def _refused(fed: Federation, site: SiteId, context: grpc.ServicerContext, reason: str,
                 code: grpc.StatusCode) -> None:
        fed.audit.record("site_refused", site=site, peer=context.peer(), reason=reason)
        context.abort(code, reason)

    def _paced(self, site: SiteId) -> bool:
        with self._pace_lock:
            bucket = self._pace.setdefault(site, Bucket(self.limits.messages_per_second,
                                                        self.limits.message_burst))
            return bucket.take()

    def _caller(self, fed: Federation, context: grpc.ServicerContext) -> SiteId:
        """The caller's site: its certificate's name (without TLS, the name it gives)."""
        names = context.auth_context().get("x509_common_name") or []
        if names:
            site = names[0].decode(errors="replace")
        else:
            headers = dict(context.invocation_metadata() or ())
            site = str(headers.get(SITE_HEADER, "")) if self.insecure else ""
        if site not in fed.sites:
            reason = (f"'{site[:64]}' is not a site of this federation" if site
                      else "no client certificate")
            fed.audit.record("auth_failed", peer=context.peer(), reason=reason)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
        return SiteId(site)
