"""The Split service's checks, call by call, without processes: who calls (the certificate's site,
or without TLS the site it names), for which task (the site's open train task only), with what
(a protocol message whose tensor the middle's end accepts); every refusal is audited or fails that
site's task, and a batch too large for one message is refused before the server listens.

Deliberate breaks that make these tests fail (each tried by hand): OpenTasks.holding admitting
any task id; the service taking the site from the call's metadata when it runs with TLS.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import replace
from types import SimpleNamespace

import grpc
import pytest
import torch

from medfed.config import RunConfig, TrainingConfig
from medfed.deploy.split_service import SplitService, check_split_messages
from medfed.errors import BadReply, ConfigError
from medfed.models import build_model
from medfed.models.registry import ModelSpec
from medfed.transport.admission import Limits
from medfed.transport.codec import encode_state
from medfed.transport.grpc_split import SITE_HEADER
from medfed.transport.open_tasks import OpenTasks
from medfed.transport.proto import medfed_pb2 as pb
from medfed.transport.site_channel import SiteChannel
from medfed.transport.split_channel import ACTIVATIONS, GRADIENT, MiddleEnd

FIRST, SECOND = (2,), (3,)


class Aborted(Exception):
    pass


class Context:
    """What the service reads of a gRPC call; abort raises as gRPC's does."""

    def __init__(self, name: str = "", metadata: tuple = ()) -> None:
        self.name, self.metadata = name, metadata
        self.code: grpc.StatusCode | None = None

    def auth_context(self) -> dict:
        return {"x509_common_name": [self.name.encode()]} if self.name else {}

    def invocation_metadata(self) -> tuple:
        return self.metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        raise Aborted(details)


class Middle:
    """A middle from two features to three."""

    def forward(self, site: str, activations: torch.Tensor) -> torch.Tensor:
        return activations.sum(dim=1, keepdim=True).repeat(1, 3)

    def backward(self, site: str, gradient: torch.Tensor) -> torch.Tensor:
        return torch.ones(gradient.shape[0], 2)


class Channel:
    """A site's session as OpenTasks sees it: fail() ends its train task."""

    def __init__(self) -> None:
        self.failed: dict[int, Exception] = {}

    def fail(self, task_id: int, exc: Exception) -> None:
        self.failed[task_id] = exc


def federation(insecure: bool = False):
    audit: list[tuple[str, dict]] = []
    transport = SimpleNamespace(open_tasks=OpenTasks(), up=0, down=0)
    transport.count = lambda up=0, down=0: setattr(transport, "up", transport.up + up) or setattr(
        transport, "down", transport.down + down)
    fed = SimpleNamespace(sites=["site-a", "site-b"], transport=transport,
                          middle=MiddleEnd(Middle(), (FIRST, SECOND), max_batch=4),
                          audit=SimpleNamespace(record=lambda event, **f: audit.append((event, f))))
    return SplitService(lambda: fed, insecure), fed, audit


def request(task_id: int, name: str = ACTIVATIONS, shape: tuple = (2, 2)) -> bytes:
    return pb.SplitTensor(task_id=task_id, tensor=encode_state({name: torch.ones(shape)})
                          ).SerializeToString()


def test_a_site_forwards_and_backwards_for_its_open_task_and_the_bytes_are_counted():
    service, fed, audit = federation()
    fed.transport.open_tasks.open("site-a", Channel(), 7)
    answer = pb.SplitTensor.FromString(service.forward(request(7), Context("site-a")))
    assert answer.tensor and fed.transport.up == len(pb.SplitTensor.FromString(request(7)).tensor)
    service.backward(request(7, GRADIENT, (2, 3)), Context("site-a"))
    assert fed.transport.down > 0 and not audit


