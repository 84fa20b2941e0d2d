"""exec, attach and port-forward on the simulated kubelet, over WebSocket channel protocols.

The API server forwards the client's upgrade request here unchanged (as kube-apiserver proxies to
the kubelet) and pipes bytes both ways, so the WebSocket side lives only in this module. Every
binary message starts with its channel byte: exec/attach use 0 stdin, 1 stdout, 2 stderr, 3 the
error channel (a metav1.Status at the end, v4 and later) and 4 resize; v5 adds the close signal
(channel 255, then the channel closed: stdin's end of file). Port-forward (v4.channel.k8s.io) gives
each requested port a data channel 2i and an error channel 2i+1, both opened with the port number
as two little-endian bytes.

Nothing runs: a command goes through the container's `sh -c` interpreter (shell.py); `cat` with no
file echoes stdin and `sh` without `-c` runs stdin line by line. A port the container listens on
(see `listening`) answers port-forwarded bytes: images of HTTP servers (nginx, httpd) answer an HTTP
request with a tiny 200 page, anything else is echoed; other ports are refused with the container
runtime's text. kubectl's SPDY/3.1 path is served by spdy.py with the same channel interface.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gzip
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from ultraplane.apiserver.server import Request, Response, Tunnel
from ultraplane.nodes import spdy
from ultraplane.nodes.shell import SHELLS, exists_at, interpret
from ultraplane.nodes.sim import PodState
from ultraplane.nodes.startup import LOG_INTERVAL, log_lines

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
V5, V4, V1 = "v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"
STREAM_PROTOCOLS = (V5, V4, V1)  # exec and attach, as the kubelet's remotecommand server offers them
PORTFORWARD_PROTOCOLS = (V4,)
STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
CLOSE_SIGNAL = 255  # v5: [255, channel] closes that channel
HTTP_IMAGES = ("nginx", "httpd", "caddy", "traefik")
_ERROR_LINE = re.compile(r"^(cat|ls|rm|sleep|head): ")  # the interpreter's diagnostics go to stderr


class Refusal(Exception):
    """The kubelet answers the upgrade request with an error instead of 101."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _text(status: int, message: str) -> Response:
    return Response(status, message.encode(), content_type="text/plain; charset=utf-8")


# ---------------------------------------------------------------------------------------------- WebSocket
class WebSocket:
    """RFC 6455 server side: unmasked frames out, masked frames in, binary channel messages."""

    def __init__(self, tunnel: Tunnel, protocol: str) -> None:
        self.tunnel = tunnel
        self.protocol = protocol
        self.closed = False

    async def receive(self) -> tuple[int, bytes] | None:
        """The next channel message (channel, payload); None once the peer closed."""
        message = bytearray()
        reader = self.tunnel.reader
        while True:
            try:
                head = await reader.readexactly(2)
                length = head[1] & 0x7F
                if length == 126:
                    length = int.from_bytes(await reader.readexactly(2), "big")
                elif length == 127:
                    length = int.from_bytes(await reader.readexactly(8), "big")
                mask = await reader.readexactly(4) if head[1] & 0x80 else b""
                payload = await reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError):
                self.closed = True
                return None
            if mask and length:
                key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
                payload = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
            opcode = head[0] & 0x0F
            if opcode == 0x8:  # close: answer it and stop
                self.close()
                return None
            if opcode == 0x9:
                self._frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            message += payload
            if head[0] & 0x80:
                if not message:
                    continue
                return message[0], bytes(message[1:])

    def _frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
        self.tunnel.write(head + payload)

    def send(self, channel: int, data: bytes) -> None:
        if not self.closed:
            self._frame(0x2, bytes((channel,)) + data)

    def close(self, code: int = 1000) -> None:
        if not self.closed:
            self.closed = True
            self._frame(0x8, code.to_bytes(2, "big"))


