"""`ultraplane partitions` with the built-in map and a router, as real processes: where keys land,
independent revision spaces, the router (etcdctl and the python etcd3 client), refusals of
cross-partition requests, and a partition killed with SIGKILL while the others keep serving."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from harness import child_env, ultraplane_command

from ultraplane.etcd.proto import rpc_pb2

HERE = Path(__file__).resolve().parent


@dataclass
class Running:
    proc: subprocess.Popen[str]
    data_dir: Path
    stdout_path: Path
    stderr_path: Path

    def state(self) -> dict[str, Any]:
        return json.loads((self.data_dir / "partitions.json").read_text())

    def endpoint(self, name: str) -> str:
        for part in self.state()["partitions"]:
            if part["name"] == name:
                return part["endpoint"].removeprefix("http://")
        raise KeyError(name)

    @property
    def router(self) -> str:
        return self.state()["router"].removeprefix("http://")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_partitions(tmp: Path, *extra: str) -> Running:
    data_dir = tmp / "data"
    out, err = tmp / "stdout", tmp / "stderr"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(
            [*ultraplane_command(), "partitions", "--data-dir", str(data_dir), "--base-port", "0", *extra],
            stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, text=True, env=child_env(),
        )
    running = Running(proc, data_dir, out, err)
    deadline = time.monotonic() + 90
    while not (data_dir / "partitions.json").exists() or "--etcd-servers=" not in out.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            running.stop()
            raise RuntimeError(f"ultraplane partitions did not start: {err.read_text()}")
        time.sleep(0.05)
    return running


def etcdctl(endpoint: str, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = child_env({"ETCDCTL_API": "3"})
    proc = subprocess.run(["etcdctl", f"--endpoints={endpoint}", "--command-timeout=15s", *args],
                          capture_output=True, text=True, env=env, timeout=60, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"etcdctl {' '.join(args)} failed: {proc.stderr}")
    return proc


def get_json(endpoint: str, key: str) -> dict[str, Any]:
    return json.loads(etcdctl(endpoint, "get", key, "-w", "json").stdout)


def value_of(endpoint: str, key: str) -> str | None:
    lines = etcdctl(endpoint, "get", key, "--print-value-only").stdout.splitlines()
    return lines[0] if lines else None


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = start_partitions(tmp_path_factory.mktemp("partitions"), "--router-port", "0")
    try:
        yield running
    finally:
        running.stop()


def test_prints_endpoints_and_kube_apiserver_flags(parts: Running) -> None:
    state = parts.state()
    names = [p["name"] for p in state["partitions"]]
    assert names == ["default", "events", "leases", "pods"]
    url = {p["name"]: p["endpoint"] for p in state["partitions"]}
    assert len(set(url.values())) == 4
    assert state["etcd_servers"] == url["default"]
    assert state["etcd_servers_overrides"] == (
        f"/events#{url['events']},coordination.k8s.io/leases#{url['leases']},/pods#{url['pods']}"
    )
    out = parts.stdout_path.read_text()
    assert f"--etcd-servers={url['default']}\n" in out
    assert f"--etcd-servers-overrides={state['etcd_servers_overrides']}\n" in out
    for name in names:
        assert name in out and url[name] in out
    pids = {p["pid"] for p in state["partitions"]}
    assert len(pids) == 4 and all(isinstance(pid, int) for pid in pids)
    for part in state["partitions"]:
        assert Path(part["data_dir"]) == parts.data_dir / part["name"]


def test_keys_land_on_their_partition_and_revisions_are_independent(parts: Running) -> None:
    keys = {"default": "/registry/configmaps/ns/c1", "events": "/registry/events/ns/e1",
            "leases": "/registry/leases/kube-node-lease/n1", "pods": "/registry/pods/ns/p1"}
    for name, key in keys.items():
        etcdctl(parts.router, "put", key, f"v-{name}")
    for _ in range(5):
        etcdctl(parts.router, "put", keys["pods"], "again")  # only the pods partition's revision moves
    for name, key in keys.items():
        for other in keys:
            found = get_json(parts.endpoint(other), key).get("kvs", [])
            assert bool(found) == (other == name), (key, other)
    revisions = {name: get_json(parts.endpoint(name), key)["header"]["revision"] for name, key in keys.items()}
    assert revisions["pods"] >= revisions["events"] + 5
    # the router answers with the owning partition's header revision
    assert get_json(parts.router, keys["pods"])["header"]["revision"] == revisions["pods"]
    assert get_json(parts.router, keys["events"])["header"]["revision"] == revisions["events"]
    # and the partition's own mod_revision
    pods_kv = get_json(parts.router, keys["pods"])["kvs"][0]
    assert pods_kv["version"] == 6
    assert pods_kv == get_json(parts.endpoint("pods"), keys["pods"])["kvs"][0]


def test_router_kv_txn_and_refusals_with_etcdctl(parts: Running) -> None:
    r = parts.router
    etcdctl(r, "put", "/registry/pods/ns/a", "1")
    etcdctl(r, "put", "/registry/pods/ns/b", "2")
    listed = etcdctl(r, "get", "--prefix", "/registry/pods/ns/", "--keys-only").stdout.split()
    assert listed == ["/registry/pods/ns/a", "/registry/pods/ns/b", "/registry/pods/ns/p1"]
    assert etcdctl(r, "del", "/registry/pods/ns/b").stdout.strip() == "1"
    assert value_of(r, "/registry/pods/ns/b") is None
    txn = etcdctl(r, "txn", input='value("/registry/pods/ns/a") = "1"\n\nput /registry/pods/ns/a 10\n\n\n')
    assert txn.stdout.splitlines()[0] == "SUCCESS"
    assert value_of(parts.endpoint("pods"), "/registry/pods/ns/a") == "10"

    spanning = etcdctl(r, "get", "--prefix", "/registry/", check=False)
    assert spanning.returncode != 0
    assert "code = InvalidArgument" in spanning.stderr
    assert "spans partitions default, events, leases, pods" in spanning.stderr
    cross_txn = etcdctl(r, "txn", check=False,
                        input='value("/registry/pods/ns/a") = "10"\n\nput /registry/events/ns/x 1\n\n\n')
    assert cross_txn.returncode != 0
    assert "code = InvalidArgument" in cross_txn.stderr
    assert "txn spans partitions events, pods" in cross_txn.stderr
    assert value_of(parts.endpoint("events"), "/registry/events/ns/x") is None  # nothing applied
    cross_del = etcdctl(r, "del", "/registry/leases/", "/registry/pods/zz", check=False)
    assert "spans partitions default, leases, pods" in cross_del.stderr
    compact = etcdctl(r, "compaction", "1", check=False)
    assert compact.returncode != 0 and "compaction is per partition" in compact.stderr

    members = etcdctl(r, "member", "list").stdout
    assert "ultraplane-router" in members and f"http://{r}" in members
    assert etcdctl(r, "endpoint", "status").returncode == 0


def test_router_forwards_large_requests_and_responses(parts: Running, tmp_path: Path) -> None:
    """Requests beyond a 64 KiB flow-control window, and a response beyond the router's 16 MiB one."""
    value = "v" * 1_400_000
    for i in range(13):
        etcdctl(parts.router, "put", f"/registry/pods/big/{i:02d}", input=value)
    listed = etcdctl(parts.router, "get", "--prefix", "/registry/pods/big/", "-w", "json").stdout
    kvs = json.loads(listed)["kvs"]
    assert len(kvs) == 13
    assert len(listed) > 16 << 20
    assert all(len(base64.b64decode(kv["value"])) == 1_400_000 for kv in kvs)
    etcdctl(parts.router, "del", "--prefix", "/registry/pods/big/")


