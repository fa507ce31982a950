"""Split learning's wire in a deployment, the site's side: each message of the seam
(transport/split_channel.py) is one unary call of the Split service (medfed.proto) on the channel
the site's session already holds (mutual TLS, no new port), naming the train task it serves. The
server's side, and why unary calls: deploy/split_service.py.
"""

from __future__ import annotations

import grpc

from medfed.errors import IncompatibleUpdate, TransportError
from medfed.transport.proto import medfed_pb2 as pb
from medfed.types import SiteId

SERVICE = "medfed.Split"
FORWARD, BACKWARD = "Forward", "Backward"
SITE_HEADER = "medfed-site"  # without TLS only (a test on one machine): the site names itself
CALL_SECONDS = 600.0  # one batch through the server's middle


class GrpcWire:
    """A site's wire to the server's middle (split_channel.Wire). connect() gives it the session's
    channel, and start_task() each train task's id before the site trains; `sent` counts the
    bytes of the task's tensors sent (the site's log reports them)."""

    def __init__(self, site: SiteId, names_itself: bool = False) -> None:
        """names_itself: no TLS, so the call carries the site's name (the server accepts it only
        when it runs without TLS itself)."""
        self.metadata = ((SITE_HEADER, site),) if names_itself else ()
        self.channel: grpc.Channel | None = None
        self.task_id = 0
        self.sent = 0

    def connect(self, channel: grpc.Channel) -> None:
        self.channel = channel

    def start_task(self, task_id: int) -> None:
        self.task_id, self.sent = task_id, 0

    def forward(self, site: SiteId, blob: bytes) -> bytes:
        return self._call(FORWARD, blob)

    def backward(self, site: SiteId, blob: bytes) -> bytes:
        return self._call(BACKWARD, blob)

    def _call(self, method: str, blob: bytes) -> bytes:
        if self.channel is None:
            raise TransportError("split learning: this site has no connection to the server")
        call = self.channel.unary_unary(f"/{SERVICE}/{method}",
                                        request_serializer=pb.SplitTensor.SerializeToString,
                                        response_deserializer=None)
        request = pb.SplitTensor(task_id=self.task_id, tensor=blob)
        self.sent += len(blob)
        try:
            raw = call(request, timeout=CALL_SECONDS, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise TransportError(f"split learning {method.lower()}: the server refused it "
                                 f"({exc.code().name}: {exc.details()})") from None
        return parse_split(raw).tensor


def parse_split(raw: bytes) -> pb.SplitTensor:
    """A SplitTensor from raw bytes; anything else is IncompatibleUpdate."""
    try:
        return pb.SplitTensor.FromString(raw)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, RuntimeError, ...
        raise IncompatibleUpdate(f"not a split-learning message ({type(exc).__name__})") from None
