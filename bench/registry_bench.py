"""Push and pull throughput of `ultraplane registry` and Distribution 2.8 (Debian's docker-registry), side by
side in one run, with many concurrent clients.

The load comes from bench/registry_loadgen (Go, standard library only, built here with the system `go`), so
that a Python client does not become the bottleneck on a small machine. The side-by-side pair runs plain HTTP
without auth (Distribution's default), on the same disk, in alternating order each round; a third server,
ultraplane with its defaults (TLS and token auth, a bearer token fetched per round), shows what those cost.
Medians over the rounds.

    .venv/bin/python bench/registry_bench.py [--rounds 3] [--clients 32] [--blobs 48] [--blob-mib 4]
                                             [--manifests 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOADGEN_SOURCE = REPO / "bench" / "registry_loadgen" / "main.go"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


def build_loadgen(directory: Path) -> Path:
    binary = directory / "registry_loadgen"
    env = {**os.environ, "GO111MODULE": "off", "GOFLAGS": "", "GOCACHE": str(directory / "gocache")}
    subprocess.run(["go", "build", "-o", str(binary), str(LOADGEN_SOURCE)], check=True, env=env, cwd=directory)
    return binary


def start_ultraplane(root: Path, *, secure: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    plain = [] if secure else ["--insecure-http", "--no-auth"]
    proc = subprocess.Popen([sys.executable, "-m", "ultraplane", "registry", "--data-dir", str(root),
                             "--listen", f"127.0.0.1:{port}", *plain, "--log-level", "warn"],
                            cwd=REPO, stdout=subprocess.DEVNULL)
    wait_for_port(port, proc)
    return proc, port


def start_distribution(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    (root / "data").mkdir(parents=True)
    config = root / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
                      f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_port(port, proc)
    return proc, port


def fetch_token(root: Path, port: int, repository: str) -> str:
    """A bearer token from the secure registry's token endpoint, as a Docker client would get one."""
    import requests

    password = (root / "auth" / "admin.password").read_text().strip()
    response = requests.get(f"https://127.0.0.1:{port}/token", auth=("admin", password),
                            params={"service": "ultraplane-registry", "scope": f"repository:{repository}:pull,push"},
                            verify=str(root / "pki" / "ca.crt"), timeout=30)
    response.raise_for_status()
    return str(response.json()["token"])


def load(binary: Path, port: int, mode: str, *, clients: int, count: int, size: int, seed: int,
         secure_root: Path | None = None) -> dict:
    repository = f"bench/round{seed}"
    target = ["-url", f"http://127.0.0.1:{port}"]
    if secure_root is not None:
        target = ["-url", f"https://127.0.0.1:{port}", "-ca", str(secure_root / "pki" / "ca.crt"),
                  "-token", fetch_token(secure_root, port, repository)]
    out = subprocess.run([str(binary), *target, "-mode", mode, "-c", str(clients),
                          "-n", str(count), "-size", str(size), "-seed", str(seed), "-repo", repository],
                         check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(out.stdout)
    if result["errors"]:
        raise RuntimeError(f"{mode} against port {port}: {result['errors']} errors, first: {result.get('first_error')}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--blobs", type=int, default=48, help="blobs pushed and pulled per round")
    parser.add_argument("--blob-mib", type=float, default=4.0)
    parser.add_argument("--manifests", type=int, default=2000, help="manifests pushed and pulled per round")
    args = parser.parse_args()
    size = int(args.blob_mib * 1024 * 1024)
    work = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        binary = build_loadgen(work)
        servers["distribution"] = start_distribution(work / "distribution")
        servers["ultraplane"] = start_ultraplane(work / "ultraplane")
        servers["ultraplane-tls"] = start_ultraplane(work / "ultraplane-tls", secure=True)
        for round_index in range(1, args.rounds + 1):
            order = ["ultraplane", "distribution"] if round_index % 2 else ["distribution", "ultraplane"]
            for name in [*order, "ultraplane-tls"]:
                port = servers[name][1]
                secure_root = work / name if name == "ultraplane-tls" else None
                for mode, count in (("push-blobs", args.blobs), ("pull-blobs", args.blobs),
                                    ("push-manifests", args.manifests), ("pull-manifests", args.manifests)):
                    result = load(binary, port, mode, clients=args.clients, count=count, size=size, seed=round_index,
                                  secure_root=secure_root)
                    if mode.endswith("blobs"):
                        value = result["bytes"] / result["seconds"] / 1e6
                    else:
                        value = result["ops"] / result["seconds"]
                    samples.setdefault((name, mode), []).append(value)
                    print(f"round {round_index} {name:12s} {mode:15s} {value:9.1f}", flush=True)
        print(f"\nmedians over {args.rounds} rounds, {args.clients} concurrent clients, {args.blobs} blobs of "
              f"{args.blob_mib:g} MiB, {args.manifests} manifests per round")
        print(f"{'operation':30s} {'ultraplane':>11s} {'distribution':>13s} {'ratio':>6s} {'ultraplane TLS+auth':>20s}")
        for mode, unit in (("push-blobs", "MB/s"), ("pull-blobs", "MB/s"), ("push-manifests", "manifests/s"),
                           ("pull-manifests", "manifests/s")):
            ours = statistics.median(samples[("ultraplane", mode)])
            theirs = statistics.median(samples[("distribution", mode)])
            secure = statistics.median(samples[("ultraplane-tls", mode)])
            print(f"{mode + ' (' + unit + ')':30s} {ours:11.1f} {theirs:13.1f} {ours / theirs:6.2f} {secure:20.1f}")
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
