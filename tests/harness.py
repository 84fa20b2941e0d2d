"""Servers and output normalization for the differential (etcd vs ultraplane) tests.

A ``Server`` is one running store process (real etcd, or ``ultraplane store``) on free loopback
ports with its own data directory. ``ServerPair`` holds one of each so a test can run the same
steps on both and compare what etcdctl (or a client) printed, after ``Normalizer`` has removed
what legitimately differs between two clusters (cluster/member ids, raft terms, random lease ids,
ports).

Environment knobs:
  ULTRAPLANE_DIFF_TARGET=etcd   run real etcd on the "ultraplane" side as well (harness development:
                                proves the comparisons are correct when both sides are the same)
  ULTRAPLANE_CMD="..."          command that starts the store (default: the venv's ``ultraplane``
                                console script, else ``python -m ultraplane``); ``store`` and flags
                                are appended
  ULTRAPLANE_EXTRA_FLAGS="..."  extra flags for the ultraplane side only (e.g. --unsafe-no-fsync)
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
ETCD_BIN = os.environ.get("ETCD_BIN", "etcd")
ETCDCTL_BIN = os.environ.get("ETCDCTL_BIN", "etcdctl")
DIFF_TARGET = os.environ.get("ULTRAPLANE_DIFF_TARGET", "ultraplane")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 60.0


class ServerStartError(RuntimeError):
    """The store process exited or never answered during startup."""


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ultraplane_command() -> list[str]:
    """How to start ultraplane: explicit override, the venv console script, or ``-m``."""
    override = os.environ.get("ULTRAPLANE_CMD")
    if override:
        return shlex.split(override)
    script = Path(sys.executable).parent / "ultraplane"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "ultraplane"]


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll check every 0.2 s until it returns something truthy (returned), or fail after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for child processes.

    The pure-python protobuf switch some clients need must not leak into a server (it would make
    ultraplane many times slower), and the source tree goes first on PYTHONPATH so an un-installed
    checkout runs too.
    """
    env = dict(os.environ)
    env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
    env.pop("ETCDCTL_API", None)
    src = str(REPO_ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if extra:
        env.update(extra)
    return env


@dataclass
class TlsFiles:
    """Client-side TLS material for a server started with --cert-file/--trusted-ca-file."""

    ca: str
    cert: str | None = None
    key: str | None = None


@dataclass
class Server:
    """One store process. ``kind`` is "etcd" or "ultraplane" (what actually runs)."""

    kind: str
    label: str  # which side of the comparison: "etcd" or "ultraplane"
    flags: list[str] = field(default_factory=list)
    tls: TlsFiles | None = None
    data_dir: str = ""
    client_port: int = 0
    peer_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: str = ""
    _work_dir: str = ""

    # ---- lifecycle -------------------------------------------------------------------------
    def _ensure_work_dir(self) -> None:
        """Created on first start (not at construction), so a never-started Server leaves nothing."""
        if not self._work_dir:
            self._work_dir = tempfile.mkdtemp(prefix=f"diff-{self.label}-")
            self.data_dir = os.path.join(self._work_dir, "data")
            self.log_path = os.path.join(self._work_dir, "server.log")

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        """host:port as etcdctl's --endpoints takes it."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def work_dir(self) -> str:
        self._ensure_work_dir()
        return self._work_dir

    def command(self) -> list[str]:
        common = [
            "--data-dir", self.data_dir,
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
        ]
        if self.kind == "etcd":
            return [
                ETCD_BIN, *common,
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", f"default={self.peer_url}",
                "--log-level", "warn",
                *self.flags,
            ]
        extra = shlex.split(os.environ.get("ULTRAPLANE_EXTRA_FLAGS", ""))
        return [*ultraplane_command(), "store", *common, *self.flags, *extra]

    def spawn(self, *, new_ports: bool) -> None:
        """Start the process without waiting for readiness."""
        self._ensure_work_dir()
        if new_ports or not self.client_port:
            self.client_port = free_port()
            self.peer_port = free_port()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed by it/at exit
        try:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=child_env(), start_new_session=True,
            )
        finally:
            log.close()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"{self.label} ({self.kind}) exited with {self.proc.returncode} during startup:\n"
                    f"{' '.join(self.command())}\n{self.log_tail()}"
                )
            if self._answers():
                return
            time.sleep(0.05)
        raise ServerStartError(f"{self.label} ({self.kind}) not ready after {START_TIMEOUT_S}s\n{self.log_tail()}")

    def _answers(self) -> bool:
        """True once a linearizable read gets any answer from the server (even an auth error)."""
        try:
            with socket.create_connection(("127.0.0.1", self.client_port), timeout=0.5):
                pass
        except OSError:
            return False
        proc = self.etcdctl("get", "--consistency=l", "/__ready_probe__", check=False, timeout=10,
                            extra_global=["--dial-timeout=1s", "--command-timeout=2s"])
        if proc.returncode == 0:
            return True
        err = error_line(proc.stderr)
        # a server-side refusal proves the server is up and serving (e.g. auth enabled, no user)
        return err.startswith("Error: etcdserver:") and "timed out" not in err and "leader" not in err

    def start(self) -> None:
        for attempt in range(3):
            self.spawn(new_ports=True)
            try:
                self.wait_ready()
                return
            except ServerStartError:
                log = self.log_tail()
                self.stop()
                # a port taken between picking and binding: try fresh ports, anything else is fatal
                if "address already in use" not in log.lower() or attempt == 2:
                    raise

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it doesn't exit in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        self.proc = None

    def kill9(self) -> None:
        """Crash the process (no shutdown path runs); restart() brings it back on the same data."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)
        self.proc = None

    def restart(self) -> None:
        """Stop (if running) and start again on the same data dir and ports."""
        self.stop()
        self.spawn(new_ports=False)
        self.wait_ready()

    def cleanup(self) -> None:
        self.stop()
        if self._work_dir:
            shutil.rmtree(self._work_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path:
            return ""
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ---- clients ---------------------------------------------------------------------------
    def global_flags(self, tls_files: bool = True) -> list[str]:
        flags = [f"--endpoints={self.client_url}"]
        if self.tls and tls_files:
            flags.append(f"--cacert={self.tls.ca}")
            if self.tls.cert:
                flags += [f"--cert={self.tls.cert}", f"--key={self.tls.key}"]
        return flags

    def etcdctl(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        check: bool = False,
        input: str | bytes | None = None,
        timeout: float = COMMAND_TIMEOUT_S,
        extra_global: Sequence[str] = (),
        tls_files: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run etcdctl (API v3) against this server; text in, text out. ``tls_files=False`` leaves
        out the CA/client certificate flags (to test what a client without them gets)."""
        cmd = [ETCDCTL_BIN, *self.global_flags(tls_files), *extra_global, *args]
        data = input.decode() if isinstance(input, bytes) else input
        proc = subprocess.run(
            cmd, input=data, capture_output=True, text=True, timeout=timeout,
            env=child_env({"ETCDCTL_API": "3", **(env or {})}),
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.label}: etcdctl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def etcdctl_popen(self, *args: str) -> subprocess.Popen[str]:
        """etcdctl in the background (watch); the caller stops it."""
        cmd = [ETCDCTL_BIN, *self.global_flags(), *args]
        return subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=child_env({"ETCDCTL_API": "3"}), start_new_session=True,
        )


def make_server(label: str, flags: Sequence[str] = (), tls: TlsFiles | None = None) -> Server:
    """A not-yet-started server for one side; ULTRAPLANE_DIFF_TARGET=etcd makes both sides etcd."""
    kind = "etcd" if label == "etcd" or DIFF_TARGET == "etcd" else "ultraplane"
    return Server(kind=kind, label=label, flags=list(flags), tls=tls)


@dataclass
class ServerPair:
    """Real etcd and the system under test, started alike."""

    etcd: Server
    ultra: Server

    def __iter__(self) -> Iterator[Server]:
        return iter((self.etcd, self.ultra))

    def start(self) -> None:
        # spawn both first so their startups overlap, then wait for each
        for server in self:
            server.spawn(new_ports=True)
        for server in self:
            try:
                server.wait_ready()
            except ServerStartError:
                if "address already in use" not in server.log_tail().lower():
                    raise
                server.stop()
                server.start()

    def cleanup(self) -> None:
        for server in self:
            server.cleanup()

    def restart(self) -> None:
        for server in self:
            server.stop()
        for server in self:
            server.spawn(new_ports=False)
        for server in self:
            server.wait_ready()

    def each(self, steps: Callable[[Server], Any]) -> tuple[Any, Any]:
        """Run the same steps on etcd, then on ultraplane; return both results."""
        return steps(self.etcd), steps(self.ultra)

    def compare(self, steps: Callable[[Server], Any]) -> Any:
        """Run steps on both sides and assert the (already normalized) results are equal."""
        expected, actual = self.each(steps)
        assert actual == expected, f"ultraplane differs from etcd\n etcd: {expected!r}\n ultra: {actual!r}"
        return expected


def start_pair(flags: Sequence[str] = (), tls: TlsFiles | None = None) -> ServerPair:
    pair = ServerPair(make_server("etcd", flags, tls), make_server("ultraplane", flags, tls))
    try:
        pair.start()
    except BaseException:
        pair.cleanup()
        raise
    return pair


# ---- normalization -------------------------------------------------------------------------

# Identity of the cluster / raft bookkeeping: legitimately different between any two clusters.
VOLATILE_KEYS = frozenset({"cluster_id", "member_id", "raft_term"})
IGNORED = "<ignored>"
_LOG_LINE = re.compile(r'^\{"level":')


def error_line(stderr: str) -> str:
    """The "Error: ..." line etcdctl prints, without its retry-log noise; "" if none."""
    for line in stderr.splitlines():
        if line.startswith("Error:"):
            return line.strip()
    return ""


def strip_client_logs(stderr: str) -> str:
    """stderr minus the JSON log lines the Go client emits while retrying."""
    return "\n".join(line for line in stderr.splitlines() if not _LOG_LINE.match(line)).strip()


def decode_b64_fields(obj: Any) -> Any:
    """key/value fields of etcdctl json are base64; decode them so failures read well."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in ("key", "value", "range_end") and isinstance(v, str):
                raw = base64.b64decode(v)
                try:
                    out[k] = raw.decode()
                except UnicodeDecodeError:
                    out[k] = "b64:" + v
            else:
                out[k] = decode_b64_fields(v)
        return out
    if isinstance(obj, list):
        return [decode_b64_fields(v) for v in obj]
    return obj


class Normalizer:
    """Per-server normalization state: lease ids get stable names in order of first appearance."""

    LEASE_JSON_KEYS = frozenset({"lease", "ID", "id"})
    _LEASE_TEXT = re.compile(r"\blease ([0-9a-f]+)\b")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.lease_names: dict[int, str] = {}

    def lease(self, lease_id: int) -> str:
        if lease_id == 0:
            return "0"
        if lease_id not in self.lease_names:
            self.lease_names[lease_id] = f"<lease{len(self.lease_names) + 1}>"
        return self.lease_names[lease_id]

    def json(self, obj: Any, *, lease_keys: frozenset[str] = LEASE_JSON_KEYS,
             ignore: frozenset[str] = frozenset()) -> Any:
        """Drop volatile ids, rename lease ids, blank ``ignore`` keys (kept present: shape matters)."""
        if isinstance(obj, dict):
            out: dict[str, Any] = {}
            for k, v in obj.items():
                if k in VOLATILE_KEYS:
                    continue
                if k in ignore:
                    out[k] = IGNORED
                elif k in lease_keys and isinstance(v, int):
                    out[k] = self.lease(v)
                else:
                    out[k] = self.json(v, lease_keys=lease_keys, ignore=ignore)
            return out
        if isinstance(obj, list):
            return [self.json(v, lease_keys=lease_keys, ignore=ignore) for v in obj]
        return obj

    def text(self, text: str) -> str:
        """Rename hex lease ids and this server's address in etcdctl's simple output."""
        for match in self._LEASE_TEXT.finditer(text):
            self.lease(int(match.group(1), 16))
        for lease_id, name in self.lease_names.items():
            text = re.sub(rf"\b{lease_id:016x}\b", name, text)  # etcdctl's usual form
            text = re.sub(rf"\b{lease_id:x}\b", name, text)
            text = re.sub(rf"\b{lease_id}\b", name, text)
        return self.endpoints(text)

    def endpoints(self, text: str) -> str:
        text = text.replace(self.server.client_url, "<client-url>")
        text = text.replace(self.server.endpoint, "<endpoint>")
        return text.replace(self.server.peer_url, "<peer-url>")


@dataclass
class Outcome:
    """What an etcdctl invocation produced, reduced to what must match across stores."""

    rc: int
    out: Any  # normalized stdout: parsed json, or text
    err: str  # the "Error: ..." line (or the whole de-noised stderr if there is no such line)

    def as_tuple(self) -> tuple[int, Any, str]:
        return (self.rc, self.out, self.err)


class Ctl:
    """etcdctl bound to a server plus a normalizer: ``ctl("get", "k", "-w", "json")``."""

    def __init__(self, server: Server, global_args: Sequence[str] = ()) -> None:
        self.server = server
        self.norm = Normalizer(server)
        self.global_args = list(global_args)

    def with_args(self, *global_args: str) -> Ctl:
        """Same server and lease naming, extra global flags (e.g. --user)."""
        other = Ctl(self.server, [*self.global_args, *global_args])
        other.norm = self.norm
        return other

    def raw(self, *args: str, input: str | None = None, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return self.server.etcdctl(*self.global_args, *args, input=input, env=env)

    def __call__(self, *args: str, input: str | None = None, ignore: Sequence[str] = (),
                 env: dict[str, str] | None = None, lease_keys: frozenset[str] | None = None
                 ) -> tuple[int, Any, str]:
        proc = self.raw(*args, input=input, env=env)
        if "USAGE:" in proc.stdout or "USAGE:" in proc.stderr:
            # etcdctl rejected the command line itself: a bug in the test script, not a difference
            raise AssertionError(f"etcdctl usage error for {args!r}:\n{proc.stderr[:500]}")
        return self.outcome(proc, json_out=_wants_json(args), ignore=frozenset(ignore),
                            lease_keys=lease_keys).as_tuple()

    def outcome(self, proc: subprocess.CompletedProcess[str], *, json_out: bool,
                ignore: frozenset[str] = frozenset(), lease_keys: frozenset[str] | None = None) -> Outcome:
        """Normalize a finished etcdctl run. ``lease_keys``: json keys holding lease ids (default
        lease/ID/id; pass an empty set where "ID" means something else, e.g. a member id)."""
        out: Any = proc.stdout
        if json_out and proc.stdout.strip():
            out = self.json_output(proc.stdout, ignore, lease_keys)
        else:
            out = self.norm.text(proc.stdout)
        err = error_line(proc.stderr) or strip_client_logs(proc.stderr)
        return Outcome(proc.returncode, out, self.norm.text(err))

    def json_output(self, stdout: str, ignore: frozenset[str], lease_keys: frozenset[str] | None = None) -> Any:
        """One json document, or several (one per line, e.g. watch) as a list."""
        stdout = stdout.strip()
        try:
            docs = [json.loads(stdout)]
            single = True
        except json.JSONDecodeError:
            try:
                docs = [json.loads(line) for line in stdout.splitlines() if line.strip()]
            except json.JSONDecodeError:
                return self.norm.text(stdout)  # usage text etc.: compare verbatim
            single = False
        keys = Normalizer.LEASE_JSON_KEYS if lease_keys is None else lease_keys
        docs = [decode_b64_fields(self.norm.json(d, ignore=ignore, lease_keys=keys)) for d in docs]
        docs = [_replace_strings(d, self.norm.endpoints) for d in docs]
        return docs[0] if single else docs


def _wants_json(args: Sequence[str]) -> bool:
    for i, arg in enumerate(args):
        if arg in ("-w", "--write-out") and i + 1 < len(args) and args[i + 1] == "json":
            return True
        if arg in ("-w=json", "--write-out=json"):
            return True
    return False


def _replace_strings(obj: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _replace_strings(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace_strings(v, fn) for v in obj]
    return obj


def run_both(pair: ServerPair, script: Callable[[Ctl], Any]) -> tuple[Any, Any]:
    """Run a scripted sequence (given a fresh Ctl per side) on etcd and on ultraplane."""
    return script(Ctl(pair.etcd)), script(Ctl(pair.ultra))


def assert_same(pair: ServerPair, script: Callable[[Ctl], Any]) -> Any:
    """Run the script on both sides; every recorded result must be equal. Returns etcd's."""
    expected, actual = run_both(pair, script)
    if actual != expected:
        raise AssertionError(_explain(expected, actual, pair))
    return expected


def _explain(expected: Any, actual: Any, pair: ServerPair) -> str:
    lines = [f"ultraplane ({pair.ultra.kind}) differs from etcd"]
    if isinstance(expected, list) and isinstance(actual, list):
        differing = [i for i, (e, a) in enumerate(zip(expected, actual, strict=False)) if e != a]
        if differing:
            lines.append(f"{len(differing)} differing step(s); the first {min(len(differing), 5)}:")
        for i in differing[:5]:  # later ones are often knock-on effects of the first
            lines.append(f"step {i}:\n  etcd:  {expected[i]!r}\n  ultra: {actual[i]!r}")
        if len(expected) != len(actual):
            lines.append(f"step counts: etcd {len(expected)}, ultra {len(actual)}")
    else:
        lines.append(f"  etcd:  {expected!r}\n  ultra: {actual!r}")
    tail = pair.ultra.log_tail(15)
    if tail:
        lines.append("ultraplane log tail:\n" + tail)
    return "\n".join(lines)


class Recorder:
    """Collects step results in order, so a failure report names the first differing step."""

    def __init__(self, ctl: Ctl) -> None:
        self.ctl = ctl
        self.steps: list[Any] = []

    def __call__(self, *args: str, **kwargs: Any) -> tuple[int, Any, str]:
        result = self.ctl(*args, **kwargs)
        # the label goes through the normalizer too: it may name a lease id or this server's address
        self.steps.append((self.ctl.norm.text(" ".join(args)), result))
        return result

    def note(self, label: str, value: Any) -> Any:
        self.steps.append((label, value))
        return value


def assert_steps_same(pair: ServerPair, script: Callable[[Recorder], None],
                      ctl_factory: Callable[[Server], Ctl] = Ctl) -> list[Any]:
    """Like assert_same, but the script records steps through a Recorder."""

    def run(server: Server) -> list[Any]:
        rec = Recorder(ctl_factory(server))
        script(rec)
        return rec.steps

    expected, actual = run(pair.etcd), run(pair.ultra)
    if actual != expected:
        raise AssertionError(_explain(expected, actual, pair))
    return expected


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> bool:
    """Poll until predicate() is true; False if it never became true (caller asserts on it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
