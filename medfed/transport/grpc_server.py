"""The server end of the gRPC protocol: sites dial in and each holds one Session stream open.

Identity is the common name of the site's certificate, read when the stream opens, before any
message (mutual TLS: gRPC has already checked the certificate's authority); only the federation's
sites are let in, within the limits of admission.py (pending streams, a hello within seconds, hello
and name sizes, connection rate, a paced reader). Messages arrive as raw bytes and are parsed
here, so bytes that are not protobuf are dropped and counted. Each connected site gets a
SiteChannel: an outbox of tasks the server sends, and the tasks it has not answered yet. A reader
thread per site puts the site's answers back together from chunks, within the size limit of each
task (replies.py checks each header), and resolves the task's future. A broken stream fails that
site's open tasks at once, so the round goes on without it.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from medfed.transport.admission import Admission, Limits
from medfed.transport.proto import medfed_pb2 as pb
from medfed.transport.site_channel import Reply, SiteChannel
from medfed.types import SiteId

__all__ = ["METHOD", "REPLACED", "SERVICE", "FederationServicer", "Reply", "SiteChannel",
           "SiteRegistry"]

SERVICE = "medfed.Federation"
METHOD = f"/{SERVICE}/Session"
REPLACED = "replaced by a newer connection of the same site"
Audit = Callable[..., None]  # audit(event, **fields): AuditLog.record, or a no-op


class SiteRegistry:
    """The connected sites, and a way to wait until enough of them are there."""

    def __init__(self, sites: list[SiteId], audit: Audit) -> None:
        self.sites = list(sites)
        self.audit = audit
        self._channels: dict[SiteId, SiteChannel] = {}
        self._changed = threading.Condition()
        self._task_ids = itertools.count(1)

    def next_task_id(self) -> int:
        return next(self._task_ids)

    def get(self, site: SiteId) -> SiteChannel | None:
        with self._changed:
            return self._channels.get(site)

    def connected(self) -> list[SiteId]:
        with self._changed:
            return [s for s in self.sites if s in self._channels]

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until count sites are connected and ready to train."""
        with self._changed:
            return self._changed.wait_for(
                lambda: sum(c.ready for c in self._channels.values()) >= count, timeout)

    def mark_ready(self, channel: SiteChannel) -> None:
        with self._changed:
            channel.ready = True
            self._changed.notify_all()

    def add(self, channel: SiteChannel) -> None:
        with self._changed:
            old = self._channels.get(channel.site)
            self._channels[channel.site] = channel
            self._changed.notify_all()
        if old is not None:  # the newest connection of a site wins; the older one is told why
            old.goodbye(REPLACED)
            old.close("reconnected: its earlier connection was closed")
        self.audit("site_connected", site=channel.site, peer=channel.peer)

    def remove(self, channel: SiteChannel, reason: str) -> None:
        with self._changed:
            if self._channels.get(channel.site) is channel:
                del self._channels[channel.site]
                self._changed.notify_all()
        if not channel.closed.is_set():
            channel.close(reason)
            self.audit("site_disconnected", site=channel.site, peer=channel.peer, reason=reason)

    def goodbye_all(self, reason: str) -> None:
        with self._changed:
            channels = list(self._channels.values())
        for channel in channels:
            channel.goodbye(reason)


