"""The partition map: parsing, validation errors, key and range ownership, kube-apiserver flags."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from harness import child_env, ultraplane_command

from ultraplane.partition.map import (
    DEFAULT_MAP,
    PartitionMapError,
    etcd_servers_overrides,
    load_map,
    parse_map,
    prefix_end,
)


def _names(parts: list) -> list[str]:
    return [p.name for p in parts]


def test_default_map_is_the_kube_apiserver_layout() -> None:
    assert DEFAULT_MAP.names == ["default", "events", "leases", "pods"]
    assert DEFAULT_MAP["events"].prefixes == (b"/registry/events/",)
    assert DEFAULT_MAP["leases"].prefixes == (b"/registry/leases/",)
    assert DEFAULT_MAP["pods"].prefixes == (b"/registry/pods/",)
    assert DEFAULT_MAP.default.name == "default"
    assert DEFAULT_MAP.owner(b"/registry/pods/ns/p").name == "pods"
    assert DEFAULT_MAP.owner(b"/registry/leases/kube-node-lease/n1").name == "leases"
    assert DEFAULT_MAP.owner(b"/registry/events/ns/e").name == "events"
    assert DEFAULT_MAP.owner(b"/registry/podtemplates/ns/t").name == "default"
    assert DEFAULT_MAP.owner(b"/registry/pods").name == "default"  # the prefix includes the slash
    assert DEFAULT_MAP.owner(b"").name == "default"


def test_range_ownership() -> None:
    owners = DEFAULT_MAP.owners
    pods = b"/registry/pods/"
    assert _names(owners(pods, prefix_end(pods))) == ["pods"]
    assert _names(owners(b"/registry/pods/a", b"/registry/pods/b")) == ["pods"]
    assert _names(owners(b"/registry/", prefix_end(b"/registry/"))) == ["default", "events", "leases", "pods"]
    # between the leases and pods prefixes lie default's keys
    assert _names(owners(b"/registry/leases/", b"/registry/pods/")) == ["default", "leases"]
    assert _names(owners(b"/registry/leases/", b"/registry/pods/x")) == ["default", "leases", "pods"]
    assert _names(owners(b"/registry/pods/x", b"\x00")) == ["default", "pods"]
    assert _names(owners(b"\x00", b"\x00")) == ["default", "events", "leases", "pods"]
    assert _names(owners(b"/a", b"/b")) == ["default"]
    assert _names(owners(b"/registry/pods/a", b"")) == ["pods"]
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\x00"


def test_overrides_use_kube_apiserver_syntax() -> None:
    endpoints = {"default": ["http://127.0.0.1:2379"], "events": ["http://127.0.0.1:2380", "http://127.0.0.1:2390"],
                 "leases": ["http://127.0.0.1:2381"], "pods": ["http://127.0.0.1:2382"]}
    assert etcd_servers_overrides(DEFAULT_MAP, endpoints) == (
        "/events#http://127.0.0.1:2380;http://127.0.0.1:2390,"
        "coordination.k8s.io/leases#http://127.0.0.1:2381,"
        "/pods#http://127.0.0.1:2382"
    )


def test_toml_and_json_files(tmp_path: Path) -> None:
    toml = tmp_path / "map.toml"
    toml.write_text(
        '[partitions.main]\ndefault = true\n\n'
        '[partitions.hot]\nprefixes = ["/registry/events/", "/registry/leases/"]\n'
        'resources = ["/events", "coordination.k8s.io/leases"]\nunsafe_no_fsync = true\n'
    )
    pmap = load_map(toml)
    assert pmap.names == ["main", "hot"]
    assert pmap["hot"].unsafe_no_fsync and not pmap["main"].unsafe_no_fsync
    assert pmap.owner(b"/registry/leases/x").name == "hot"
    as_json = tmp_path / "map.json"
    as_json.write_text(json.dumps({"partitions": {"hot": {"prefixes": ["/h/"]}, "rest": {"default": True}}}))
    assert load_map(as_json).names == ["rest", "hot"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"partitions": {"a": {"prefixes": ["/a/"]}}}, "no default partition"),
        ({"partitions": {"a": {"default": True}, "b": {"default": True}}}, "more than one default partition"),
        ({"partitions": {"d": {"default": True}, "a": {"prefixes": ["/x/"]}, "b": {"prefixes": ["/x/"]}}},
         "duplicate prefix '/x/' (already owned by partition 'a')"),
        ({"partitions": {"d": {"default": True}, "a": {"prefixes": ["/x/"]}, "b": {"prefixes": ["/x/y/"]}}},
         "prefix '/x/y/' overlaps prefix '/x/' of partition 'a'"),
        ({"partitions": {"d": {"default": True}, "a": {"prefixes": ["/x/", "/x"]}}},
         "prefix '/x' overlaps prefix '/x/'"),
        ({"partitions": {"d": {"default": True}, "Bad Name": {"prefixes": ["/x/"]}}}, "bad name"),
        ({"partitions": {"d": {"default": True}, "../x": {"prefixes": ["/x/"]}}}, "bad name"),
        ({"partitions": {"d": {"default": True}, "a": {}}}, "owns no prefixes"),
        ({"partitions": {"d": {"default": True, "prefixes": ["/a/"]}}}, "must not list prefixes"),
        ({"partitions": {"d": {"default": True}, "a": {"prefixes": [""]}}}, "empty prefix"),
        ({"partitions": {"d": {"default": True}, "a": {"prefixes": "/a/"}}}, "'prefixes' must be a list"),
        ({"partitions": {"d": {"default": True}, "a": {"prefixes": ["/a/"], "resources": ["events"]}}},
         "bad resource 'events'"),
        ({"partitions": {"d": {"default": True}, "a": {"prefixes": ["/a/"], "owner": "me"}}},
         "unknown key(s): owner"),
        ({"partitions": {}}, "non-empty table"),
        ({"partition": {}}, "unknown top-level key(s): partition"),
    ],
)
def test_validation_errors(doc: dict, message: str) -> None:
    with pytest.raises(PartitionMapError) as err:
        parse_map(doc, "m.toml")
    assert message in str(err.value)
    assert str(err.value).startswith("m.toml")


def test_cli_refuses_a_bad_map(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[partitions.a]\nprefixes = ["/a/"]\n')
    proc = subprocess.run([*ultraplane_command(), "partitions", "--data-dir", str(tmp_path / "d"),
                           "--map", str(bad)], capture_output=True, text=True, env=child_env(), timeout=60)
    assert proc.returncode == 2
    assert "no default partition" in proc.stderr
    assert not (tmp_path / "d").exists()  # nothing was started
    unparsable = tmp_path / "broken.toml"
    unparsable.write_text("[partitions\n")
    proc = subprocess.run([*ultraplane_command(), "partitions", "--map", str(unparsable)],
                          capture_output=True, text=True, env=child_env(), timeout=60)
    assert proc.returncode == 2
    assert "not valid TOML" in proc.stderr