def test_router_watch_spanning_is_canceled_with_a_reason(parts: Running) -> None:
    proc = etcdctl(parts.router, "watch", "--prefix", "/registry/", check=False)
    assert proc.returncode != 0
    assert "spans partitions default, events, leases, pods" in proc.stdout + proc.stderr


def test_router_with_the_etcd3_client(parts: Running) -> None:
    env = child_env({"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"})
    proc = subprocess.run([sys.executable, str(HERE / "etcd3_router_scenario.py"), parts.router],
                          capture_output=True, text=True, env=env, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stderr
    result = json.loads(lines[-1])
    assert result["watch_events"] == [
        ["events", "PutEvent", "/registry/events/e3/ev1"],
        ["pods", "DeleteEvent", "/registry/pods/e3/p1"],
        ["pods", "PutEvent", "/registry/pods/e3/p1"],
    ]
    assert result["lease_keys"] == ["/e3/leased", "/registry/pods/e3/leased"]
    assert result["refresh_ttl"] == 120
    assert result["remaining_positive"] is True
    assert result["after_revoke"] == [None, None]
    assert result["txn_ok"] is True and result["txn_value"] == "new"
    assert result["cross_txn"][0] == "INVALID_ARGUMENT"
    assert "txn spans partitions events, pods" in result["cross_txn"][1]
    assert result["cross_txn_applied"] is False


def test_router_leases_live_on_every_partition(parts: Running) -> None:
    r = parts.router
    lease = etcdctl(r, "lease", "grant", "300").stdout.split()[1]
    for name in ("default", "events", "leases", "pods"):
        ttl = etcdctl(parts.endpoint(name), "lease", "timetolive", lease).stdout
        assert "granted with TTL(300s)" in ttl, (name, ttl)
    etcdctl(r, "put", f"--lease={lease}", "/registry/leases/ns/holder", "x")
    etcdctl(r, "put", f"--lease={lease}", "/registry/events/ns/ev", "y")
    keys = etcdctl(r, "lease", "timetolive", "--keys", lease).stdout
    assert "attached keys([/registry/events/ns/ev /registry/leases/ns/holder])" in keys
    assert f"lease {lease} keepalived with TTL(300)" in etcdctl(r, "lease", "keep-alive", "--once", lease).stdout
    etcdctl(r, "lease", "revoke", lease)
    assert value_of(parts.endpoint("leases"), "/registry/leases/ns/holder") is None
    assert value_of(parts.endpoint("events"), "/registry/events/ns/ev") is None
    again = etcdctl(r, "lease", "revoke", lease, check=False)
    assert "requested lease not found" in again.stderr


class WatchStream:
    """One raw etcd Watch stream to the router: requests in, responses collected by a thread."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(endpoint)
        self.requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()
        self.responses: queue.Queue[rpc_pb2.WatchResponse] = queue.Queue()
        call = self.channel.stream_stream(
            "/etcdserverpb.Watch/Watch", request_serializer=rpc_pb2.WatchRequest.SerializeToString,
            response_deserializer=rpc_pb2.WatchResponse.FromString,
        )
        self.call = call(iter(self.requests.get, None))
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()

    def _collect(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for resp in self.call:
                self.responses.put(resp)

    def create(self, prefix: bytes) -> int:
        req = rpc_pb2.WatchRequest()
        req.create_request.key = prefix
        req.create_request.range_end = prefix[:-1] + bytes((prefix[-1] + 1,))
        self.requests.put(req)
        resp = self.next(lambda r: r.created)
        assert not resp.canceled, resp
        return resp.watch_id

    def next(self, match: Any, timeout: float = 30) -> rpc_pb2.WatchResponse:
        deadline = time.monotonic() + timeout
        while True:
            resp = self.responses.get(timeout=max(0.01, deadline - time.monotonic()))
            if match(resp):
                return resp

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()
        self.channel.close()


def test_killed_partition_does_not_block_the_others_and_recovers(parts: Running) -> None:
    r = parts.router
    etcdctl(r, "put", "/registry/pods/ns/survivor", "kept")
    # one watch stream with a watcher on pods and one on events
    stream = WatchStream(r)
    try:
        pods_watch = stream.create(b"/registry/pods/ns/")
        events_watch = stream.create(b"/registry/events/ns/")
        assert pods_watch != events_watch

        before = {p["name"]: p["pid"] for p in parts.state()["partitions"]}
        os.kill(before["pods"], signal.SIGKILL)
        # the pods watcher is canceled with the reason; the events watcher on the same stream goes on
        canceled = stream.next(lambda resp: resp.canceled)
        assert canceled.watch_id == pods_watch
        assert "ultraplane router: partition pods watch stream failed" in canceled.cancel_reason
        etcdctl(r, "put", "/registry/events/ns/w1", "after-kill")
        event = stream.next(lambda resp: len(resp.events) > 0)
        assert event.watch_id == events_watch
        assert [(e.kv.key, e.kv.value) for e in event.events] == [(b"/registry/events/ns/w1", b"after-kill")]
    finally:
        stream.close()
    # the others keep serving reads and writes, through the router and directly
    for key in ("/registry/events/ns/during", "/registry/leases/ns/during", "/registry/configmaps/ns/during"):
        etcdctl(r, "put", key, "ok")
        assert value_of(r, key) == "ok"
    assert value_of(parts.endpoint("default"), "/registry/configmaps/ns/during") == "ok"
    # the supervisor restarts pods on the same port and directory; it comes back with its data
    deadline = time.monotonic() + 60
    while True:
        state = {p["name"]: p["pid"] for p in parts.state()["partitions"]}
        if state["pods"] != before["pods"]:
            got = etcdctl(r, "get", "/registry/pods/ns/survivor", "--print-value-only", check=False)
            if got.returncode == 0 and got.stdout.strip() == "kept":
                break
        assert time.monotonic() < deadline, parts.stderr_path.read_text()
        time.sleep(0.2)
    assert {k: v for k, v in state.items() if k != "pods"} == {k: v for k, v in before.items() if k != "pods"}
    assert value_of(parts.endpoint("pods"), "/registry/pods/ns/survivor") == "kept"
    assert "partition pods" in parts.stderr_path.read_text() and "restarting" in parts.stderr_path.read_text()
    etcdctl(r, "put", "/registry/pods/ns/after", "ok")


def test_map_file_and_clean_stop(tmp_path: Path) -> None:
    pmap = tmp_path / "map.json"
    pmap.write_text(json.dumps({"partitions": {
        "main": {"default": True},
        "hot": {"prefixes": ["/registry/events/"], "resources": ["/events"], "unsafe_no_fsync": True},
    }}))
    running = start_partitions(tmp_path, "--map", str(pmap))
    try:
        state = running.state()
        assert [p["name"] for p in state["partitions"]] == ["main", "hot"]
        assert state["router"] is None
        assert state["etcd_servers_overrides"] == f"/events#{state['partitions'][1]['endpoint']}"
        etcdctl(running.endpoint("hot"), "put", "/registry/events/x", "1")
        pids = [p["pid"] for p in state["partitions"]]
        cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in pids]
        assert b"--unsafe-no-fsync" not in cmdlines[0]  # the map asks for it on "hot" only
        assert b"--unsafe-no-fsync" in cmdlines[1]
        assert cmdlines[1][cmdlines[1].index(b"--data-dir") + 1] == str(running.data_dir / "hot").encode()
    finally:
        status = running.stop()
    assert status == 0, running.stderr_path.read_text()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (running.data_dir / "partitions.json").exists()
    assert "all partitions stopped" in running.stderr_path.read_text()
