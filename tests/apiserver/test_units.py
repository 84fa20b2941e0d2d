"""Pure pieces of the API server: formatting kube's printers use, continue tokens, strict fields."""

from __future__ import annotations

import pytest

from ultraplane.apiserver import errors
from ultraplane.apiserver.registry import (
    decode_continue,
    encode_continue,
    unknown_fields,
)
from ultraplane.apiserver.resources import format_selector, human_duration, image_pull_policy
from ultraplane.apiserver.watchcache import resource_prefix_of


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (59, "59s"), (119, "119s"), (120, "2m"), (125, "2m5s"),
                                          (600, "10m"), (3 * 3600, "3h"), (3 * 3600 + 60, "3h1m"),
                                          (9 * 3600, "9h"), (50 * 3600, "2d2h"), (400 * 86400, "400d"),
                                          (3 * 365 * 86400, "3y"), (-5, "<invalid>")])
def test_human_duration_matches_kube(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def test_selector_formatting_and_image_pull_policy() -> None:
    assert format_selector({"matchLabels": {"b": "2", "a": "1"}}) == "a=1,b=2"
    assert format_selector({"matchExpressions": [{"key": "env", "operator": "In", "values": ["y", "x"]}]}) == \
        "env in (x,y)"
    assert format_selector(None) == "<none>"
    assert [image_pull_policy(i) for i in ("nginx", "nginx:latest", "nginx:1.27", "reg:5000/app",
                                           "app@sha256:ab")] == ["Always", "Always", "IfNotPresent", "Always",
                                                                 "IfNotPresent"]


def test_continue_token_round_trip_and_garbage() -> None:
    assert decode_continue(encode_continue(42, "ns/name\x00")) == (42, "ns/name\x00")
    with pytest.raises(errors.ApiError) as bad:
        decode_continue("garbage")
    assert bad.value.code == 400


def test_unknown_fields_follow_the_schema() -> None:
    schema = {"properties": {
        "spec": {"properties": {"containers": {"items": {"properties": {"name": {"type": "string"}}}}}},
        "metadata": {"properties": {"labels": {"additionalProperties": {"type": "string"}}}},
        "free": {"x-kubernetes-preserve-unknown-fields": True}}}
    obj = {"spec": {"containers": [{"name": "a", "bogus": 1}], "extra": 2}, "metadata": {"labels": {"k": "v"}},
           "free": {"anything": 1}, "top": 3}
    assert unknown_fields(obj, schema) == ["spec.containers[0].bogus", "spec.extra", "top"]


def test_watch_cache_indexes_by_first_key_segment() -> None:
    root = len(b"/registry/")
    assert resource_prefix_of(b"/registry/pods/ns/name", root) == b"/registry/pods/"
    assert resource_prefix_of(b"/registry/services/specs/ns/name", root) == b"/registry/services/"
    assert resource_prefix_of(b"/registry/services/specs/", root) == b"/registry/services/"


def _field(number: int, payload: bytes | int) -> bytes:
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_protobuf_envelope_decodes_to_json_shape() -> None:
    from ultraplane.apiserver import protobuf

    meta = _field(1, b"cfg") + _field(2, b"") + _field(7, 0) + _field(8, b"") + \
        _field(11, _field(1, b"app") + _field(2, b"web"))
    configmap = _field(1, meta) + _field(2, _field(1, b"k") + _field(2, b"v")) + \
        _field(3, _field(1, b"bin") + _field(2, b"\x00\x01"))
    envelope = protobuf.MAGIC + _field(1, _field(1, b"v1") + _field(2, b"ConfigMap")) + _field(2, configmap)
    assert protobuf.decode_object(envelope) == {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "labels": {"app": "web"}},
        "data": {"k": "v"}, "binaryData": {"bin": "AAE="}}
    unknown_kind = protobuf.MAGIC + _field(1, _field(1, b"v1") + _field(2, b"Widget"))
    with pytest.raises(protobuf.ProtobufError):
        protobuf.decode_object(unknown_kind)
