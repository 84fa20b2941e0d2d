"""A local 3-node NATS JetStream cluster on loopback, one node per "availability zone".

Used by the NATS journal's tests and (later) an ``ultraplane nats-cluster`` command. Each node
gets its own config file, JetStream store directory and log under ``base_dir/node<i>``::

    server_name: ultraplane-az<i>       listen: 127.0.0.1:<client port>
    http: 127.0.0.1:<monitor port>       server_tags: ["az:az<i>"]
    jetstream { store_dir: ... }         cluster { name, listen, routes to the other two }

``NatsCluster.start()`` spawns ``nats-server -c FILE`` for every node and waits until each
running node's monitoring endpoint ``/jsz`` reports the same JetStream meta leader.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["NatsCluster", "NatsNode", "ensure_stream", "free_port"]

CLUSTER_NAME = "ultraplane"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class NatsNode:
    index: int
    name: str
    client_port: int
    cluster_port: int
    http_port: int
    directory: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def config_path(self) -> str:
        return os.path.join(self.directory, "nats.conf")

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "nats.log")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class NatsCluster:
    """Three (or ``size``) nats-server processes forming one JetStream cluster on 127.0.0.1."""

    def __init__(self, base_dir: str, *, size: int = 3, binary: str = "nats-server",
                 max_file_store: str = "1G", max_memory_store: str = "64M",
                 client_ports: Sequence[int] | None = None) -> None:
        """``client_ports``: fixed client ports, one per node (their number sets the size);
        default: free ports picked now (route and monitoring ports are always picked)."""
        if client_ports is not None:
            size = len(client_ports)
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        found = shutil.which(binary)
        if found is None:
            raise FileNotFoundError(f"{binary} not found on PATH")
        self.binary = found
        self.base_dir = os.path.abspath(base_dir)
        self.max_file_store = max_file_store
        self.max_memory_store = max_memory_store
        self.nodes = [
            NatsNode(i, f"ultraplane-az{i + 1}", client_ports[i] if client_ports else free_port(),
                     free_port(), free_port(), os.path.join(self.base_dir, f"node{i + 1}"))
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        """Client URLs of every node (running or not), for a client's server list."""
        return [node.url for node in self.nodes]

    def _config(self, node: NatsNode) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{other.cluster_port}"
                           for other in self.nodes if other is not node)
        store = json.dumps(os.path.join(node.directory, "jetstream"))
        lines = [
            f"server_name: {node.name}",
            f"listen: 127.0.0.1:{node.client_port}",
            f"http: 127.0.0.1:{node.http_port}",
            f'server_tags: ["az:az{node.index + 1}"]',
            "jetstream {",
            f"  store_dir: {store}",
            f"  max_file_store: {self.max_file_store}",
            f"  max_memory_store: {self.max_memory_store}",
            "}",
        ]
        if len(self.nodes) > 1:
            lines += [
                "cluster {",
                f"  name: {CLUSTER_NAME}",
                f"  listen: 127.0.0.1:{node.cluster_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    # ----------------------------------------------------------------------- lifecycle

    def start(self, i: int | None = None, *, timeout: float = 30.0) -> None:
        """Start node i (restart after kill/stop), or with no index every node; then wait until
        the running nodes agree on a JetStream meta leader."""
        if i is not None:
            self.start_node(i, wait=True, timeout=timeout)
            return
        try:
            for node in self.nodes:
                self.start_node(node.index, wait=False)
            self.wait_ready(timeout)
        except BaseException:
            self.close()
            raise

    def start_node(self, i: int, *, wait: bool = True, timeout: float = 30.0) -> None:
        node = self.nodes[i]
        if node.running:
            return
        os.makedirs(node.directory, exist_ok=True)
        with open(node.config_path, "w") as f:
            f.write(self._config(node))
        with open(node.log_path, "ab") as log:
            node.process = subprocess.Popen(
                [self.binary, "-c", node.config_path], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if wait:
            self.wait_ready(timeout)

    def kill(self, i: int) -> None:
        """SIGKILL node i (a crash) and reap it."""
        self._signal(i, signal.SIGKILL)

    def stop(self, i: int, timeout: float = 10.0) -> None:
        """Stop node i gracefully (SIGTERM), SIGKILL if it does not exit within timeout."""
        self._signal(i, signal.SIGTERM, timeout)

    def _signal(self, i: int, sig: int, timeout: float = 10.0) -> None:
        node = self.nodes[i]
        proc = node.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        node.process = None

    def close(self) -> None:
        for node in self.nodes:
            self.stop(node.index)

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------- status

    def jsz(self, i: int) -> dict | None:
        """Node i's /jsz monitoring document, or None if it does not answer."""
        url = f"http://127.0.0.1:{self.nodes[i].http_port}/jsz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return json.loads(resp.read())
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def meta_leader(self) -> str | None:
        """The meta leader every running node agrees on, or None."""
        leaders = set()
        running = [n for n in self.nodes if n.running]
        if not running:
            return None
        for node in running:
            doc = self.jsz(node.index)
            meta = (doc or {}).get("meta_cluster") or {}
            if len(self.nodes) == 1 and doc is not None and doc.get("config"):
                leaders.add(node.name)  # a single server has no meta group
                continue
            leader = meta.get("leader")
            if not leader:
                return None
            leaders.add(leader)
        return leaders.pop() if len(leaders) == 1 else None

    def wait_ready(self, timeout: float = 30.0) -> str:
        """Wait until every running node answers and agrees on a JetStream meta leader."""
        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(f"nats-server {node.name} exited with {node.process.returncode}; "
                                       f"see {node.log_path}")
            leader = self.meta_leader()
            if leader is not None:
                return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"NATS cluster in {self.base_dir} has no JetStream meta leader "
                                   f"after {timeout} s")
            time.sleep(0.1)


async def ensure_stream(nc_urls: Sequence[str], name: str, replicas: int = 3,
                        subjects: Sequence[str] | None = None, *, timeout: float = 30.0) -> None:
    """Create the file-backed stream ``name`` (subjects default ``<name>.>``) if it does not exist.

    Retries while the cluster is still electing leaders (no responders, timeouts, 503s)."""
    import asyncio

    import nats
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    subjects = list(subjects) if subjects else [f"{name}.>"]
    nc = await nats.connect(servers=list(nc_urls), connect_timeout=2, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.2)
    try:
        js = nc.jetstream(timeout=5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                try:
                    await js.stream_info(name)
                    return
                except NotFoundError:
                    pass
                await js.add_stream(StreamConfig(name=name, subjects=subjects, num_replicas=replicas,
                                                 storage=StorageType.FILE, allow_direct=True,
                                                 duplicate_window=120.0))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
