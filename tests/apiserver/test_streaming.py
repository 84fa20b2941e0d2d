"""pods/exec, attach and portforward through the API server to the simulated kubelets, driven by
the official Python client (WebSocket v5/v4 channel protocols) and by kubectl.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.stream import portforward, stream

from tests.apiserver.conftest import Cluster, inprocess_cluster
from tests.harness import free_port, wait_for

WAIT_S = 60.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with inprocess_cluster("ultraplane-streaming-", "--nodes", "2") as c:
        yield c


@pytest.fixture(scope="module")
def core(cluster: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))


def _pod(name: str, image: str, ports: list[int] | None = None, command: list[str] | None = None,
         extra: list[str] | None = None) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [{"name": "app", "image": image,
                                         "ports": [{"containerPort": p} for p in ports or []]}]
    if command:
        containers[0]["command"] = command
    for other in extra or []:
        containers.append({"name": other, "image": "busybox", "command": ["sleep", "3600"]})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": containers}}


@pytest.fixture(scope="module")
def pods(core: client.CoreV1Api) -> dict[str, str]:
    wanted = {"web": _pod("web", "nginx:1.27", ports=[80, 9000]),
              "box": _pod("box", "busybox", command=["sh", "-c", "touch /tmp/ready; sleep 3600"], extra=["side"]),
              "srv": _pod("srv", "python", command=["python", "-u", "/opt/port-server.py", "1234", "1235"]),
              "plain": _pod("plain", "nginx"),
              "done": {**_pod("done", "busybox", command=["sh", "-c", "exit 0"]),
                       "spec": {"restartPolicy": "Never",
                                "containers": [{"name": "app", "image": "busybox", "command": ["true"]}]}}}
    for body in wanted.values():
        core.create_namespaced_pod("default", body)

    def phases() -> dict[str, str] | None:
        got = {n: core.read_namespaced_pod(n, "default").status.phase for n in wanted}
        ok = all(got[n] == "Running" for n in ("web", "box", "srv", "plain")) and got["done"] == "Succeeded"
        return got if ok else None

    return wait_for(phases, "pods running", WAIT_S)


def _exec(core: client.CoreV1Api, name: str, command: list[str], **kw: Any) -> Any:
    return stream(core.connect_get_namespaced_pod_exec, name, "default", command=command, stderr=True,
                  stdin=kw.pop("stdin", False), stdout=True, tty=False, _preload_content=False, **kw)


def test_python_exec_output_and_exit_code(core: client.CoreV1Api, pods: dict[str, str]) -> None:
    ws = _exec(core, "box", ["sh", "-c", "echo hello; echo world; exit 3"], container="app")
    ws.run_forever(timeout=20)
    assert ws.read_stdout() == "hello\nworld\n"
    assert ws.returncode == 3
    status = json.loads(ws.read_channel(3) or "{}") or None
    assert status is None or status.get("reason") == "NonZeroExitCode"  # read_channel drained by returncode
    ok = _exec(core, "box", ["sh", "-c", "test -e /tmp/ready && echo present"], container="app")
    ok.run_forever(timeout=20)
    assert ok.read_stdout() == "present\n" and ok.returncode == 0
    # the v5 error channel carries kube's Status for a failure
    failing = _exec(core, "box", ["sh", "-c", "touch /no/such/file; rm /no/such/file; cat /no/such/file"],
                    container="app")
    failing.run_forever(timeout=20)
    assert "can't open '/no/such/file'" in failing.read_stderr()
    assert failing.returncode == 1
    # preloaded (the client's default): output only
    text = stream(core.connect_get_namespaced_pod_exec, "web", "default", command=["echo", "one", "two"],
                  stderr=True, stdin=False, stdout=True, tty=False)
    assert text == "one two\n"
    # the shapes of the client's own e2e suite: a loop of `date`, `uptime`, exit codes of plain programs
    dates = stream(core.connect_get_namespaced_pod_exec, "box", "default", container="app",
                   command=["/bin/sh", "-c", "for i in $(seq 1 3); do date; done"], stderr=False, stdin=False,
                   stdout=True, tty=False)
    assert len(dates.splitlines()) == 3
    for command, code in ((["false"], 1), (["/bin/sh", "-c", "sleep 1; exit 3"], 3), (["true"], 0)):
        run = _exec(core, "box", command, container="app")
        run.run_forever(timeout=20)
        assert run.returncode == code, command


def test_python_exec_stdin_interactive(core: client.CoreV1Api, pods: dict[str, str]) -> None:
    ws = _exec(core, "box", ["cat"], container="app", stdin=True)
    ws.write_stdin("ping\n")
    got = ""
    deadline = time.monotonic() + 20
    while "ping" not in got and time.monotonic() < deadline:
        ws.update(timeout=1)
        got += ws.read_stdout() if ws.peek_stdout() else ""
    assert got == "ping\n"
    ws.close()
    shell = _exec(core, "box", ["sh"], container="app", stdin=True)
    shell.write_stdin("echo from-stdin\necho to-stderr >&2\nexit 4\n")
    shell.run_forever(timeout=20)
    assert shell.read_stdout() == "from-stdin\n" and shell.read_stderr() == "to-stderr\n"
    assert shell.returncode == 4


def _refusal(core: client.CoreV1Api, name: str, **kw: Any) -> str:
    """The handshake's refusal as the client reports it (status and body in the reason)."""
    with pytest.raises(ApiException) as refused:
        _exec(core, name, ["true"], **kw)
    return str(refused.value.reason)


