"""What managed signing and the audit log cost a push: manifest pushes per second to a repository signed on
push (cosign + Notation signatures, three audit records) against one that is not (one audit record), on the
same `ultraplane registry` (plain HTTP, no auth), alternating each round; then how fast `audit-verify` walks
the resulting log. Medians over the rounds.

    .venv/bin/python bench/registry_signing_bench.py [--rounds 3] [--manifests 300]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def start(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "ultraplane", "registry", "--data-dir", str(data_dir),
                             "--listen", "127.0.0.1:0", "--insecure-http", "--no-auth", "--log-level", "warn",
                             "--sign-on-push", "signed/*", "--lifecycle-interval", "0", "--gc-interval", "0"],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("registry exited")
        match = re.match(r"registry listening on (\S+)", line)
        if match:
            return proc, match.group(1)


def push_manifests(session: requests.Session, base: str, name: str, count: int, round_index: int) -> float:
    config, layer = b"{}", f"layer of {name}".encode()
    for blob in (config, layer):
        session.post(f"{base}/v2/{name}/blobs/uploads/", params={"digest": sha256(blob)}, data=blob).raise_for_status()
    started = time.perf_counter()
    for index in range(count):
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": sha256(config), "size": len(config)},
                               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                           "digest": sha256(layer), "size": len(layer)}],
                               "annotations": {"n": f"{round_index}-{index}"}}).encode()
        session.put(f"{base}/v2/{name}/manifests/v{round_index}-{index}", data=manifest,
                    headers={"Content-Type": OCI_MANIFEST}).raise_for_status()
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--manifests", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start(Path(tmp))
        try:
            session = requests.Session()
            plain, signed = [], []
            for round_index in range(args.rounds):
                order = [("plain/app", plain), ("signed/app", signed)]
                for name, results in order if round_index % 2 == 0 else reversed(order):
                    results.append(push_manifests(session, base, name, args.manifests, round_index))
        finally:
            proc.terminate()
            proc.wait(10)
        started = time.perf_counter()
        verified = subprocess.run([sys.executable, "-m", "ultraplane", "registry", "audit-verify", "--data-dir", tmp],
                                  capture_output=True, text=True, cwd=REPO)
        verify_seconds = time.perf_counter() - started
    plain_median, signed_median = statistics.median(plain), statistics.median(signed)
    print(f"manifest pushes/s, unsigned repository: {plain_median:.0f} (rounds {[round(x) for x in plain]})")
    print(f"manifest pushes/s, signed on push:      {signed_median:.0f} (rounds {[round(x) for x in signed]})")
    print(f"ratio signed/unsigned: {signed_median / plain_median:.2f}")
    print(f"audit-verify: {verified.stdout.strip()} in {verify_seconds:.2f} s (including interpreter start)")


if __name__ == "__main__":
    main()