def negotiate(request: Request, supported: tuple[str, ...]) -> str:
    """The first protocol the client offers that is supported (wsstream's handshake), else Refusal."""
    offered = [p.strip() for p in request.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    for protocol in offered:
        if protocol in supported:
            return protocol
    raise Refusal(403, f"requested protocol(s) are not supported: [{' '.join(offered)}]; "
                       f"supports [{' '.join(supported)}]")


def is_websocket(request: Request) -> bool:
    return request.headers.get("upgrade", "").lower() == "websocket" and \
        "upgrade" in request.headers.get("connection", "").lower()


class Channels(Protocol):
    """A WebSocket or SPDY connection seen as numbered channels."""
    protocol: str
    closed: bool

    async def receive(self) -> tuple[int, bytes] | None: ...

    def send(self, channel: int, data: bytes) -> None: ...

    def close(self, code: int = 1000) -> None: ...


def upgrade(request: Request, supported: tuple[str, ...],
            session: Callable[[Channels], Awaitable[None]], spdy_streams: set[int] | None = None) -> Response:
    """101 for a WebSocket (or, given the channels it needs, SPDY/3.1) request whose protocol we speak."""
    if not is_websocket(request):
        if request.headers.get("upgrade", "").lower().startswith("spdy/"):
            clients = [c.strip() for c in request.headers.get("x-stream-protocol-version", "").split("\n")]
            server = spdy.EXEC_PROTOCOLS if spdy_streams is not None else ()
            chosen = next((c for c in clients if c in server), None)
            if chosen is None or spdy_streams is None:
                raise Refusal(403, f"unable to upgrade: unable to negotiate protocol: client supports "
                                   f"[{' '.join(c for c in clients if c)}], server supports [{' '.join(server)}]")
            return _spdy_upgrade(chosen, spdy_streams, session)
        raise Refusal(400, "Upgrade request required")
    protocol = negotiate(request, supported)
    key = request.headers.get("sec-websocket-key", "").encode()
    accept = base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest()).decode()
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept),
               ("Sec-WebSocket-Protocol", protocol)]

    async def run(tunnel: Tunnel) -> None:
        ws = WebSocket(tunnel, protocol)
        try:
            await session(ws)
        finally:
            ws.close()
            await tunnel.drain()

    return Response(101, headers=headers, upgrade=run)


def _spdy_upgrade(protocol: str, streams: set[int], session: Callable[[Channels], Awaitable[None]]) -> Response:
    async def run(tunnel: Tunnel) -> None:
        channels = spdy.SpdyChannels(tunnel, protocol)
        try:
            if await channels.open(streams):
                await session(channels)
        finally:
            channels.close()
            await tunnel.drain()

    return Response(101, headers=[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"),
                                  ("X-Stream-Protocol-Version", protocol)], upgrade=run)


# ---------------------------------------------------------------------------------------------- exec / attach
@dataclass
class StreamOptions:
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool

    @classmethod
    def of(cls, query: dict[str, list[str]]) -> StreamOptions:
        def flag(name: str) -> bool:
            return (query.get(name) or [""])[-1] in ("1", "true")
        tty = flag("tty")
        opts = cls(flag("input"), flag("output"), flag("error") and not tty, tty)  # a tty merges stderr
        if not (opts.stdin or opts.stdout or opts.stderr):
            raise Refusal(400, "you must specify at least 1 of stdin, stdout, stderr")
        return opts

    def spdy_streams(self) -> set[int]:
        """The streams a SPDY client opens for these options (the error stream always)."""
        wanted = {ERROR}
        for channel, on in ((STDIN, self.stdin), (STDOUT, self.stdout), (STDERR, self.stderr), (RESIZE, self.tty)):
            if on:
                wanted.add(channel)
        return wanted


def success() -> bytes:
    return orjson.dumps({"metadata": {}, "status": "Success"})