def test_exec_errors_as_kube(core: client.CoreV1Api, pods: dict[str, str]) -> None:
    missing = _refusal(core, "box", container="nope")
    assert "Handshake status 400" in missing and "container nope is not valid for pod box" in missing
    which = _refusal(core, "box")
    assert "a container name must be specified for pod box, choose one of: [app side]" in which
    assert "Handshake status 404" in _refusal(core, "ghost")
    stopped = _refusal(core, "done")  # the kubelet: no running container of that name
    assert "Handshake status 500" in stopped and 'container not found (\\"app\\")' in stopped or \
        'container not found ("app")' in stopped


def test_python_attach_streams_output(core: client.CoreV1Api, pods: dict[str, str]) -> None:
    ws = stream(core.connect_get_namespaced_pod_attach, "web", "default", container="app", stdout=True,
                stderr=True, stdin=True, tty=False, _preload_content=False)
    ws.write_stdin("ignored\n")
    got = ""
    deadline = time.monotonic() + 20
    while not got and time.monotonic() < deadline:
        ws.update(timeout=1)
        got += ws.read_stdout() if ws.peek_stdout() else ""
    ws.close()
    assert got.strip(), "attach gave no output within 20 s"


def test_python_portforward_http_echo_and_refused(core: client.CoreV1Api, pods: dict[str, str]) -> None:
    pf = portforward(core.connect_get_namespaced_pod_portforward, "web", "default", ports="80,9000,8080")
    web = pf.socket(80)
    web.settimeout(20)
    web.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
    reply = b""
    while not reply.endswith(b"</html>\n"):  # the websocket, not this connection, closes at the end
        reply += web.recv(4096)
    assert reply.startswith(b"HTTP/1.1 200 OK") and b"Welcome to nginx!" in reply
    echo = pf.socket(9000)
    echo.settimeout(20)
    echo.sendall(b"round trip")
    assert echo.recv(100) == b"round trip"
    refused = pf.socket(8080)
    refused.settimeout(20)
    assert refused.recv(10) == b""
    assert "error forwarding port 8080 to pod" in (pf.error(8080) or "")
    assert "connect: connection refused" in (pf.error(8080) or "")
    echo.close()
    pf.close()


def test_python_portforward_to_undeclared_listeners(core: client.CoreV1Api, pods: dict[str, str]) -> None:
    """Ports on the command line (`server.py 1234 1235`) and an nginx image's 80 listen without a
    containerPort, as the client's e2e suite expects; other ports are refused."""
    pf = portforward(core.connect_get_namespaced_pod_portforward, "srv", "default", ports="1234,1235,1236")
    for port in (1234, 1235):
        sock = pf.socket(port)
        sock.settimeout(20)
        sock.sendall(b"Test port %d forwarding" % port)
        assert sock.recv(100) == b"Test port %d forwarding" % port
        assert pf.error(port) is None
    refused = pf.socket(1236)
    refused.settimeout(20)
    assert refused.recv(10) == b"" and pf.error(1236)
    pf.close()
    web = portforward(core.connect_get_namespaced_pod_portforward, "plain", "default", ports="80")
    sock = web.socket(80)
    sock.settimeout(20)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: plain\r\nConnection: close\r\n\r\n")
    reply = b""
    while not reply.endswith(b"</html>\n"):
        reply += sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 200 OK") and b"<h1>Welcome to nginx!</h1>" in reply
    web.close()