@pytest.mark.parametrize("who, task, code, event", [
    (Context("site-b"), 7, grpc.StatusCode.FAILED_PRECONDITION, "site_refused"),  # no open task
    (Context("site-a"), 8, grpc.StatusCode.FAILED_PRECONDITION, "site_refused"),  # not its task
    (Context("site-c"), 7, grpc.StatusCode.PERMISSION_DENIED, "auth_failed"),  # not a site
    (Context("", ((SITE_HEADER, "site-a"),)), 7, grpc.StatusCode.PERMISSION_DENIED,
     "auth_failed"),  # a name in the metadata counts only without TLS
])
def test_a_call_out_of_turn_or_from_a_stranger_is_refused_and_audited(who, task, code, event):
    service, fed, audit = federation()
    channel = Channel()
    fed.transport.open_tasks.open("site-a", channel, 7)
    with pytest.raises(Aborted):
        service.forward(request(task), who)
    assert who.code is code and [e for e, _ in audit] == [event]
    assert not channel.failed and fed.transport.up == 0


def test_without_tls_the_site_named_in_the_call_is_the_caller():
    service, fed, _ = federation(insecure=True)
    fed.transport.open_tasks.open("site-a", Channel(), 7)
    assert service.forward(request(7), Context("", ((SITE_HEADER, "site-a"),)))


@pytest.mark.parametrize("step, body, fragment", [
    ("forward", b"\xff\xff not protobuf", "not a split-learning message"),
    ("forward", request(7, shape=(2, 5)), "activations: shape (2, 5)"),
    ("forward", request(7, shape=(5, 2)), "1 <= B <= 4"),  # a batch above the plan's
    ("forward", request(7, name="labels"), "must carry only 'activations'"),
    ("backward", request(7, GRADIENT, (2, 3)), "no forward pass in flight"),
])
def test_a_malformed_message_fails_the_sites_task_with_one_line(step, body, fragment):
    service, fed, audit = federation()
    channel = Channel()
    fed.transport.open_tasks.open("site-a", channel, 7)
    context = Context("site-a")
    with pytest.raises(Aborted, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        getattr(service, step)(body, context)
    assert context.code is grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(channel.failed[7], BadReply) and fragment in str(channel.failed[7])
    assert fed.transport.open_tasks.task_of("site-a") is None  # closed: nothing more from it
    assert not audit and fed.transport.up == 0


def test_a_backward_answers_only_a_forward_of_the_same_task():
    service, fed, _ = federation()
    fed.transport.open_tasks.open("site-a", Channel(), 7)
    service.forward(request(7), Context("site-a"))
    channel = Channel()
    fed.transport.open_tasks.open("site-a", channel, 8)  # the next round's task
    with pytest.raises(Aborted, match="no forward pass in flight"):
        service.backward(request(8, GRADIENT, (2, 3)), Context("site-a"))
    assert 8 in channel.failed


def test_a_site_calling_faster_than_the_sessions_pace_is_refused():
    service, fed, audit = federation()
    service.limits = Limits(messages_per_second=0.001, message_burst=1)
    fed.transport.open_tasks.open("site-a", Channel(), 7)
    service.forward(request(7), Context("site-a"))
    context = Context("site-a")
    with pytest.raises(Aborted):
        service.forward(request(7), context)
    assert context.code is grpc.StatusCode.RESOURCE_EXHAUSTED and audit[0][0] == "site_refused"


def test_a_batch_too_large_for_one_message_is_refused_before_the_server_listens():
    spec = ModelSpec(2, 1, 2, "batch", input_size=(64, 64))
    network = lambda: build_model("cnn", spec, 0)
    config = RunConfig()
    config = replace(config, training=replace(config.training, batch_size=4096))
    with pytest.raises(ConfigError, match="lower \\[training\\] batch_size or cut deeper"):
        check_split_messages(network, config, (1, 64, 64))
    check_split_messages(network, replace(config, training=TrainingConfig(batch_size=16)), (1, 64, 64))


def test_the_futures_of_a_failed_task_end_with_the_reason():
    """OpenTasks.fail goes through the session's own fail (site_channel.SiteChannel)."""
    channel = SiteChannel("site-a", "peer", {})
    future: Future = channel.send(pb.Task(task_id=3, kind="train"), b"", limit=10)
    tasks = OpenTasks()
    tasks.open("site-a", channel, 3)
    tasks.fail("site-a", "split learning forward: bad")
    with pytest.raises(BadReply, match="bad"):
        future.result(timeout=1)
