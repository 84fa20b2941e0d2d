"""`ultraplane nats-cluster`: three nats-server nodes on fixed loopback ports agree on a JetStream
meta leader, the printed --journal value names them, and SIGTERM stops every node."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from harness import child_env, free_port, ultraplane_command


def _meta_leader(http_port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/jsz", timeout=2) as resp:
            doc = json.loads(resp.read())
    except OSError:
        return None
    return (doc.get("meta_cluster") or {}).get("leader")


def test_nats_cluster_starts_three_nodes_and_stops_on_sigterm(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            [*ultraplane_command(), "nats-cluster", "--data-dir", str(tmp_path / "nats"),
             "--ports", ",".join(map(str, ports))],
            stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=child_env(),
        )
    try:
        deadline = time.monotonic() + 90
        while "journal: --journal" not in out_path.read_text():
            assert proc.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.1)
        text = out_path.read_text()
        journal = ",".join(f"nats://127.0.0.1:{port}" for port in ports)
        assert f"journal: --journal {journal}\n" in text
        nodes = re.findall(r"(ultraplane-az\d): (nats://127\.0\.0\.1:\d+) \(pid (\d+), monitoring "
                           r"http://127\.0\.0\.1:(\d+)", text)
        assert [(name, url) for name, url, _pid, _http in nodes] == [
            (f"ultraplane-az{i + 1}", f"nats://127.0.0.1:{port}") for i, port in enumerate(ports)
        ]
        leader = re.search(r"meta leader (ultraplane-az\d)", text)
        assert leader is not None
        # every node reports the same JetStream meta leader
        assert {_meta_leader(int(http)) for *_rest, http in nodes} == {leader.group(1)}
        pids = [int(pid) for _name, _url, pid, _http in nodes]
        for i in range(3):
            assert (tmp_path / "nats" / f"node{i + 1}" / "jetstream").is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, err_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"nats-server pid {pid} still running after SIGTERM")
    assert "NATS cluster stopped" in err_path.read_text()


def test_nats_cluster_rejects_mismatched_size(tmp_path: Path) -> None:
    proc = subprocess.run([*ultraplane_command(), "nats-cluster", "--data-dir", str(tmp_path),
                           "--ports", "4222,4223", "--size", "3"],
                          capture_output=True, text=True, env=child_env(), timeout=60)
    assert proc.returncode == 2
    assert "--size 3 does not match the 2 ports of --ports" in proc.stderr
