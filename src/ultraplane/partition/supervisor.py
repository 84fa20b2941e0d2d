"""Run one ``ultraplane store`` child process per partition and keep them running.

Each partition gets its own data directory (``DATA_DIR/<name>``, hence its own journal and revision
space), its own port and its own log file (``DATA_DIR/<name>.log``). A child that exits while the
supervisor is not stopping is reported and started again on the same directory and port (after a
short back-off that grows while it keeps failing), so it recovers its data from its journal. The
children run in their own sessions, so a terminal's Ctrl-C reaches only the supervisor, which then
stops them in order; if the supervisor itself dies, Linux sends each child SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ultraplane.partition.map import Partition, PartitionMap

__all__ = ["PartitionProcess", "Supervisor", "store_command"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def store_command() -> list[str]:
    """How to run ``ultraplane`` as a child: the venv's console script next to this Python, else -m."""
    script = Path(sys.executable).parent / "ultraplane"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "ultraplane"]


@dataclass
class PartitionProcess:
    partition: Partition
    host: str
    port: int
    data_dir: Path
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    started_at: float = 0.0  # time.monotonic() of the latest start

    @property
    def name(self) -> str:
        return self.partition.name

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def command(self, unsafe_no_fsync: bool) -> list[str]:
        cmd = [*store_command(), "store", "--name", self.name, "--data-dir", str(self.data_dir),
               "--listen-client-urls", self.url, "--advertise-client-urls", self.url, *self.extra_args]
        if unsafe_no_fsync or self.partition.unsafe_no_fsync:
            cmd.append("--unsafe-no-fsync")
        return cmd


Reporter = Callable[[str], None]


class Supervisor:
    def __init__(self, pmap: PartitionMap, data_dir: Path, host: str, ports: Sequence[int], *,
                 store_args: Sequence[str] = (), unsafe_no_fsync: bool = False,
                 report: Reporter = print, ready_timeout: float = 60.0) -> None:
        self.pmap = pmap
        self.data_dir = data_dir
        self.unsafe_no_fsync = unsafe_no_fsync
        self.report = report
        self.ready_timeout = ready_timeout
        self.children = [
            PartitionProcess(part, host, port, data_dir / part.name, data_dir / f"{part.name}.log",
                             list(store_args))
            for part, port in zip(pmap.partitions, ports, strict=True)
        ]
        self.stopping = False
        self.on_restart: Callable[[], None] | None = None  # e.g. rewrite a state file with the new pid
        self._watchers: list[asyncio.Task[None]] = []

    def __getitem__(self, name: str) -> PartitionProcess:
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(name)

    async def start(self) -> None:
        """Start every partition and wait until each accepts connections."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for child in self.children:
            await self._spawn(child)
        try:
            await asyncio.gather(*(self._wait_ready(child) for child in self.children))
        except BaseException:
            await self.stop()
            raise
        self._watchers = [asyncio.create_task(self._supervise(child)) for child in self.children]

    async def _spawn(self, child: PartitionProcess) -> None:
        child.data_dir.mkdir(parents=True, exist_ok=True)
        with open(child.log_path, "ab") as log:
            child.process = await asyncio.create_subprocess_exec(
                *child.command(self.unsafe_no_fsync), stdin=asyncio.subprocess.DEVNULL, stdout=log,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
                env=_child_env(),
            )
        child.starts += 1
        child.started_at = time.monotonic()

    async def _wait_ready(self, child: PartitionProcess) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            proc = child.process
            if proc is None or proc.returncode is not None:
                raise RuntimeError(f"partition {child.name} exited with status "
                                   f"{proc.returncode if proc else '?'} while starting; see {child.log_path}")
            if await asyncio.to_thread(_port_open, child.host, child.port):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"partition {child.name} did not listen on {child.url} within "
                                   f"{self.ready_timeout:.0f} s; see {child.log_path}")
            await asyncio.sleep(0.05)

    async def _supervise(self, child: PartitionProcess) -> None:
        backoff = 0.2
        while not self.stopping:
            proc = child.process
            assert proc is not None
            status = await proc.wait()
            if self.stopping:
                return
            if time.monotonic() - child.started_at > 10:
                backoff = 0.2  # it ran a while: not a crash loop
            self.report(f"partition {child.name} (pid {proc.pid}) exited with status {status}; "
                        f"restarting in {backoff:.1f} s (log: {child.log_path})")
            await asyncio.sleep(backoff)
            if self.stopping:
                return
            await self._spawn(child)
            try:
                await self._wait_ready(child)
            except (RuntimeError, TimeoutError) as exc:
                self.report(str(exc))
                backoff = min(backoff * 2, 5.0)
                continue
            self.report(f"partition {child.name} restarted (pid {child.pid}) on {child.url}")
            if self.on_restart is not None:
                self.on_restart()
            backoff = min(backoff * 2, 5.0)

    async def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every child, SIGKILL those still running after ``grace`` seconds."""
        self.stopping = True
        for task in self._watchers:
            task.cancel()
        running = [c.process for c in self.children if c.process is not None and c.process.returncode is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if running:
            _done, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in running], timeout=grace)
            for proc in running:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for task in self._watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _child_env() -> dict[str, str]:
    # a client library's pure-Python protobuf switch would make the store many times slower
    env = dict(os.environ)
    env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
    return env


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])