def exit_status(argv: list[str], code: int) -> bytes:
    """The error channel's Status for a non-zero exit, as the kubelet's ServeExec writes it."""
    return orjson.dumps({
        "metadata": {}, "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command [{' '.join(argv)}], "
                   f"exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}})


@dataclass
class Session:
    """One exec: where its output goes and what its stdin brought."""
    ws: Channels
    opts: StreamOptions
    stdin: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)  # None: end of file

    def out(self, line: str, to_stderr: bool = False) -> None:
        error = to_stderr or bool(_ERROR_LINE.match(line))
        channel = STDERR if error and self.opts.stderr else STDOUT
        if channel == STDOUT and not self.opts.stdout:
            return
        self.ws.send(channel, (line + ("\r\n" if self.opts.tty else "\n")).encode())

    async def pump(self) -> None:
        """Reads the client's messages: stdin, its end (v5 close signal or the socket's), resizes."""
        while True:
            message = await self.ws.receive()
            if message is None:
                await self.stdin.put(None)
                return
            channel, data = message
            if channel == STDIN:
                await self.stdin.put(data)
            elif channel == CLOSE_SIGNAL and data[:1] == bytes((STDIN,)):
                await self.stdin.put(None)


class ContainerStreams:
    """exec, attach and portforward into one simulator's pods."""

    def __init__(self, pods: Callable[[str, str], PodState | None]) -> None:
        self.pods = pods
        self.files: dict[tuple[str, str], dict[str, bool]] = {}  # (pod uid, container) -> exec-made changes

    def _running(self, namespace: str, pod: str, container: str) -> PodState:
        state = self.pods(namespace, pod)
        if state is None:
            raise Refusal(404, "pod does not exist")
        ctr = next((c for c in state.containers if c.name == container), None)
        if ctr is None or ctr.state != "running":
            raise Refusal(500, f'container not found ("{container}")')
        return state

    def exec(self, request: Request, query: dict[str, list[str]], namespace: str, pod: str,
             container: str) -> Response:
        argv = query.get("command") or []
        opts = StreamOptions.of(query)
        state = self._running(namespace, pod, container)
        if not argv:
            raise Refusal(400, "you must specify at least one command for the container")

        async def session(ws: Channels) -> None:
            s = Session(ws, opts)
            reader = asyncio.ensure_future(s.pump())
            try:
                code = await self._run(s, state, container, argv)
            finally:
                reader.cancel()
            if ws.protocol != V1:
                ws.send(ERROR, success() if code == 0 else exit_status(argv, code))

        return upgrade(request, STREAM_PROTOCOLS, session, opts.spdy_streams())

    def _exists(self, state: PodState, container: str) -> Callable[[str], bool]:
        plan = state.plan.get(container)
        ctr = next(c for c in state.containers if c.name == container)
        elapsed = (dt.datetime.now(dt.UTC) - (ctr.started_at or dt.datetime.now(dt.UTC))).total_seconds()
        image = exists_at(plan.files if plan else [], elapsed)
        mine = self.files.setdefault((state.uid, container), {})
        return lambda path: mine[path] if path in mine else image(path)

    async def _script(self, s: Session, state: PodState, container: str, script: str) -> tuple[int, bool]:
        """One script in the container: its status and whether it called `exit`."""
        script = _with_outputs(_unrolled(script), state)
        compress = _GZIP_TAIL.match(script)
        if compress:  # `... | gzip`: the left side's bytes, compressed (the interpreter's lines are text)
            left = compress.group(1)
            outcome = interpret(["sh", "-c", left], batch=True, exists=self._exists(state, container))
            newline = "" if _ECHO_N.match(left) else "\n"
            data = "".join(line + newline for line in outcome.output).encode()
            if s.opts.stdout:
                s.ws.send(STDOUT, gzip.compress(data, mtime=0))
            return outcome.status, outcome.exited
        outcome = interpret(["sh", "-c", script], batch=True, exists=self._exists(state, container))
        mine = self.files.setdefault((state.uid, container), {})
        for _at, path, present in outcome.files:
            mine[path] = present
        to_stderr = script.rstrip().endswith(">&2")  # `echo oops >&2`: the script's output goes to stderr
        for line in outcome.output:
            s.out(line, to_stderr)
        if outcome.seconds is None:  # `sleep infinity`, `tail -f`: until the client goes away
            await asyncio.Event().wait()
        elif outcome.seconds:
            await asyncio.sleep(outcome.seconds)
        return outcome.status, outcome.exited

    async def _run(self, s: Session, state: PodState, container: str, argv: list[str]) -> int:
        program = argv[0].rsplit("/", 1)[-1]
        inline = _script_text(argv).strip() if program in SHELLS else ""
        if program == "cat" and len(argv) == 1 or inline in ("cat", "exec cat", "cat -"):  # echo stdin to EOF
            while (data := await s.stdin.get()) is not None:
                if s.opts.stdout:
                    s.ws.send(STDOUT, data)
            return 0
        if program in SHELLS and not any(a.startswith("-") and "c" in a[1:] for a in argv[1:]):
            status, pending = 0, b""  # an interactive shell: stdin is its script, a line at a time
            while True:
                data = await s.stdin.get()
                lines = (pending + (data or b"\n")).split(b"\n")
                pending = lines.pop() if data is not None else b""
                for line in lines:
                    if line.strip():
                        status, exited = await self._script(s, state, container, line.decode(errors="replace"))
                        if exited:
                            return status
                if data is None:
                    return status
        if program in SHELLS:
            return (await self._script(s, state, container, _script_text(argv)))[0]
        return (await self._script(s, state, container, " ".join(_quote(a) for a in argv)))[0]

    def attach(self, request: Request, query: dict[str, list[str]], namespace: str, pod: str,
               container: str) -> Response:
        opts = StreamOptions.of(query)
        state = self._running(namespace, pod, container)

        async def session(ws: Channels) -> None:
            s = Session(ws, opts)
            reader = asyncio.ensure_future(s.pump())  # stdin is taken and dropped: nothing reads it
            try:
                await self._follow(s, state, container)
            finally:
                reader.cancel()
            if ws.protocol != V1:
                ws.send(ERROR, success())

        return upgrade(request, STREAM_PROTOCOLS, session, opts.spdy_streams())

    async def _follow(self, s: Session, state: PodState, container: str) -> None:
        """The container's output from now on, until it stops or the client leaves."""
        spec = next(c for c in state.pod["spec"]["containers"] if c["name"] == container)
        ctr = next(c for c in state.containers if c.name == container)
        plan, started = state.plan[container], ctr.started_at or dt.datetime.now(dt.UTC)
        sent = len(log_lines(state.pod, spec, started, dt.datetime.now(dt.UTC), plan))
        while not s.ws.closed and ctr.state == "running" and ctr.started_at == started:
            await asyncio.sleep(LOG_INTERVAL / 5)
            current = log_lines(state.pod, spec, started, dt.datetime.now(dt.UTC), plan)
            for _at, text in current[sent:]:
                s.out(text)
            sent = len(current)

    # ------------------------------------------------------------------------------------------ port-forward
    def portforward(self, request: Request, query: dict[str, list[str]], namespace: str, pod: str) -> Response:
        state = self.pods(namespace, pod)
        if state is None:
            raise Refusal(404, "pod does not exist")
        versions = request.headers.get("x-stream-protocol-version", "").split("\n")
        if request.headers.get("upgrade", "").lower() == "spdy/3.1" and spdy.PORTFORWARD_PROTOCOL in versions:
            async def over_spdy(tunnel: Tunnel) -> None:
                await spdy.serve_portforward(tunnel, lambda port: answerer(state, port))

            return Response(101, headers=[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"),
                                          ("X-Stream-Protocol-Version", spdy.PORTFORWARD_PROTOCOL)],
                            upgrade=over_spdy)
        if not is_websocket(request):
            return upgrade(request, PORTFORWARD_PROTOCOLS, self._unused)  # kube's refusal for the protocol
        texts = [p for value in query.get("port") or [] for p in value.split(",") if p]
        if not texts:
            raise Refusal(400, 'query parameter "port" is required')
        ports: list[int] = []
        for text in texts:
            if not text.isdigit() or int(text) > 65535:
                raise Refusal(400, f'unable to parse "{text}" as a port: strconv.ParseUint: parsing "{text}": '
                                   + ("value out of range" if text.isdigit() else "invalid syntax"))
            if int(text) < 1:
                raise Refusal(400, f'port "{text}" must be > 0')
            ports.append(int(text))

        async def session(ws: Channels) -> None:
            await self._forward(ws, state, ports)

        return upgrade(request, PORTFORWARD_PROTOCOLS, session)

    @staticmethod
    async def _unused(ws: Channels) -> None:
        return None

    async def _forward(self, ws: Channels, state: PodState, ports: list[int]) -> None:
        responders: dict[int, Responder] = {}
        for i, port in enumerate(ports):
            prefix = port.to_bytes(2, "little")
            ws.send(2 * i, prefix)
            ws.send(2 * i + 1, prefix)
            answer = answerer(state, port)
            if isinstance(answer, str):
                ws.send(2 * i + 1, answer.encode())
            else:
                responders[i] = answer
        while responders:
            message = await ws.receive()
            if message is None:
                return
            channel, data = message
            responder = responders.get(channel // 2)
            if responder is None or channel % 2:
                continue
            reply = responder.feed(data)
            if reply:
                ws.send(channel, reply)
            if responder.finished:
                del responders[channel // 2]


def listening(container: dict) -> set[int]:  # type: ignore[type-arg]
    """The ports a simulated container listens on: its declared TCP containerPorts, the ports its probes
    check, port numbers on its command line (`server.py 1234`), and an HTTP server image's port 80."""
    ports = {int(p["containerPort"]) for p in container.get("ports") or []
             if (p.get("protocol") or "TCP") == "TCP" and str(p.get("containerPort", "")).isdigit()}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind) or {}
        for action in ("tcpSocket", "httpGet"):
            port = (probe.get(action) or {}).get("port")
            if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
                ports.add(int(port))
    words = [str(w) for w in (container.get("command") or []) + (container.get("args") or [])]
    ports.update(int(w) for w in words if w.isdigit() and 0 < int(w) < 65536)
    if any(name in container.get("image", "") for name in HTTP_IMAGES):
        ports.add(80)
    return ports


def answerer(state: PodState, port: int) -> Responder | str:
    """The far end of a connection to `port`: a responder if a running container listens, else the refusal."""
    if any(c.state == "running" for c in state.containers):
        for c in state.pod["spec"].get("containers") or []:
            if port in listening(c):
                return Responder(any(name in c.get("image", "") for name in HTTP_IMAGES))
    return refused(state, port)


def refused(state: PodState, port: int) -> str:
    """What the container runtime says when nothing listens on the forwarded port."""
    sandbox = hashlib.sha256(state.uid.encode()).hexdigest()
    netns = f"/var/run/netns/cni-{sandbox[:8]}-{sandbox[8:12]}-{sandbox[12:16]}-{sandbox[16:20]}-{sandbox[20:32]}"
    return (f"error forwarding port {port} to pod {sandbox}, uid : failed to execute portforward in network "
            f"namespace \"{netns}\": failed to connect to localhost:{port} inside namespace \"{sandbox}\", "
            f"IPv4: dial tcp4 127.0.0.1:{port}: connect: connection refused IPv6 dial tcp6 [::1]:{port}: "
            f"connect: connection refused ")


class Responder:
    """One forwarded connection's far end: echo, or one HTTP/1.1 exchange that then closes."""

    def __init__(self, http: bool) -> None:
        self.http = http
        self.buffer = bytearray()
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        if self.http and not self.buffer and not data.startswith(HTTP_METHODS):
            self.http = False  # not a request: the port talks some other protocol, answered by echo
        if not self.http:
            return data
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return b""
        self.finished = True
        method = bytes(self.buffer.split(b" ", 1)[0]).decode("latin-1")
        page = b"" if method == "HEAD" else WELCOME
        return (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(WELCOME)) + page


HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")
WELCOME = (b"<!DOCTYPE html>\n<html>\n<head><title>Welcome to nginx!</title></head>\n"
           b"<body><h1>Welcome to nginx!</h1></body>\n</html>\n")


_FOR = re.compile(r"\bfor\s+(\w+)\s+in\s+([^;]*);\s*do\s+(.*?);?\s*done\b")
_SEQ = re.compile(r"^\$\(seq\s+(\d+)(?:\s+(\d+))?\)$")
_GZIP_TAIL = re.compile(r"^(.*?)\|\s*gzip(?:\s+-[cf]+)*\s*$", re.S)
_ECHO_N = re.compile(r"^\s*echo\s+-n\b")
_SIMULATED = re.compile(r"(^|[;&|]\s*)(date|uptime|hostname|whoami|pwd)(?=\s*($|[;&|]))")


def _unrolled(script: str) -> str:
    """`for i in a b; do ...; done` and `for i in $(seq 1 3)` unrolled (the interpreter has no loops)."""
    def unroll(match: re.Match[str]) -> str:
        var, items, body = match.group(1), match.group(2).strip(), match.group(3)
        seq = _SEQ.match(items)
        if seq:
            first, last = (1, int(seq.group(1))) if seq.group(2) is None else (int(seq.group(1)), int(seq.group(2)))
            values = [str(n) for n in range(first, min(last, first + 1000) + 1)]
        else:
            values = items.split()
        return "; ".join(body.replace("${" + var + "}", v).replace("$" + var, v) for v in values) or "true"
    return _FOR.sub(unroll, script)


def _with_outputs(script: str, state: PodState) -> str:
    """Commands whose output the simulation can give (date, uptime, ...) become an echo of it."""
    def output(match: re.Match[str]) -> str:
        now = dt.datetime.now(dt.UTC)
        text = {"date": now.strftime("%a %b %d %H:%M:%S UTC %Y"), "hostname": state.name, "whoami": "root",
                "pwd": "/", "uptime": f" {now:%H:%M:%S} up 0 min,  0 users,  load average: 0.00, 0.00, 0.00"}
        return match.group(1) + "echo " + _quote(text[match.group(2)])
    return _SIMULATED.sub(output, script)


def _script_text(argv: list[str]) -> str:
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith("-") and "c" in arg[1:]:
            return argv[i + 1] if i + 1 < len(argv) else ""
    return ""


def _quote(word: str) -> str:
    return word if word and all(ch.isalnum() or ch in "-_./=:,@%+" for ch in word) else \
        "'" + word.replace("'", "'\"'\"'") + "'"
