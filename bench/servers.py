"""Start etcd 3.4 and ultraplane side by side on free loopback ports, for benchmarks."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ETCDLOAD_DEFAULT = shutil.which("etcdload") or "/usr/local/bin/etcdload"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


@dataclass
class Server:
    kind: str  # "etcd" or "ultraplane"
    data_dir: Path
    extra: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        url = f"http://127.0.0.1:{self.port}"
        if self.kind == "etcd":
            peer = f"http://127.0.0.1:{free_port()}"
            return [
                "etcd",
                "--name",
                "bench",
                "--data-dir",
                str(self.data_dir),
                "--listen-client-urls",
                url,
                "--advertise-client-urls",
                url,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"bench={peer}",
                "--log-level",
                "error",
                *self.extra,
            ]
        return [
            sys.executable,
            "-m",
            "ultraplane",
            "store",
            "--name",
            "bench",
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            url,
            "--advertise-client-urls",
            url,
            "--log-level",
            "warn",
            *self.extra,
        ]

    def start(self) -> Server:
        self.port = self.port or free_port()
        self.start_again()
        wait_for_port(self.port, self.proc)
        return self

    def start_again(self) -> None:
        """Launch on the same data dir and port without waiting (restart timing starts here)."""
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        self.proc = subprocess.Popen(
            self.command(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def rss_bytes(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


@contextlib.contextmanager
def running(kind: str, extra: list[str] | None = None) -> Iterator[Server]:
    root = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    server = Server(kind, root / "data", extra or [])
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