def test_kubectl_exec_exit_code_and_stdin(cluster: Cluster, pods: dict[str, str]) -> None:
    proc = cluster.kubectl("exec", "box", "-c", "app", "--", "sh", "-c", "echo hi; exit 3")
    assert proc.stdout == "hi\n" and proc.returncode == 3, proc.stderr
    piped = cluster.kubectl("exec", "-i", "box", "-c", "app", "--", "cat", input="line one\nline two\n")
    assert piped.returncode == 0 and piped.stdout == "line one\nline two\n", piped.stderr
    script = cluster.kubectl("exec", "-i", "web", "--", "sh", input="echo a\necho b\n")
    assert script.returncode == 0 and script.stdout == "a\nb\n", script.stderr
    wrong = cluster.kubectl("exec", "box", "-c", "nope", "--", "true")
    assert wrong.returncode != 0 and "container nope is not valid for pod box" in wrong.stderr
    completed = cluster.kubectl("exec", "done", "--", "true")
    assert completed.returncode != 0 and "cannot exec into a container in a completed pod" in completed.stderr


def test_exec_needs_create_on_pods_exec(cluster: Cluster, core: client.CoreV1Api, pods: dict[str, str]) -> None:
    cluster.ok("create", "role", "pod-reader", "--verb=get,list", "--resource=pods")
    cluster.ok("create", "rolebinding", "someone-reads", "--role=pod-reader", "--user=someone")
    denied = cluster.kubectl("exec", "box", "-c", "app", "--as", "someone", "--", "true")
    assert denied.returncode != 0
    assert 'User "someone" cannot create resource "pods/exec" in API group "" in the namespace "default"' \
        in denied.stderr


def test_kubectl_exec_over_spdy(cluster: Cluster, pods: dict[str, str]) -> None:
    """kubectl with WebSockets switched off speaks SPDY/3.1 (v4.channel.k8s.io streams)."""
    env = {**os.environ, "KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"}

    def kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", "--kubeconfig", str(cluster.kubeconfig), *args], input=stdin,
                              capture_output=True, text=True, timeout=30, env=env)

    proc = kubectl("exec", "box", "-c", "app", "--", "sh", "-c", "echo over-spdy; exit 5")
    assert proc.stdout == "over-spdy\n" and proc.returncode == 5, proc.stderr
    piped = kubectl("exec", "-i", "box", "-c", "app", "--", "cat", stdin="through spdy\n")
    assert piped.returncode == 0 and piped.stdout == "through spdy\n", piped.stderr


def test_kubectl_port_forward_http(cluster: Cluster, pods: dict[str, str]) -> None:
    """kubectl's WebSocket tunnelling is refused, so it port-forwards over SPDY/3.1."""
    local, closed = free_port(), free_port()
    proc = subprocess.Popen(["kubectl", "--kubeconfig", str(cluster.kubeconfig), "port-forward", "pod/web",
                             f"{local}:80", f"{closed}:8080"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        def answer() -> bytes | None:
            if proc.poll() is not None:
                raise AssertionError(f"kubectl port-forward exited: {proc.stderr.read() if proc.stderr else ''}")
            try:
                with socket.create_connection(("127.0.0.1", local), timeout=5) as conn:
                    conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    data = b""
                    while chunk := conn.recv(4096):
                        data += chunk
                    return data or None
            except OSError:
                return None

        reply = wait_for(answer, "an HTTP answer through kubectl port-forward", 30)
        assert reply.startswith(b"HTTP/1.1 200 OK") and b"Welcome to nginx!" in reply
        with socket.create_connection(("127.0.0.1", closed), timeout=10) as conn:  # nothing listens on 8080
            conn.sendall(b"hello")
            assert conn.recv(100) == b""
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=10)
    assert "error forwarding port 8080 to pod" in err and "connect: connection refused" in err


def test_kubectl_attach_follows_output(cluster: Cluster, pods: dict[str, str]) -> None:
    proc = subprocess.Popen(["kubectl", "--kubeconfig", str(cluster.kubeconfig), "attach", "web", "-c", "app"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)  # the container prints a line every few seconds
        assert ready, "no output from kubectl attach within 30 s"
        line = proc.stdout.readline()
        assert line.strip(), "kubectl attach ended without output"
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=10)
    assert "error" not in err.lower(), err
