"""Replicated store members as real ``ultraplane store`` processes sharing one NATS journal."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from harness import child_env, free_port, ultraplane_command

from ultraplane.etcd.proto import rpc_pb2, rpc_pb2_grpc

START_TIMEOUT_S = 60.0


@dataclass
class Member:
    name: str
    data_dir: Path
    journal: str
    partition: str
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def command(self) -> list[str]:
        return [*ultraplane_command(), "store", "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--journal", self.journal, "--partition", self.partition, *self.extra]

    def start(self, wait: bool = True) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=child_env())
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"member {self.name} exited: {self.log_tail()}")
            try:
                with grpc.insecure_channel(self.endpoint) as ch:
                    rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=1)
                    return
            except grpc.RpcError:
                time.sleep(0.1)
        raise RuntimeError(f"member {self.name} not ready after {timeout} s: {self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def status(self, timeout: float = 5) -> rpc_pb2.StatusResponse:
        with grpc.insecure_channel(self.endpoint) as ch:
            return rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=timeout)


def make_members(base: Path, journal: str, partition: str, count: int = 3,
                 extra: list[str] | None = None) -> list[Member]:
    return [Member(f"{partition}-m{i + 1}", base / f"{partition}-m{i + 1}", journal, partition, list(extra or []))
            for i in range(count)]
