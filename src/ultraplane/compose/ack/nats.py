"""`nats.ultraplane.io/v1alpha1` Stream: a JetStream stream on a nats-server, through nats-py.

The stream's description records the owning object, so a second Stream naming the same stream is a
conflict (ACK.Terminal) unless annotated for adoption. Status carries the stream's state.
"""

from __future__ import annotations

import re
from typing import Any

import nats
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from ultraplane.compose.ack.runtime import (
    AckController,
    KindInfo,
    Recoverable,
    Terminal,
    adopts,
    owner_marker,
)

Obj = dict[str, Any]
STREAM_NAME = re.compile(r"^[^.*>\s/\\]{1,255}$")  # nats-server: no spaces, dots, wildcards or path separators
DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)?$")
SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def _seconds(text: str | int) -> float:
    match = DURATION.match(str(text))
    if not match:
        raise Terminal(f"InvalidParameter: maxAge {text!r} is not a duration like 90s, 1h or 7d")
    return int(match.group(1)) * SECONDS[match.group(2)]


class StreamManager:
    info = KindInfo("nats.ultraplane.io", "v1alpha1", "Stream", "streams", {
        "type": "object",
        "required": ["subjects"],
        "properties": {
            "name": {"type": "string"},
            "subjects": {"type": "array", "items": {"type": "string"}},
            "retention": {"type": "string", "enum": ["limits", "interest", "workqueue"], "default": "limits"},
            "storage": {"type": "string", "enum": ["file", "memory"], "default": "file"},
            "replicas": {"type": "integer", "minimum": 1, "maximum": 5, "default": 1},
            "maxAge": {"type": "string", "description": "e.g. 90s, 1h, 7d; 0 = unlimited"},
        },
    })

    def __init__(self, url: str) -> None:
        self.url = url

    def _name(self, obj: Obj) -> str:
        name = (obj.get("spec") or {}).get("name") or obj["metadata"]["name"]
        if not STREAM_NAME.match(name):
            raise Terminal(f"InvalidParameter: stream name {name!r} may not contain spaces, '.', '*', '>' "
                           "or path separators")
        return name

    def identity(self, obj: Obj) -> tuple[str, str]:
        return f"arn:ultraplane:nats:local:{self.url}:stream/{self._name(obj)}", self.url

    async def _connect(self) -> nats.NATS:
        try:
            return await nats.connect(self.url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0)
        except Exception as exc:
            raise Recoverable(f"NATS server {self.url} unreachable: {exc or type(exc).__name__}") from None

    async def sync(self, obj: Obj, controller: AckController) -> Obj:
        spec = obj.get("spec") or {}
        name = self._name(obj)
        config = StreamConfig(
            name=name, subjects=list(spec.get("subjects") or []), description=owner_marker(obj),
            retention=RetentionPolicy(spec.get("retention") or "limits"),
            storage=StorageType(spec.get("storage") or "file"), num_replicas=int(spec.get("replicas") or 1),
            max_age=_seconds(spec.get("maxAge") or 0))
        nc = await self._connect()
        try:
            js = nc.jetstream()
            try:
                current = await js.stream_info(name)
            except NotFoundError:
                current = None
            try:
                if current is None:
                    info = await js.add_stream(config)
                    await controller.event(obj, "Normal", "Created", f"stream {name} created")
                else:
                    description = current.config.description
                    if description != owner_marker(obj) and not adopts(obj):
                        owner = (description or "").split(" uid=")[0].removeprefix("ultraplane-ack ")
                        raise Terminal(f"stream {name!r} already exists, owned by {owner or 'nobody (not managed)'}"
                                       "; annotate with services.k8s.aws/adoption-policy: adopt to adopt it")
                    info = await js.update_stream(config)
            except nats.js.errors.BadRequestError as exc:  # the server's own validation message
                raise Terminal(f"InvalidParameter: {exc.description}") from None
            except nats.js.errors.ServiceUnavailableError as exc:
                raise Recoverable(f"JetStream unavailable: {exc.description}") from None
            state = info.state
            return {"streamName": name, "endpoint": {"url": self.url},
                    "state": {"messages": state.messages, "bytes": state.bytes, "firstSeq": state.first_seq,
                              "lastSeq": state.last_seq, "consumerCount": state.consumer_count}}
        finally:
            await nc.close()

    async def delete(self, obj: Obj, controller: AckController) -> None:
        name = self._name(obj)
        nc = await self._connect()
        try:
            js = nc.jetstream()
            try:
                current = await js.stream_info(name)
            except NotFoundError:
                return
            if current.config.description == owner_marker(obj):
                await js.delete_stream(name)
        finally:
            await nc.close()