class FederationServicer:
    """The Session RPC: identify by certificate, admit within limits, welcome, then stream tasks
    out and answers in (admission.py holds the limits)."""

    def __init__(self, registry: SiteRegistry, welcome: Callable[[SiteId], pb.Welcome],
                 insecure: bool = False,
                 on_hello: Callable[[SiteId, dict[str, Any]], None] | None = None,
                 admit: Callable[[SiteId, dict[str, Any]], str | None] | None = None,
                 limits: Limits | None = None) -> None:
        """welcome(site): what a site is told when it connects. admit(site, hello): why a site
        whose identity is fine is still refused (its data does not fit the task), or None."""
        self.registry = registry
        self.welcome = welcome
        self.insecure = insecure
        self.on_hello = on_hello or (lambda site, info: None)
        self.admit = admit or (lambda site, info: None)
        self.admission = Admission(limits or Limits())

    def handler(self) -> grpc.GenericRpcHandler:
        # Raw bytes in: a message that is not protobuf is this code's to refuse (gRPC's own
        # deserialization failure path leaks memory), and its size is known before it is parsed.
        method = grpc.stream_stream_rpc_method_handler(
            self.session, request_deserializer=None,
            response_serializer=pb.ServerMessage.SerializeToString)
        return grpc.method_handlers_generic_handler(SERVICE, {"Session": method})

    def session(self, requests: Iterator[bytes], context: grpc.ServicerContext
                ) -> Iterator[pb.ServerMessage]:
        peer = context.peer()
        site = self._certified(context, peer)  # before any message is read
        if site is None:
            return
        identity = site or "a site without TLS"
        refusal = self.admission.enter(identity, per_identity=bool(site))
        if refusal:
            self._refuse(context, peer, site, refusal, grpc.StatusCode.RESOURCE_EXHAUSTED)
            return
        try:
            info = self._hello(requests, context, peer)
        finally:
            self.admission.leave(identity)
        if info is None:
            return
        site = self._claimed(context, info, peer, site)
        if site is None:
            return
        refusal = self.admit(site, info)
        if refusal:
            self._refuse(context, peer, site, refusal, grpc.StatusCode.FAILED_PRECONDITION)
            return
        yield from self._serve(requests, context, SiteChannel(site, peer, info))

    def _serve(self, requests: Iterator[bytes], context: grpc.ServicerContext,
               channel: SiteChannel) -> Iterator[pb.ServerMessage]:
        self.on_hello(channel.site, channel.info)
        self.registry.add(channel)
        reader = threading.Thread(target=self._read, args=(requests, channel), daemon=True,
                                  name=f"medfed-read-{channel.site}")
        reader.start()
        context.add_callback(lambda: self.registry.remove(channel, "disconnected"))
        yield pb.ServerMessage(welcome=self.welcome(channel.site))
        yield from channel.outgoing()

    def _certified(self, context: grpc.ServicerContext, peer: str) -> SiteId | None:
        """The certificate's site ("" without TLS), or None when the stream was refused."""
        names = context.auth_context().get("x509_common_name") or []
        if not names and self.insecure:
            return SiteId("")
        site = names[0].decode(errors="replace") if names else ""
        reason = ("no client certificate" if not site
                  else f"'{site[:64]}' is not a site of this federation"
                  if site not in self.registry.sites else "")
        if reason:
            self.registry.audit("auth_failed", peer=peer, reason=reason)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
            return None
        return SiteId(site)

    def _hello(self, requests: Iterator[bytes], context: grpc.ServicerContext, peer: str
               ) -> dict[str, Any] | None:
        """The stream's first message, a hello, within the limits of time and size; or None."""
        timer = threading.Timer(self.admission.limits.first_message_seconds, context.cancel)
        timer.daemon = True
        timer.start()
        try:
            raw = next(requests)
        except (StopIteration, grpc.RpcError):
            return None
        finally:
            timer.cancel()
        try:
            message = _parse(raw)
            if message.WhichOneof("body") != "hello":
                raise ValueError("the first message is not a hello")
            return _info(message.hello, self.admission.limits)
        except ValueError as exc:
            self._refuse(context, peer, "", f"bad hello: {exc}", grpc.StatusCode.INVALID_ARGUMENT)
            return None

    def _claimed(self, context: grpc.ServicerContext, info: dict[str, Any], peer: str,
                 certified: SiteId) -> SiteId | None:
        claimed = str(info.get("site", ""))
        site = certified or claimed  # without TLS (a test on one machine) the hello names the site
        reason = (f"'{site[:64]}' is not a site of this federation"
                  if site not in self.registry.sites
                  else f"certificate of '{site}' used to claim '{claimed[:64]}'" if claimed != site
                  else "")
        if reason:
            self.registry.audit("auth_failed", peer=peer, reason=reason)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
            return None
        return SiteId(site)

    def _refuse(self, context: grpc.ServicerContext, peer: str, site: str, reason: str,
                code: grpc.StatusCode) -> None:
        self.registry.audit("site_refused", site=site or "unknown", peer=peer, reason=reason)
        context.abort(code, reason)

    def _read(self, requests: Iterator[bytes], channel: SiteChannel) -> None:
        reason, pace = "disconnected", self.admission.reader_pace()
        try:
            for raw in requests:
                pace.wait()
                message = _parse_or_none(raw)
                if message is None:
                    channel.malformed += 1  # counted, reported when the site disconnects
                elif message.WhichOneof("body") == "hello":  # again, once the site loaded its data
                    if not self._second_hello(message.hello, channel):
                        reason = "refused the plan"
                        break
                else:
                    channel.receive(message)
        except grpc.RpcError:
            reason = "connection lost"
        except Exception as exc:
            logging.getLogger(__name__).debug("stream of %s ended", channel.site, exc_info=True)
            reason = f"stream error: {type(exc).__name__}"
        if channel.malformed:
            reason += f" ({channel.malformed} messages that were not protocol messages dropped)"
        self.registry.remove(channel, reason)

    def _second_hello(self, hello: pb.Hello, channel: SiteChannel) -> bool:
        """A ready site's hello (sizes, label counts); False when its own policy refuses the plan."""
        try:
            info = _info(hello, self.admission.limits)
        except ValueError:
            channel.malformed += 1
            return True
        if str(info.get("site", channel.site)) != channel.site:
            channel.malformed += 1
            return True
        channel.info = info
        self.on_hello(channel.site, channel.info)
        if channel.info.get("refused"):  # the site's own policy refuses the plan
            self.registry.audit("site_refused", site=channel.site, peer=channel.peer,
                                by="the site", reason=str(channel.info["refused"])[:300])
            return False
        self.registry.mark_ready(channel)
        return True


def _parse(raw: bytes) -> pb.SiteMessage:
    try:
        return pb.SiteMessage.FromString(raw)
    except (DecodeError, RuntimeError) as exc:
        raise ValueError(f"not a protocol message ({type(exc).__name__})") from None


def _parse_or_none(raw: bytes) -> pb.SiteMessage | None:
    try:
        return _parse(raw)
    except ValueError:
        return None


def _info(hello: pb.Hello, limits: Limits) -> dict[str, Any]:
    """What a site says about itself: its name and, once loaded, its data's sizes (never data)."""
    if len(hello.info_json) > limits.hello_bytes:
        raise ValueError(f"a hello of {len(hello.info_json)} characters, over {limits.hello_bytes}")
    try:
        info = json.loads(hello.info_json or "{}")
    except RecursionError:
        raise ValueError("a hello nested too deeply") from None
    if not isinstance(info, dict):
        raise ValueError("hello is not a JSON object")
    name = info.get("site", "")
    if not isinstance(name, str) or len(name) > limits.name_chars:
        raise ValueError(f"a site name must be text of at most {limits.name_chars} characters")
    return info
