"""serve_h2 driven by grpc-go 1.33 (Debian's sources), the client family etcd users run."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import transport_echo_pb2 as pb
from conftest import RunningServer

GOCODE = Path("/usr/share/gocode")


@pytest.fixture(scope="session")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("go") is None or not (GOCODE / "src/google.golang.org/grpc").is_dir():
        pytest.skip("Go toolchain or grpc-go sources not installed")
    work = tmp_path_factory.mktemp("goclient")
    package = work / "src" / "goclient"
    package.mkdir(parents=True)
    shutil.copy(Path(__file__).parent / "goclient" / "main.go", package / "main.go")
    binary = work / "goclient"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{work}:{GOCODE}",
        "GOCACHE": os.environ.get("GOCACHE", "/tmp/ultraplane-go-cache"),
        "GOFLAGS": "",
    }
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=package, env=env, check=True, timeout=600)
    return binary


def test_grpc_go_client(any_server: RunningServer, go_client: Path) -> None:
    run = subprocess.run(
        [str(go_client), "-target", any_server.target], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    unary = pb.EchoReply.FromString(base64.b64decode(result["unary"]))
    assert unary.text == "hello from go"
    assert unary.metadata["token"] == "go-token"
    assert result["concurrent_ok"] == 1000
    expected_bytes = sum(
        pb.EchoReply(index=i, text="s", payload=b"s" * (1 << 20)).ByteSize() for i in range(8)
    )
    assert (result["stream_count"], result["stream_bytes"]) == (8, expected_bytes)
    bidi = [pb.EchoReply.FromString(base64.b64decode(item)) for item in result["bidi"]]
    assert [reply.text for reply in bidi] == ["b0", "b1", "b2", "end"]
    assert result["err_code"] == 5
    assert result["err_message"] == "no such key: 100% ü"
    assert result["unknown_code"] == 12
    assert result["deadline_code"] == 4
    assert any_server.service.cancelled.wait(10)
